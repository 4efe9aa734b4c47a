"""Single-scene benchmark: the HSC COSMOS cutout, scarlet_xr vs scarlet2 0.5.1.

Each tool runs in its own fresh Python process (fresh JAX, no persistent
compilation cache) and reports:

- ``import_s``: ``import scarlet_xr`` / ``import scarlet2`` (includes JAX),
- ``build_s``: loading the data, building observation, frame and all sources
  (initialisation included, with any compilation it triggers),
- ``fit_s``: first fit, tracing and compilation included,
- ``refit_s``: a second fit of the same initial scene in the same process,
- ``total_s``: ``build_s + fit_s`` (the number the targets refer to),
- ``peak_rss_mb``: peak resident memory of the process (``ru_maxrss``), and
  the same read after import, build and first fit
  (``peak_rss_after_{import,build,fit}_mb``) to show where memory goes,
- ``chi2``: reduced chi^2 ``sum w (d - m)^2 / N`` over pixels with ``w > 0``,
  the model rendered into the observation, computed by the same numpy code
  for both tools; ``chi2_init`` the same for the initial scene.

Recipes
-------
ours: exactly what ``scarlet-xr demo`` does: ``frame_from_observations``,
``initialize_sources`` with a point source for source 0 and ``"free"``
for the others, ``scene.fit(obs)`` with default settings (1000 steps max).

scarlet2: its documented quickstart on the same file: ``Observation(images,
weights=1/variance, psf=ArrayPSF(psfs), channels=filters)``,
``Frame.from_observations``, source 0 a ``PointSource``, the others
``Source(center, *init.from_gaussian_moments(obs, center))`` (falling back,
as scarlet2's own quickstart test does, to ``init.pixel_spectrum`` and
``init.compact_morphology()`` where the moments are unusable); spectra
``positive`` with ``relative_step(factor=0.05)``, morphologies
``unit_interval`` with ``relative_step(factor=1e-3)``, the point source's
centre free (step 0.1 px; without it the star is misfit and chi^2 stays at
31, with it we reproduce the 1.316 of PEERS.md);
``scene.fit(obs, max_iter=1000, e_rel=1e-4)``.

Run: ``python benchmarks/bench_hsc.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
MAX_STEPS = 1000


def _chi2(data, model, weight) -> float:
    import numpy as np

    d = np.asarray(data, float)
    m = np.asarray(model, float)
    w = np.asarray(weight, float)
    good = w > 0
    return float(np.sum(w[good] * (d[good] - m[good]) ** 2) / good.sum())


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _load_npz():
    import numpy as np

    path = ROOT / "scarlet_xr" / "data" / "hsc_cosmos_35.npz"
    with np.load(path, allow_pickle=False) as f:
        return f["images"], f["variance"], f["psfs"], [str(b) for b in f["filters"]], f["catalog"]


def run_ours() -> dict:
    """Fit the HSC scene with scarlet_xr (the ``scarlet-xr demo`` recipe)."""
    t0 = time.perf_counter()
    import scarlet_xr as sx
    from scarlet_xr.datasets import hsc_cosmos_35

    t_import = time.perf_counter() - t0
    rss_import = _peak_mb()

    t0 = time.perf_counter()
    obs, centers = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    kinds = ["point"] + ["free"] * (len(centers) - 1)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=kinds)
    t_build = time.perf_counter() - t0
    rss_build = _peak_mb()

    t0 = time.perf_counter()
    fitted = scene.fit(obs, max_steps=MAX_STEPS)
    t_fit = time.perf_counter() - t0
    rss_fit = _peak_mb()

    t0 = time.perf_counter()
    refit = scene.fit(obs, max_steps=MAX_STEPS)
    t_refit = time.perf_counter() - t0

    def chi2_of(s):
        # the results tree's reduced chi^2: sum w (d - m)^2 / N over pixels with w > 0
        return float(s.to_datatree(obs)["observations/hsc"].attrs["chi2_reduced"])

    return {
        "tool": f"scarlet_xr {sx.__version__}",
        "import_s": t_import,
        "build_s": t_build,
        "fit_s": t_fit,
        "refit_s": t_refit,
        "total_s": t_build + t_fit,
        "steps": int(fitted.history.num_steps),
        "refit_steps": int(refit.history.num_steps),
        "status": str(fitted.history.status),
        "chi2": chi2_of(fitted),
        "chi2_refit": chi2_of(refit),
        "chi2_init": chi2_of(scene),
        "peak_rss_mb": _peak_mb(),
        "peak_rss_after_import_mb": rss_import,
        "peak_rss_after_build_mb": rss_build,
        "peak_rss_after_fit_mb": rss_fit,
    }


def peer_source(sc2, obs, center):
    """A scarlet2 ``Source`` initialised as its docs and tests do.

    ``init.from_gaussian_moments`` raises ``ValueError`` for some sources
    (second moments give an ellipticity above 1, hence NaN size: sources 2
    and 4 of the HSC cutout); scarlet2's quickstart test then falls back to
    ``init.pixel_spectrum`` with ``init.compact_morphology()``.
    """
    try:
        spectrum, morph = sc2.init.from_gaussian_moments(obs, center, min_corr=0.99)
    except ValueError:
        spectrum = sc2.init.pixel_spectrum(obs, center)
        morph = sc2.init.compact_morphology()
    return sc2.Source(center, spectrum, morph)


def peer_hsc_scene(sc2, images, weights, psfs, filters, centers):
    """The peer's quickstart scene of the HSC cutout: a point source, then ``peer_source``s."""
    import jax.numpy as jnp

    obs = sc2.Observation(jnp.asarray(images), weights=jnp.asarray(weights),
                          psf=sc2.ArrayPSF(jnp.asarray(psfs)), channels=filters)
    frame = sc2.Frame.from_observations(obs)
    with sc2.Scene(frame) as scene:
        for i, c in enumerate(centers):
            center = jnp.asarray(c)
            if i == 0:
                sc2.PointSource(center, sc2.init.pixel_spectrum(obs, center, correct_psf=True))
            else:
                peer_source(sc2, obs, center)
    return obs, scene


def run_peer() -> dict:
    """Fit the HSC scene with scarlet2's documented quickstart recipe."""
    t0 = time.perf_counter()
    import scarlet2 as sc2

    t_import = time.perf_counter() - t0
    rss_import = _peak_mb()
    import numpy as np
    from numpyro.distributions import constraints

    def spec_step(x, *args):
        return sc2.relative_step(x, factor=0.05)

    def morph_step(x, *args):
        return sc2.relative_step(x, factor=1e-3)

    t0 = time.perf_counter()
    images, variance, psfs, filters, cat = _load_npz()
    weights = 1.0 / variance
    obs, scene = peer_hsc_scene(sc2, images, weights, psfs, filters,
                                np.stack([cat["y"], cat["x"]], axis=1).astype(float))
    with sc2.Parameters(scene):
        for i, src in enumerate(scene.sources):
            sc2.Parameter(src.spectrum, name=f"spectrum:{i}", constraint=constraints.positive,
                          stepsize=spec_step)
            if i > 0:
                sc2.Parameter(src.morphology, name=f"morph:{i}", constraint=constraints.unit_interval,
                              stepsize=morph_step)
            else:
                sc2.Parameter(src.center, name="center:0", stepsize=0.1)
    t_build = time.perf_counter() - t0
    rss_build = _peak_mb()

    t0 = time.perf_counter()
    fitted = scene.fit(obs, max_iter=MAX_STEPS, e_rel=1e-4, progress_bar=False)
    t_fit = time.perf_counter() - t0
    rss_fit = _peak_mb()

    t0 = time.perf_counter()
    refit = scene.fit(obs, max_iter=MAX_STEPS, e_rel=1e-4, progress_bar=False)
    t_refit = time.perf_counter() - t0

    def chi2_of(s):
        return _chi2(images, obs.render(s()), weights)

    return {
        "tool": f"scarlet2 {sc2.__version__}",
        "import_s": t_import,
        "build_s": t_build,
        "fit_s": t_fit,
        "refit_s": t_refit,
        "total_s": t_build + t_fit,
        "chi2": chi2_of(fitted),
        "chi2_refit": chi2_of(refit),
        "chi2_init": chi2_of(scene),
        "peak_rss_mb": _peak_mb(),
        "peak_rss_after_import_mb": rss_import,
        "peak_rss_after_build_mb": rss_build,
        "peak_rss_after_fit_mb": rss_fit,
    }


def child_env() -> dict:
    """Environment of a benchmark process: CPU JAX, no persistent compile cache, no tqdm."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TQDM_DISABLE="1", SCARLET_XR_CACHE="off")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_child(script: Path, tool: str, timeout: float = 1800, extra: tuple = ()) -> dict:
    """Run ``script --child tool`` in a fresh process; return its JSON result or an error dict."""
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), "--child", tool, "--json", str(out), *extra]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"error": f"exit code {proc.returncode}", "log": "\n".join(tail)}
        res = json.loads(out.read_text())
        res["process_wall_s"] = wall
        return res


def combine(ours: dict, peer: dict, keys) -> dict:
    """Flatten two per-tool dicts into ``ours_<k>``, ``peer_<k>`` and ``ratio_<k>`` entries."""
    res = {}
    for k in keys:
        a, b = ours.get(k), peer.get(k)
        res[f"ours_{k}"] = a
        res[f"peer_{k}"] = b
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            res[f"ratio_{k}"] = a / b
    for who, d in (("ours", ours), ("peer", peer)):
        for k, v in d.items():
            if k not in keys:
                res[f"{who}_{k}"] = v
    return res


KEYS = ["import_s", "build_s", "fit_s", "refit_s", "total_s", "peak_rss_mb", "peak_rss_after_import_mb",
        "peak_rss_after_build_mb", "peak_rss_after_fit_mb", "chi2", "chi2_init", "process_wall_s"]


def main(timeout: float = 1800) -> dict:
    """Run both tools, each in its own process; return the flat results dict."""
    ours = run_child(HERE, "ours", timeout)
    peer = run_child(HERE, "peer", timeout)
    res = {"benchmark": "hsc_cosmos_35: 7 sources, 5 x 58 x 48 px", "peer": "scarlet2 0.5.1"}
    res.update(combine(ours, peer, KEYS))
    if "ratio_total_s" in res:
        res["target_total_s"] = "ours/peer <= 0.3"
        res["meets_total_s"] = res["ratio_total_s"] <= 0.3
    if "ratio_peak_rss_mb" in res:
        res["target_peak_rss_mb"] = "ours/peer <= 0.5"
        res["meets_peak_rss_mb"] = res["ratio_peak_rss_mb"] <= 0.5
    return res


def cli(main, run_ours, run_peer, default_timeout: float = 1800) -> None:
    """Command line shared by the single-scene benchmarks (``--json``, ``--child``, ``--timeout``)."""
    p = argparse.ArgumentParser(description=(main.__module__ or "benchmark"))
    p.add_argument("--json", help="write the result dict here")
    p.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=default_timeout)
    args = p.parse_args()
    if args.child:
        res = run_ours() if args.child == "ours" else run_peer()
    else:
        res = main(args.timeout)
        print(json.dumps(res, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    cli(main, run_ours, run_peer, 1800)
