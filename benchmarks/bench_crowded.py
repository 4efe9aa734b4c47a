"""Crowded cutouts: cost against the number of sources, ours (default path) vs scarlet2 0.5.1.

Run: ``python benchmarks/bench_crowded.py [n1,n2,...] [size] [peer_max_n]``
(default ``10,30,100,300``, 300 px, peer up to 100 sources).

Each scene is a ``size`` x ``size`` 5-band GalSim cutout
(:func:`scarlet_xr.survey.simulate_field`: stars and bulge+disk galaxies, 40 %
of them placed 4-12 px from another one, a variance plane) with ``n`` sources
at their true positions (a catalog with ra, dec only, as a user gives it).

Ours, per ``n``, in a fresh process each:

- ``cli``: ``scarlet-xr fit FIELD.fits --sources CAT --out OUT.nc`` end to
  end (reading, model choice, fit, measurements, writing); wall time and
  peak RSS of the process;
- ``fit``: :func:`scarlet_xr.scene.fit_sources` run twice in one process:
  the first run's time includes compilation, the second reuses it, so
  ``compile ~ first - second`` and ``time per step = second / steps``.

Peer, per ``n <= peer_max_n``: scarlet2's documented recipe at the same
positions (``bench_hsc.peer_source``), ``scene.fit(max_iter=300)``; the
first iteration's time (compilation) and the time per further iteration
(from a second fit of 50 iterations in the same process), wall time and peak
RSS of its process.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_OURS_FIT = r"""
import json, sys, time
import numpy as np
from scarlet_xr import frame_from_observations, open_observation
from scarlet_xr.cli._sources import read_catalog
from scarlet_xr.scene import fit_sources
obs = {"f": open_observation(sys.argv[1])}
frame = frame_from_observations(obs)
centers, kinds = read_catalog(sys.argv[2], frame)
t0 = time.perf_counter(); a = fit_sources(frame, obs, centers); t1 = time.perf_counter()
b = fit_sources(frame, obs, centers); t2 = time.perf_counter()
json.dump({"first_s": t1 - t0, "second_s": t2 - t1, "steps": int(b.history.num_steps),
           "same_steps": int(a.history.num_steps) == int(b.history.num_steps)}, open(sys.argv[3], "w"))
"""

_PEER_FIT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
import numpy as np, jax.numpy as jnp
import scarlet2 as sc2
from numpyro.distributions import constraints
from bench_hsc import peer_source
from scarlet_xr import open_observation
from scarlet_xr.xr import observation_wcs
from astropy.table import Table
ds = open_observation(sys.argv[1])
cat = Table.read(sys.argv[2])
x, y = observation_wcs(ds).world_to_pixel_values(np.asarray(cat["ra"]), np.asarray(cat["dec"]))
obs = sc2.Observation(jnp.asarray(ds["data"].values, jnp.float32),
                      jnp.asarray(ds["weight"].values, jnp.float32),
                      psf=sc2.ArrayPSF(jnp.asarray(ds["psf"].values, jnp.float32)),
                      channels=[str(b) for b in ds["band"].values])
frame = sc2.Frame.from_observations(obs)
with sc2.Scene(frame) as scene:
    for yy, xx in zip(y, x):
        peer_source(sc2, obs, jnp.array([yy, xx]))
with sc2.Parameters(scene):
    for i in range(len(scene.sources)):
        sc2.Parameter(scene.sources[i].spectrum, name=f"spectrum:{i}", constraint=constraints.positive,
                      stepsize=sc2.relative_step)
        sc2.Parameter(scene.sources[i].morphology, name=f"morph:{i}", constraint=constraints.unit_interval,
                      stepsize=1e-2)
t0 = time.perf_counter(); scene.fit(obs, max_iter=1, progress_bar=False); t1 = time.perf_counter()
fitted = scene.fit(obs, max_iter=300, e_rel=1e-4, progress_bar=False); t2 = time.perf_counter()
scene.fit(obs, max_iter=50, e_rel=0.0, progress_bar=False); t3 = time.perf_counter()
json.dump({"first_iter_s": t1 - t0, "fit300_s": t2 - t1, "per_step_s": (t3 - t2) / 50},
          open(sys.argv[3], "w"))
"""


def _env():
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TQDM_DISABLE="1", SCARLET_XR_CACHE="off")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _run(cmd, timeout):
    """Run ``cmd``; return (wall s, peak RSS GB of the child, ok, tail of stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        ok, tail = proc.returncode == 0, (proc.stderr or "")[-800:]
    except subprocess.TimeoutExpired:
        ok, tail = False, f"timed out after {timeout} s"
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: meaningful when it grew
    return wall, (peak / 1e6 if peak > before else None), ok, tail


def main(ns="10,30,100,300", size: int = 300, peer_max_n: int = 100, timeout: int = 1800) -> dict:
    """Run the benchmark; return a dict of measurements (also printed as JSON)."""
    from scarlet_xr.survey import simulate_field

    ns = [int(n) for n in str(ns).split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_crowded_"))
    res = {"size": size, "peer": "scarlet2 0.5.1 (documented recipe, same positions)"}
    # largest scenes first: ru_maxrss of children only reports a new peak when it grows
    for n in sorted(ns, reverse=True):
        field, cat = tmp / f"f{n}.fits", tmp / f"c{n}.ecsv"
        truth = simulate_field(field, shape=(size, size), n_sources=n, seed=100 + n)
        truth[["ra", "dec"]].write(cat, overwrite=True)
        out = tmp / f"o{n}.nc"
        wall, rss, ok, tail = _run([sys.executable, "-m", "scarlet_xr.cli", "fit", str(field), "--sources",
                                    str(cat), "--out", str(out)], timeout)
        res[f"ours_cli_s_n{n}"] = round(wall, 1) if ok else None
        res[f"ours_cli_rss_gb_n{n}"] = round(rss, 2) if rss else None
        if not ok:
            res[f"ours_error_n{n}"] = tail
        j = tmp / f"fit{n}.json"
        wall, _, ok, tail = _run([sys.executable, "-c", _OURS_FIT, str(field), str(cat), str(j)], timeout)
        if ok:
            r = json.loads(j.read_text())
            res[f"ours_fit_s_n{n}"] = round(r["first_s"], 1)
            res[f"ours_compile_s_n{n}"] = round(r["first_s"] - r["second_s"], 1)
            res[f"ours_step_ms_n{n}"] = round(1e3 * r["second_s"] / max(r["steps"], 1), 1)
            res[f"ours_steps_n{n}"] = r["steps"]
        if n <= peer_max_n:
            j = tmp / f"peer{n}.json"
            wall, rss, ok, tail = _run([sys.executable, "-c", _PEER_FIT, str(field), str(cat), str(j),
                                        str(HERE)], timeout)
            if ok:
                r = json.loads(j.read_text())
                res[f"peer_fit_s_n{n}"] = round(r["first_iter_s"] + r["fit300_s"], 1)
                res[f"peer_compile_s_n{n}"] = round(r["first_iter_s"], 1)
                res[f"peer_step_ms_n{n}"] = round(1e3 * r["per_step_s"], 1)
                res[f"peer_rss_gb_n{n}"] = round(rss, 2) if rss else None
            else:
                res[f"peer_error_n{n}"] = tail
    small, big = min(ns), max(ns)
    if res.get(f"ours_compile_s_n{small}") and res.get(f"ours_compile_s_n{big}"):
        growth = res[f"ours_compile_s_n{big}"] / max(res[f"ours_compile_s_n{small}"], 0.1)
        res["ours_compile_growth"] = round(growth, 2)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(*sys.argv[1:2], *[int(a) for a in sys.argv[2:]])
