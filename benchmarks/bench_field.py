"""A whole field end to end: ``scarlet-xr survey FIELD.fits`` on a 5-band GalSim field, vs truth and scarlet2.

Run: ``python benchmarks/bench_field.py [size] [n_sources] [n_peer]`` (default 2048 1000 20);
``SCARLET_XR_BENCH_KIND=free`` measures the batched free-form runner instead of the default path.

The field (:func:`scarlet_xr.survey.simulate_field`): ``size`` x ``size`` pixels,
5 bands, about ``n_sources`` stars (25 %) and bulge+disk galaxies, 40 % of them
placed 4-12 pixels from another source, noise rising 2x from left to right
(``VARIANCE`` plane), three bad columns and one saturated star (``MASK``).

Ours: the CLI in a fresh process, ``--workers 2`` with the default kind (``auto``: each
source's model chosen from its data, blends padded to their bucket so that they share compiled
fits; ``SCARLET_XR_BENCH_KIND=free``: the batched free-form runner; LocalCluster, one thread per
worker) pinned to 2 cores, a fresh JAX compilation cache (compile time
included). Peak memory: the sum of the RSS of the CLI process and its
workers, sampled every 0.5 s (an upper bound: shared library pages count once
per process; the proportional set size, PSS, splits them and is reported too);
the peak per quarter of the run shows whether memory grows.
Accuracy: detections matched one-to-one to the truth within 1.5 pixels;
median ``|flux/truth - 1|`` over matched source-bands (the saturated star
apart). Peer: scarlet2 0.5.1 one blend at a time (recipe of
``bench_survey.py``) on a random subset of the same cutouts, at the same
positions; throughput ratio = our blends/s over the whole run (detection,
cutting, compilation included) / the peer's blends/s (fits only).
Cutouts: the same subset fitted one blend at a time with ``fit_sources`` at the
true positions (the field run's kind): the ratio of the field run's median error
to theirs, on the same source-bands, is what detection and grouping cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _match(x, y, tx, ty, radius=1.5):
    """One-to-one (catalog, truth) index pairs within ``radius`` pixels, nearest first."""
    from scipy.spatial import cKDTree

    x, y = np.nan_to_num(x, nan=-1e9), np.nan_to_num(y, nan=-1e9)  # rows without a fit match nothing
    tree = cKDTree(np.c_[tx, ty])
    cand = []
    for i, js in enumerate(tree.query_ball_point(np.c_[x, y], radius)):
        for j in js:
            cand.append((np.hypot(x[i] - tx[j], y[i] - ty[j]), i, j))
    pairs, used_c, used_t = [], set(), set()
    for _, i, j in sorted(cand):
        if i not in used_c and j not in used_t:
            pairs.append((i, j))
            used_c.add(i)
            used_t.add(j)
    return np.asarray(pairs, int).reshape(-1, 2)


def _run_ours(field, out, catalog, cache, workers, kind="auto"):
    """The CLI in a fresh process; returns (wall s, returncode, log tail, samples).

    Samples: ``(t s, sum of RSS MB, largest RSS MB, sum of PSS MB or NaN)``; timeline
    (every 10 s): ``(t s, sum of RSS MB, blends finished)``.
    """
    import psutil

    env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1", SCARLET_XR_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    cores = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else None
    cmd = [sys.executable, "-m", "scarlet_xr.cli", "survey", str(field), "--out", str(out), "--catalog",
           str(catalog), "--workers", str(workers), "--kind", kind]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    samples, log, timeline = [], [], []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    ps = psutil.Process(proc.pid)
    k = 0
    while proc.poll() is None:
        try:
            procs = [ps] + ps.children(recursive=True)
            rss = [p.memory_info().rss for p in procs]
            # PSS (shared pages split between processes) every 2 s: reading smaps is slow
            pss = sum(p.memory_full_info().pss for p in procs) if k % 4 == 0 else np.nan
            samples.append((time.perf_counter() - t0, sum(rss) / 2**20, max(rss) / 2**20, pss / 2**20))
            if k % 20 == 0:
                timeline.append((round(samples[-1][0]), round(samples[-1][1]), _blends_done(out)))
        except psutil.Error:
            pass
        k += 1
        time.sleep(0.5)
    reader.join(timeout=10)
    return time.perf_counter() - t0, proc.returncode, "".join(log[-15:]), samples, timeline


def _blends_done(store) -> int:
    """Blends finished so far (0 before the store exists)."""
    try:
        import zarr

        return int((zarr.open_group(str(store), mode="r")["status"][:] > 0).sum())
    except Exception:  # noqa: BLE001 - not created yet, or being written
        return 0


def main(size: int = 2048, n_sources: int = 1000, n_peer: int = 20, max_steps: int = 300,
         workers: int = 2) -> dict:
    """Run the benchmark; return a dict of measurements (also printed as JSON)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from astropy.table import Table

    from scarlet_xr.survey import simulate_field

    tmp = Path(tempfile.mkdtemp(prefix="bench_field_"))
    t0 = time.perf_counter()
    truth = simulate_field(tmp / "field.fits", shape=(size, size), n_sources=n_sources, seed=2027,
                           bad_columns=(size // 5, size // 2 + 3, 4 * size // 5), saturated_star=True)
    t_sim = time.perf_counter() - t0
    fit_kind = os.environ.get("SCARLET_XR_BENCH_KIND", "auto")
    wall, rc, log, samples, timeline = _run_ours(tmp / "field.fits", tmp / "field.zarr", tmp / "field.ecsv",
                                                 tmp / "jax_cache", workers, fit_kind)
    if rc not in (0, 1):
        raise RuntimeError(f"scarlet-xr survey failed (exit code {rc}):\n{log}")
    cat = Table.read(tmp / "field.ecsv")
    blends = Table.read(tmp / "field.zarr.blends" / "blends.ecsv")
    bands = list(truth.meta["bands"])
    flux = np.stack([np.asarray(cat[f"flux_{b}"], float) for b in bands], axis=1)
    tflux = np.asarray(truth["true_flux"], float)
    pairs = _match(np.asarray(cat["x"], float), np.asarray(cat["y"], float), np.asarray(truth["x"]),
                   np.asarray(truth["y"]))
    c, t = pairs[:, 0], pairs[:, 1]
    sat = np.asarray(truth["saturated"], bool)[t]
    rel = np.abs(flux[c] / tflux[t] - 1)
    kind = np.asarray(truth["kind"])[t]
    blended = np.asarray(cat["blend_size"])[c] > 1
    n_blends = int(len(np.unique(blends["blend"])))
    rss = np.array([s[1] for s in samples]) if samples else np.zeros(1)
    times = np.array([s[0] for s in samples]) if samples else np.zeros(1)
    quarter = [float(np.max(rss[(times >= q * wall / 4) & (times < (q + 1) * wall / 4)], initial=0))
               for q in range(4)]
    flags = np.asarray(cat["flags"], np.int64)
    from scarlet_xr.xr import FLAGS

    res = {
        "field": f"{size}x{size}x{len(bands)}",
        "n_truth": int(len(truth)),
        "simulate_s": round(t_sim, 1),
        "n_detected": int(len(cat)),
        "n_blends": n_blends,
        "n_isolated": int((np.bincount(np.asarray(blends["blend"])) == 1).sum()),
        "largest_blend": int(np.max(blends["blend_size"])),
        "n_added": int(((flags & FLAGS["ADDED"]) > 0).sum()),
        "added_matched_truth": int(((flags[c] & FLAGS["ADDED"]) > 0).sum()),
        "matched_truth": int(len(pairs)),
        "unmatched_detections": int(len(cat) - len(pairs)),
        "failed_rows": int(((flags & FLAGS["FAILED"]) > 0).sum()),
        "edge_rows": int(((flags & FLAGS["EDGE"]) > 0).sum()),
        "workers": workers,
        "ours_wall_s": round(wall, 1),
        "ours_peak_rss_mb": round(float(rss.max()), 0),
        "ours_peak_rss_mb_by_quarter": [round(q, 0) for q in quarter],
        "rss_timeline_s_mb_blends_done": timeline,
        "peak_pss_mb": round(float(np.nanmax([sm[3] for sm in samples], initial=0)), 0),
        "peak_rss_one_process_mb": round(float(max((sm[2] for sm in samples), default=0)), 0),
        "ours_blends_per_s": round(n_blends / wall, 3),
        "ours_median_rel_flux_error": float(np.nanmedian(rel[~sat])),
        "ours_median_rel_flux_error_galaxies": float(np.nanmedian(rel[~sat & (kind == "galaxy")])),
        "ours_median_rel_flux_error_stars": float(np.nanmedian(rel[~sat & (kind == "star")])),
        "ours_median_rel_flux_error_isolated": float(np.nanmedian(rel[~sat & ~blended])),
        "ours_median_rel_flux_error_blended": float(np.nanmedian(rel[~sat & blended])),
        "saturated_star_rel_flux_error": (float(np.nanmedian(rel[sat])) if sat.any() else None),
        "cli_tail": log.strip().splitlines()[-3:],
        "work": str(tmp),
    }
    res.update(_peer(tmp, blends, flux, tflux, truth, n_peer, max_steps, c, t))
    res["kind"] = fit_kind
    res.update(_cutout_fits(tmp, blends, flux, tflux, truth, n_peer, c, t, fit_kind))
    if res.get("peer_blends_per_s"):
        res["ratio_blends_per_s"] = round(res["ours_blends_per_s"] / res["peer_blends_per_s"], 2)
    print(json.dumps(res, indent=1))
    return res


def _peer(tmp, blends, flux, tflux, truth, n_peer, max_steps, c, t) -> dict:
    """scarlet2 on a random subset of the blends, same cutouts and positions; timed per blend."""
    if n_peer <= 0:
        return {}
    sys.path.insert(0, str(HERE))
    from bench_survey import _peer_fit

    cat_of_truth = dict(zip(c.tolist(), t.tolist(), strict=True))
    bid = np.asarray(blends["blend"])
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(np.unique(bid), size=min(n_peer, len(np.unique(bid))), replace=False))
    t_peer, failed, err_peer, err_ours = 0.0, 0, [], []
    for b in ids:
        rows = np.flatnonzero(bid == b)
        t1 = time.perf_counter()
        try:
            f = _peer_fit(tmp / "field.zarr.blends" / blends["file"][rows[0]], blends[rows], max_steps)
        except Exception as err:  # noqa: BLE001 - a peer failure is counted, not fatal
            failed += 1
            print(f"peer failed on blend {b}: {type(err).__name__}: {err}", file=sys.stderr)
            t_peer += time.perf_counter() - t1
            continue
        t_peer += time.perf_counter() - t1
        for k, r in enumerate(rows):
            if r in cat_of_truth and not truth["saturated"][cat_of_truth[r]]:
                tr = tflux[cat_of_truth[r]]
                err_peer.append(np.abs(f[k] / tr - 1))
                err_ours.append(np.abs(flux[r] / tr - 1))
    return {
        "peer": "scarlet2 0.5.1, one blend at a time in this process",
        "peer_blends_fitted": int(len(ids)),
        "peer_failed": failed,
        "peer_subset_wall_s": round(t_peer, 1),
        "peer_blends_per_s": round(len(ids) / t_peer, 3) if t_peer else None,
        "peer_median_rel_flux_error_subset": float(np.nanmedian(err_peer)) if err_peer else None,
        "ours_median_rel_flux_error_subset": float(np.nanmedian(err_ours)) if err_ours else None,
    }


def _cutout_fits(tmp, blends, flux, tflux, truth, n_blends, c, t, kind: str = "auto") -> dict:
    """The same blends fitted one by one as cutouts at the true positions (what the field run loses).

    Each blend of the peer's random subset is read from the cutout the field run wrote and
    fitted with ``fit_sources`` (the field run's kind) at the true positions of its matched
    sources (detections without a match keep their detected position); the median error on
    the same source-bands is compared with the field run's.
    """
    if n_blends <= 0:
        return {}
    from scarlet_xr.scene import fit_sources
    from scarlet_xr.survey import read_blend
    from scarlet_xr.xr import frame_from_observations

    cat_of_truth = dict(zip(c.tolist(), t.tolist(), strict=True))
    bid = np.asarray(blends["blend"])
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(np.unique(bid), size=min(n_blends, len(np.unique(bid))), replace=False))
    err_cut, err_field, wall, failed = [], [], 0.0, 0
    for b in ids:
        rows = np.flatnonzero(bid == b)
        ds = read_blend(tmp / "field.zarr.blends" / blends["file"][rows[0]])
        y0, x0 = int(blends["blend_y0"][rows[0]]), int(blends["blend_x0"][rows[0]])
        centers = []
        for r in rows:
            if r in cat_of_truth:
                centers.append((truth["y"][cat_of_truth[r]] - y0, truth["x"][cat_of_truth[r]] - x0))
            else:
                centers.append((blends["y_det"][r] - y0, blends["x_det"][r] - x0))
        t1 = time.perf_counter()
        try:
            fitted = fit_sources(frame_from_observations(ds), ds, np.asarray(centers, float), kinds=kind)
        except Exception as err:  # noqa: BLE001 - counted, not fatal
            failed += 1
            print(f"cutout fit failed on blend {b}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        finally:
            wall += time.perf_counter() - t1
        for k, r in enumerate(rows):
            if r in cat_of_truth and not truth["saturated"][cat_of_truth[r]]:
                tr = tflux[cat_of_truth[r]]
                err_cut.append(np.abs(fitted.measured_flux[k] / tr - 1))
                err_field.append(np.abs(flux[r] / tr - 1))
    med_cut = float(np.nanmedian(err_cut)) if err_cut else None
    med_field = float(np.nanmedian(err_field)) if err_field else None
    return {
        "cutouts": f"the same {len(ids)} blends as single cutouts at the true positions, kind {kind!r}",
        "cutouts_failed": failed,
        "cutouts_wall_s": round(wall, 1),
        "cutouts_median_rel_flux_error": med_cut,
        "field_median_rel_flux_error_same_sources": med_field,
        "ratio_field_to_cutouts": round(med_field / med_cut, 2) if med_cut and med_field else None,
    }


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:]])
