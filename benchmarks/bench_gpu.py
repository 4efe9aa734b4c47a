"""Survey throughput on the accelerator JAX finds (``make bench-gpu``; issue 18).

Run: ``python benchmarks/bench_gpu.py [n_blends] [n_peer]`` (default 200 and 20) in an
environment whose ``jax`` sees the accelerator (e.g. a CUDA build of ``jaxlib``:
``jax.default_backend() == "gpu"``). Nothing here forces the CPU: without an
accelerator the same figures come from the CPU and ``backend`` says so.

One process holds the device (``client="synchronous"``): the worker processes of a
``LocalCluster`` would each reserve most of a GPU's memory. On the blends of
``bench_survey.py`` (``simulate_blends``, seed 2026, 1-6 sources, 5 bands, stamps 31-75 px):

- ``ours_*``: the default path (``kind="auto"``, what ``scarlet-xr survey`` runs), blend by
  blend, with a fresh compile cache (compiling included);
- ``ours_compiled_*``: the same blends again in the same process, programs compiled (a
  survey's steady state);
- ``free_*``: the batched free-form runner (``kind="free"``): on an accelerator the fits of
  a task's blends run as one ``vmap``-ed program (``batch_size`` = blends per task), on
  the CPU one at a time;
- ``peer_*``: scarlet2 0.5.1 one blend at a time on the same device (its documented recipe,
  as in ``bench_survey.py``), on a random subset, when it is installed.

``ratio_*`` are ours over the peer's blends per second; ``device_peak_mb`` the device's
peak memory where the backend reports it (GPUs). Accuracy: median ``|flux/truth - 1|``
over all source-bands of the blends that finished.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _device() -> dict:
    """Backend, device kind and count of the default JAX backend."""
    import jax

    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "n_devices": len(devices), "jax_version": jax.__version__}


def _peak_device_mb():
    """Peak memory in use on the first device (MB), or None where the backend does not report it."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**20, 1)


def _run(cat, out, kind, cache, truth, max_steps):
    """One survey run in this process; returns (wall s, blends done, failed, median error)."""
    from scarlet_xr.survey import deblend_catalog

    t0 = time.perf_counter()
    ds = deblend_catalog(cat, out=out, kind=kind, client="synchronous", max_steps=max_steps,
                         progress=False, compile_cache=cache)
    wall = time.perf_counter() - t0
    ok = ds["valid"].values
    status = ds["status"].values
    err = np.abs(ds["flux"].values[ok] / truth[ok] - 1)
    return wall, int((status == 1).sum()), int((status == 2).sum()), float(np.nanmedian(err))


def _peer(tmp, table, truth, n_blends, n_peer, max_steps) -> dict:
    """scarlet2 one blend at a time on a random subset (bench_survey's recipe)."""
    try:
        import scarlet2  # noqa: F401
    except ImportError as err:
        return {"peer": f"not measured: scarlet2 is not importable ({err})"}
    sys.path.insert(0, str(HERE))
    from bench_survey import peer_fits

    ids = np.sort(np.random.default_rng(0).choice(n_blends, size=min(n_peer, n_blends), replace=False))
    fitted, wall, failed = peer_fits(tmp, table, truth, ids, max_steps)
    errs = [e for _, e in fitted]
    errs = np.concatenate(errs) if errs else np.array([np.nan])
    return {"peer": "scarlet2 0.5.1, one blend at a time in this process, same device",
            "peer_blends_fitted": len(ids), "peer_failed": failed, "peer_wall_s": round(wall, 1),
            "peer_blends_per_s": round(len(ids) / wall, 3) if wall else None,
            "peer_median_rel_flux_error": float(np.nanmedian(errs)),
            "peer_nonfinite_fluxes": int(np.sum(~np.isfinite(errs)))}


def main(n_blends: int = 200, n_peer: int = 20, max_steps: int = 300) -> dict:
    """Run the benchmark; return a dict of measurements (also printed as JSON).

    Parameters
    ----------
    n_blends : int
        Simulated blends deblended by each of our runs.
    n_peer : int
        Blends of them fitted by scarlet2 (0: no peer).
    max_steps : int
        Step cap of the free-form runner and the peer (the default path keeps its own).

    Returns
    -------
    dict
        Device, blends per second, flux errors and the ratios to the peer.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    from scarlet_xr.survey import simulate_blends

    res = _device()
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    t0 = time.perf_counter()
    cat, table = simulate_blends(tmp / "blends", n_blends, seed=2026, sizes=(31, 41, 51, 61, 75))
    res.update(n_blends=n_blends, n_sources=int(len(table)), simulate_s=round(time.perf_counter() - t0, 1))
    truth = np.asarray(table["true_flux"])
    for tag, kind, out, cache in (("ours", "auto", "auto.zarr", "cache_auto"),
                                  ("ours_compiled", "auto", "auto2.zarr", "cache_auto"),
                                  ("free", "free", "free.zarr", "cache_free")):
        wall, done, failed, err = _run(cat, tmp / out, kind, tmp / cache, truth,
                                       None if kind == "auto" else max_steps)
        res.update({f"{tag}_wall_s": round(wall, 1), f"{tag}_blends_per_s": round(n_blends / wall, 3),
                    f"{tag}_done": done, f"{tag}_failed": failed, f"{tag}_median_rel_flux_error": err})
    res["device_peak_mb"] = _peak_device_mb()
    if n_peer > 0:
        res.update(_peer(tmp, table, truth, n_blends, n_peer, max_steps))
    peer = res.get("peer_blends_per_s")
    if peer:
        for tag in ("ours", "ours_compiled", "free"):
            res[f"ratio_{tag}_blends_per_s"] = round(res[f"{tag}_blends_per_s"] / peer, 2)
    if res["backend"] == "cpu":
        res["note"] = ("no accelerator found: these are CPU figures in one process (make bench's "
                       "bench_survey.py measures the CPU path with 2 workers)")
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:]])
