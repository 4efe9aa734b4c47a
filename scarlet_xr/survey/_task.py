"""The unit of distributed work: fit a group of same-bucket blends, write them."""

from __future__ import annotations

import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..infer import fit_batch
from ..xr import observation_wcs
from ._bucket import prepare_blend
from ._fits import read_blend
from ._store import DONE, FAILED, PENDING, open_store, read_status, write_blend

__all__ = ["run_task", "detect_centers"]


def detect_centers(ds, max_sources: int, thresh: float = 5.0) -> np.ndarray:
    """Detect sources on the weighted coadd; return ``(n, 2)`` (y, x), brightest first."""
    try:
        from ..scene._detect import detect_sources
    except ImportError:  # pragma: no cover - detection module not present
        detect_sources = None
    if detect_sources is not None:
        centers = np.asarray(detect_sources(ds, threshold=thresh))
    else:  # pragma: no cover
        import sep

        from ..scene import detection_image
        from ..xr import frame_from_observations

        det, sigma, valid = detection_image(ds, frame_from_observations(ds))
        objs = sep.extract(np.ascontiguousarray(det, dtype=np.float64), thresh, err=sigma,
                           mask=~valid, minarea=5)
        order = np.argsort(-objs["flux"])
        centers = np.stack([objs["y"][order], objs["x"][order]], axis=1) if len(objs) else np.zeros((0, 2))
    if len(centers) == 0:
        raise ValueError(f"no source detected above {thresh} sigma")
    return centers[:max_sources]


@eqx.filter_jit
def _blend_summary(model, lik):
    """Fluxes, morphology images, centres and chi^2 parts of a fitted blend (one compile per bucket)."""
    cube = model()
    r = lik.residual(cube)
    chi2 = jnp.sum(lik.weights * r * r)
    n_valid = jnp.sum(lik.weights > 0)
    images = jnp.stack([src.components[0].morphology(jnp.zeros(2)) for src in model.sources])
    centers = jnp.stack([src.center.value for src in model.sources])
    return model.fluxes(), images, centers, chi2, n_valid


def _centroid(img, c):
    """Light-weighted centre of a box image anchored at the pixel nearest ``c``."""
    tot = img.sum()
    if not tot > 0:
        return c
    h, w = img.shape
    yy, xx = np.mgrid[:h, :w]
    return np.round(c) + np.array([(img * (yy - h // 2)).sum(), (img * (xx - w // 2)).sum()]) / tot


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000]


def run_task(store: str, items: list, key, options: dict) -> list:
    """Fit the blends in ``items`` (one bucket) and write each to the store.

    Parameters
    ----------
    store : str
        Path of the Zarr store (created by the driver).
    items : list of dict
        ``index`` (blend), ``path`` (FITS file), ``rows`` (catalog rows or
        empty for detection), ``ra``, ``dec`` (deg, or None to detect).
    key : BucketKey
    options : dict
        ``max_steps``, ``e_rel``, ``batch_size``, ``max_sources``,
        ``redo_failed``, ``compile_cache`` (directory or None).

    Returns
    -------
    list of (int, int)
        ``(blend index, status)`` for every item (skipped ones included).
    """
    if options.get("compile_cache"):
        import jax

        jax.config.update("jax_compilation_cache_dir", str(options["compile_cache"]))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    group = open_store(store)
    status = read_status(group, [it["index"] for it in items])
    redo = (PENDING, FAILED) if options.get("redo_failed") else (PENDING,)
    todo = [it for it, st in zip(items, status, strict=True) if st in redo]
    report = [(it["index"], int(st)) for it, st in zip(items, status, strict=True) if st not in redo]
    prepared = []
    for it in todo:
        t0 = time.perf_counter()
        try:
            ds = read_blend(it["path"])
            if it["ra"] is None:
                centers = detect_centers(ds, options["max_sources"])
                rows = np.full(len(centers), -1)
            else:
                wcs = observation_wcs(ds)
                if wcs is None:
                    raise ValueError("the file has no WCS; cannot place catalog ra/dec")
                x, y = wcs.world_to_pixel_values(np.asarray(it["ra"]), np.asarray(it["dec"]))
                centers = np.stack([np.atleast_1d(y), np.atleast_1d(x)], axis=1)
                rows = np.asarray(it["rows"])
            model, lik, frame = prepare_blend(ds, centers, key)
            prepared.append((it, model, lik, frame, rows, time.perf_counter() - t0))
        except Exception as err:  # bad data: record and go on
            write_blend(group, it["index"], {"status": FAILED, "error": _error(err)})
            report.append((it["index"], FAILED))
    if not prepared:
        return report
    fit_kw = {"max_steps": options["max_steps"], "e_rel": options["e_rel"],
              "batch_size": options["batch_size"]}
    t0 = time.perf_counter()
    try:
        fitted, hists = fit_batch([p[1] for p in prepared], [(p[2],) for p in prepared], **fit_kw)
    except Exception:  # isolate the culprit: one blend at a time
        fitted, hists = [], []
        for p in prepared:
            try:
                f, h = fit_batch([p[1]], [(p[2],)], **fit_kw)
                fitted.append(f[0])
                hists.append(h[0])
            except Exception as err:
                fitted.append(err)
                hists.append(None)
    per_blend = (time.perf_counter() - t0) / len(prepared)
    for (it, _, lik, frame, rows, t_init), model, hist in zip(prepared, fitted, hists, strict=True):
        idx = it["index"]
        try:
            if hist is None:
                raise model
            if hist.status == "diverged":
                raise FloatingPointError(
                    f"fit diverged after {hist.num_steps} steps (loss or gradient not finite)"
                )
            n = len(rows)
            flux, images, centers, chi2_sum, n_valid = (np.asarray(x) for x in _blend_summary(model, lik))
            flux = flux[:n]
            cen = np.stack([_centroid(images[k], centers[k].astype(float)) for k in range(n)])
            if frame.wcs is not None:
                ra, dec = frame.pixel_to_sky(cen[:, 0], cen[:, 1])
            else:
                ra = dec = np.full(n, np.nan)
            chi2 = float(chi2_sum / max(int(n_valid), 1))
            if not np.all(np.isfinite(flux)):
                raise FloatingPointError("fitted fluxes are not finite")
            result = {
                "status": DONE, "fit_status": hist.status, "error": "", "num_sources": n,
                "num_steps": hist.num_steps, "chi2_reduced": chi2, "fit_time": t_init + per_blend,
                "flux": flux, "ra": ra, "dec": dec, "y": cen[:, 0], "x": cen[:, 1], "rows": rows,
            }
            write_blend(group, idx, result)
            report.append((idx, DONE))
        except Exception as err:
            write_blend(group, idx, {"status": FAILED, "error": _error(err),
                                     "num_steps": 0 if hist is None else hist.num_steps})
            report.append((idx, FAILED))
    return report
