"""The unit of distributed work: fit a group of same-bucket blends, write them."""

from __future__ import annotations

import contextlib
import os
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..core import render_observations
from ..infer import fit_batch, release_compiled_memory
from ..xr import FLAGS, MASKED_FRACTION_LIMIT, observation_wcs, source_image
from ._bucket import bucket_key, pad_observation, prepare_blend
from ._fits import read_blend
from ._store import (
    DONE,
    FAILED,
    MEASURE_VARS,
    PENDING,
    TaskStore,
    kind_codes,
    open_store,
    read_status,
    write_blend,
)

__all__ = ["run_task", "detect_centers", "fit_blend_auto", "CANONICAL_MAX_STAMP", "WORKER_MEMORY_MB",
           "WORKER_MEMORY_STEP_MB", "SURVEY_E_REL"]

WORKER_MEMORY_MB = 700
"""Resident memory (MB) of a survey worker above which it hands free heap pages back to the
system and, if still above, drops its in-memory compiled programs between blends (environment
variable ``SCARLET_XR_WORKER_MEMORY_MB`` overrides). A worker holds about 450 MB after a drop."""

WORKER_MEMORY_STEP_MB = 150
"""After a drop, a worker drops again only once it holds this much more (MB) than right after it.

Without handing the freed pages back (``malloc_trim``, glibc only) a drop returns little
memory to the system: the freed heap is reused by the next programs, and with a fixed
bound every later blend was over it and lost its programs (on the 2048 px field 1077 s
instead of 760 s). With glibc a worker is back near 450 MB after a drop, under the bound,
so the step matters only where pages cannot be handed back (macOS)."""

CANONICAL_MAX_STAMP = 256
"""Blends whose bucket's stamp is at most this are fitted padded, in the canonical layout.

Padded to their bucket (`survey._bucket.STAMP_SIZES`), blends share compiled fits
instead of compiling their own (extended sources share one box there, the largest canonical
size inside the stamp, see :func:`~scarlet_xr.scene.fit_sources`). Measured in one process per
setting (``fit_blend_auto``, ``simulate_blends`` seed 2026, 1-6 sources, fresh compile cache):
16 blends of 101-141 px fitted in 29.2 s padded (stamps 128 and 192) against 57.4 s in their
own shapes (compiling 12.8 s vs 35.2 s), median flux error 0.0424 vs 0.0431; 10 blends of
161-241 px in 21.0 s padded to 256 against 43.6 s (compiling 7.7 s vs 23.6 s), flux errors
equal (0.0621). Larger blends (stamps 384 and 512) keep their own shape: a 257 px blend would
be fitted on 2.2 times its pixels."""


SURVEY_PIXEL_STEPS = 300
"""Most steps of a survey blend's stages with pixel models (``fit_sources(..., pixel_steps=)``).

On 40 blends of the field benchmark with monotonic sources (2048 px, seed 2027, sources added at
residual peaks; two sets of 20), capping those stages at 300 steps (from 1000) took 16-17 % less
time, matched the same true sources and measured them no worse (median flux error 0.107 vs 0.120
and 0.060 vs 0.061; mean clipped error 0.245 vs 0.263 and 0.222 vs 0.228)."""


SURVEY_E_REL = 1e-5
"""Stopping rule of survey blends' fits (relative loss change per step; ``scarlet-xr fit`` uses
:data:`scarlet_xr.scene.DEFAULT_E_REL`, 1e-6). On the field benchmark (2048 px, seed 2027, 435
blends) the fits took 40 % fewer steps and 10 % less time (1020 vs 1129 s summed; wall 603 vs 648
s) with the same matches and fluxes (median error 0.0232 vs 0.0233); on the default path's scenes
(``make_scenes.py`` seeds 6262, 4242, 8080) fluxes were as good, but the ellipticity of a bright
isolated galaxy (S/N 82) moved 0.02 further from the truth: shapes converge more slowly than
fluxes."""


SURVEY_MISFIT_PIXELS = True
"""Whether bright survey-blend sources that a smooth model misfits become monotonic pixels
(``fit_sources(..., misfit_pixels=)``), as in ``scarlet-xr fit``. On real data they are the
structure of real galaxies: on the HSC COSMOS cutout (7 sources) the default path reaches reduced
chi^2 1.14 with them (3 monotonic sources), 2.16 without. On simulated fields, whose galaxies are
smooth bulges and disks, the misfits are sources the detection merged, and the pixels cost time
and accuracy: on two 1024 px fields (``simulate_field``, 250 sources, seeds 77 and 78, survey CLI,
2 workers) the run took 16-33 % less time without them (251 -> 211 s, 293 -> 196 s), matched as
many true sources (193 -> 196, 206 -> 206) and measured them better (median flux error 0.0216 ->
0.0209, 0.0291 -> 0.0267). ``misfit_pixels=False`` (``scarlet-xr survey --no-misfit-pixels``)
gives parametric models only, as survey photometry pipelines (the Tractor) report."""


def detect_centers(ds, max_sources: int, thresh: float = 5.0) -> np.ndarray:
    """Detect sources on the weighted coadd; return ``(n, 2)`` (y, x), brightest first."""
    try:
        from ..scene import detect_sources
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
    """Fluxes and chi^2 parts of a fitted blend (one compile per bucket)."""
    (rendered,) = render_observations(model, [lik])
    r = lik.residual_from(rendered)
    chi2 = jnp.sum(lik.weights * r * r)
    n_valid = jnp.sum(lik.weights > 0)
    return model.fluxes(), chi2, n_valid


def measure_blend(model, hist, frame, ds, key, n: int) -> dict:
    """Catalog measurements of the first ``n`` (active) sources of a fitted blend.

    Runs :func:`scarlet_xr.scene.measure_scene` on the padded observation (so
    its renderer compiles once per bucket, not per cutout size), then redoes
    the two flags that depend on the cutout's real extent: ``EDGE`` (the
    footprint touches the cutout's border or reaches into the padding) and
    ``MASKED`` (masked share of the footprint's pixels inside the cutout).

    Parameters
    ----------
    model : SceneModel
        The fitted model of :func:`~scarlet_xr.survey.prepare_blend`.
    hist : FitHistory
    frame : Frame
        The padded model frame.
    ds : Dataset
        The blend's observation, unpadded.
    key : BucketKey
    n : int
        Number of real sources (the first ``n`` slots).

    Returns
    -------
    dict
        ``{name: values}`` for every name of :data:`MEASURE_VARS` plus ``x``,
        ``y``, ``ra``, ``dec`` (NaN without WCS), ``flux`` and ``zero_point``
        (NaN per band when unknown).
    """
    from ..scene import Scene, measure_scene

    scene = Scene(frame)
    for src in model.sources[:n]:
        scene.add(src)
    scene.history = hist
    padded = pad_observation(ds, key.stamp, key.psf)
    m = measure_scene(scene, padded)
    out = _store_measurements(m, n, len(frame.bands))
    _cutout_flags(out, m, ds, n)
    out["kind_code"] = kind_codes(["free"] * n)
    return out


def _cutout_flags(out: dict, m, ds, n: int) -> None:
    """Redo ``EDGE`` and ``MASKED`` in ``out`` relative to the real cutout ``ds``, not its padded stamp."""
    deb = next(iter(m.deblended.values()))
    fp = np.stack([source_image(deb, "footprint", k) for k in range(n)]).astype(bool)
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    inside = fp[:, :ny, :nx]
    edge = (fp[:, ny:].any(axis=(1, 2)) | fp[:, :, nx:].any(axis=(1, 2))
            | inside[:, [0, -1], :].any(axis=(1, 2)) | inside[:, :, [0, -1]].any(axis=(1, 2)))
    masked = (np.asarray(ds["weight"].values) <= 0).mean(axis=0)
    n_in = inside.sum(axis=(1, 2))
    n_masked = np.einsum("kij,ij->k", inside.astype(float), masked)
    frac = np.where(n_in > 0, n_masked / np.maximum(n_in, 1), np.nan)
    flags = np.asarray(out["flags"], np.int64) & ~np.int64(FLAGS["EDGE"] | FLAGS["MASKED"])
    flags[edge] |= FLAGS["EDGE"]
    flags[np.nan_to_num(frac) > MASKED_FRACTION_LIMIT] |= FLAGS["MASKED"]
    out["flags"] = flags
    out["masked_fraction"] = frac


def _store_measurements(m, n: int, num_bands: int) -> dict:
    """The store's measurement variables from :func:`~scarlet_xr.scene.measure_scene` output."""
    got = {name: np.asarray(values) for name, (_, values, _) in m.sources.items()}
    nan = np.full(n, np.nan)
    out = {name: got.get(name, nan) for name in MEASURE_VARS}
    if m.sources["r_half"][2].get("units") != "arcsec":
        out["r_half"] = nan
    for name in ("x", "y", "ra", "dec", "flux"):
        out[name] = got.get(name, nan)
    out["zero_point"] = got.get("zero_point", np.full(num_bands, np.nan))
    return out


def _centers(ds, it, options):
    """Source centres ``(n, 2)`` in pixels of ``ds`` and their catalog rows (-1: detected)."""
    if it["ra"] is None:
        centers = detect_centers(ds, options["max_sources"])
        return centers, np.full(len(centers), -1)
    wcs = observation_wcs(ds)
    if wcs is None:
        raise ValueError("the file has no WCS; cannot place catalog ra/dec")
    x, y = wcs.world_to_pixel_values(np.asarray(it["ra"]), np.asarray(it["dec"]))
    return np.stack([np.atleast_1d(y), np.atleast_1d(x)], axis=1), np.asarray(it["rows"])


def fit_blend_auto(ds, centers, *, max_steps: int = 1000, e_rel: float = SURVEY_E_REL,
                   canonical: bool = True, find_missing: bool = False,
                   misfit_pixels: bool = SURVEY_MISFIT_PIXELS) -> dict:
    """Fit one blend with the default path and return its store record (see :func:`run_task`).

    The sources get the models the data support, as in ``scarlet-xr fit``
    (:func:`scarlet_xr.scene.fit_sources`: point source, Sersic or bulge +
    disk, boxes grown to fit, fluxes from a linear solve), and are measured
    with :func:`scarlet_xr.scene.measure_scene`. Unlike ``scarlet-xr fit``,
    without the final Levenberg-Marquardt steps (``refine_fit=False``: for
    blends too large for a canonical stamp they cost 43 % of the fit time
    and 1.6 GB of peak memory on the field benchmark, fluxes unchanged).

    Parameters
    ----------
    ds : Dataset
        The blend's observation.
    centers : array (n, 2)
        Source centres ``(y, x)`` in pixels of ``ds``.
    max_steps, e_rel
        Optimizer settings of :func:`~scarlet_xr.scene.fit_sources`.
    canonical : bool
        Pad the cutout to its bucket's stamp and PSF size (:func:`bucket_key`;
        padded pixels have weight 0, the WCS of the real pixels is unchanged)
        and fit in the canonical layout (``fit_sources(..., canonical=True)``):
        blends of one bucket then share compiled programs instead of compiling
        their own (default; for stamps up to :data:`CANONICAL_MAX_STAMP`).
        ``EDGE`` and ``MASKED`` refer to the real cutout.
    find_missing : bool
        Add sources at significant peaks of the residual (see
        :func:`scarlet_xr.scene.fit_sources`); they come after the given
        ones, flagged ``ADDED``. Default False.
    misfit_pixels : bool
        Bright sources a smooth model misfits become monotonic pixels
        (default :data:`SURVEY_MISFIT_PIXELS`, on).

    Returns
    -------
    dict
        ``status``, ``fit_status``, ``num_sources``, ``num_steps``,
        ``chi2_reduced``, ``fit_time``, ``measure_time``, ``flux``, ``ra``,
        ``dec``, ``y``, ``x``, ``zero_point``, ``measurements``, ``kinds``.

    Raises
    ------
    FloatingPointError
        If the fit diverged or gave non-finite fluxes.
    """
    from ..scene import fit_sources, host_products, measure_scene, scene_stamps
    from ..xr import frame_from_observations

    t0 = time.perf_counter()
    centers = np.atleast_2d(np.asarray(centers, float))
    cutout = ds
    if canonical:
        try:
            key = bucket_key((ds.sizes["y"], ds.sizes["x"]), len(centers), ds["psf"].shape[-2:],
                             ds["band"].values)
        except ValueError:  # beyond the largest bucket: fitted as it is
            canonical = False
        else:
            canonical = key.stamp <= CANONICAL_MAX_STAMP
            if canonical:
                ds = pad_observation(ds, key.stamp, key.psf)
    frame = frame_from_observations(ds)
    # no Levenberg-Marquardt refinement (canonical layouts skip it anyway): on the six blends of the
    # field benchmark too large for a canonical stamp it took 43 % of their time and 1.6 GB of peak
    # memory (compiling the Jacobian) for the same fluxes (median error 0.049 with it, 0.050 without)
    fitted = fit_sources(frame, ds, centers, max_steps=max_steps, e_rel=e_rel, canonical=canonical,
                         find_missing=find_missing, refine_fit=False, pixel_steps=SURVEY_PIXEL_STEPS,
                         misfit_pixels=misfit_pixels)
    hist = fitted.history
    if hist.status == "diverged":
        raise FloatingPointError(f"fit diverged after {hist.num_steps} steps (loss or gradient not finite)")
    # the products on the host: no program compiled for this blend's mix of kinds and boxes
    model = fitted.model()
    host = host_products(model)
    bound = fitted.bound_observations(ds)  # checked once, reused by the measurements
    (lik,) = (b.likelihood for b in bound)
    w = np.asarray(lik.weights, float)
    resid = np.asarray(lik.data, float) - lik.renderer.render_numpy(host[2])
    chi2 = float(np.sum(w * resid**2)) / max(int(np.sum(w > 0)), 1)
    t1 = time.perf_counter()
    n = len(fitted.sources)
    m = measure_scene(fitted, bound, stamps=scene_stamps(model, host[0]), model_flux=host[1],
                      renderers=[b.renderer for b in bound])
    meas = _store_measurements(m, n, len(frame.bands))
    if canonical:
        _cutout_flags(meas, m, cutout, n)
    kinds = [str(c["kind"]) for c in fitted.choices] if fitted.choices else [s.kind for s in fitted.sources]
    meas["kind_code"] = kind_codes(kinds)
    if not np.all(np.isfinite(meas["flux"])):
        raise FloatingPointError("fitted fluxes are not finite")
    return {
        "status": DONE, "fit_status": hist.status, "error": "", "num_sources": n,
        "num_steps": hist.num_steps, "chi2_reduced": chi2, "fit_time": t1 - t0,
        "measure_time": time.perf_counter() - t1, "flux": meas["flux"], "ra": meas["ra"],
        "dec": meas["dec"], "y": meas["y"], "x": meas["x"], "zero_point": meas["zero_point"],
        "measurements": meas, "kinds": kinds,
    }


def _bound_compiled_memory(limit_mb: float, floor_mb: float | None = None) -> float | None:
    """Drop JAX's in-memory compiled programs when this process holds too much.

    Each blend structure that is not yet compiled adds its programs to JAX's
    in-memory caches, which are never emptied: over a whole field a worker's
    memory grew from 0.7 to 2.3 GB. Above the bound the C heap's free pages
    are handed back first; if that is not enough the programs are dropped
    and the pages they held handed back
    (:func:`~scarlet_xr.infer.release_compiled_memory`).
    Programs needed again come back from the persistent compilation cache
    (when one is configured: the CLI's default) instead of being compiled
    anew.

    Parameters
    ----------
    limit_mb : float
        Drop above this resident memory (MB).
    floor_mb : float, optional
        Resident memory right after the previous drop: then drop only above
        ``max(limit_mb, floor_mb + WORKER_MEMORY_STEP_MB)`` (see
        :data:`WORKER_MEMORY_STEP_MB`).

    Returns
    -------
    float or None
        The resident memory (MB) after dropping, or None when nothing was dropped.
    """
    bound = limit_mb if floor_mb is None else max(limit_mb, floor_mb + WORKER_MEMORY_STEP_MB)
    # (the heap's free pages first, what compiling left: often enough)
    return release_compiled_memory(bound)


def _run_auto(group, items, options) -> list:
    """The default-path branch of :func:`run_task`: one blend after another.

    In a dask worker process, between blends the worker's in-memory compiled
    programs are dropped if it holds more than :data:`WORKER_MEMORY_MB`, and
    after a drop only once it holds :data:`WORKER_MEMORY_STEP_MB` more (see
    :func:`_bound_compiled_memory`). In the caller's own process
    (``client="synchronous"``) nothing is dropped: ``jax.clear_caches`` can
    crash a process that goes on using JAX programs traced before it (JAX
    issue 15973, seen once in our test suite), which a worker process that
    only fits blends does not.
    """
    report = []
    limit = float(os.environ.get("SCARLET_XR_WORKER_MEMORY_MB", WORKER_MEMORY_MB))
    bounded = _in_worker_process()
    floor = None
    for it in items:
        after = _bound_compiled_memory(limit, floor) if bounded else None
        floor = floor if after is None else after
        try:
            ds = read_blend(it["path"])
            centers, rows = _centers(ds, it, options)
            find = options.get("find_missing")
            find = it["ra"] is None if find is None else bool(find)
            result = fit_blend_auto(ds, centers, max_steps=options["max_steps"], e_rel=options["e_rel"],
                                    find_missing=find,
                                    misfit_pixels=bool(options.get("misfit_pixels", SURVEY_MISFIT_PIXELS)))
            result.pop("kinds")
            # sources added at residual peaks have no catalog row
            result["rows"] = np.concatenate([rows, np.full(result["num_sources"] - len(rows), -1)])
            write_blend(group, it["index"], result)
            report.append((it["index"], DONE))
        except Exception as err:  # bad data or a failed fit: record and go on
            write_blend(group, it["index"], {"status": FAILED, "error": _error(err)})
            report.append((it["index"], FAILED))
    return report


def _in_worker_process() -> bool:
    """True inside a separate dask worker process (not the caller's own process)."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    import multiprocessing

    return multiprocessing.parent_process() is not None


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
        ``kind`` (``"auto"``: the default path blend by blend, see
        :func:`fit_blend_auto`; ``"free"``: free-form sources fitted in
        vmapped batches), ``max_steps``, ``e_rel``, ``batch_size``,
        ``max_sources``, ``redo_failed``, ``compile_cache`` (directory or None).

    Returns
    -------
    list of (int, int)
        ``(blend index, status)`` for every item (skipped ones included).
    """
    with _compile_cache(options.get("compile_cache")):
        return _run_bucket(store, items, key, options)


@contextlib.contextmanager
def _compile_cache(path):
    """JAX's persistent compilation cache in ``path`` while the block runs (None: as configured).

    The previous settings are restored afterwards, so a worker that runs the
    task keeps its own configuration.
    """
    if not path:
        yield
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    # JAX opens its cache once per process, in the first directory it is given: reset it on the
    # way in and out, or a later directory (or none) would silently keep using the first one
    compilation_cache.reset_cache()
    jax.config.update(names[0], str(path))
    jax.config.update(names[1], 0.0)
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def _run_bucket(store, items, key, options):
    group = TaskStore(open_store(store))  # the arrays opened once for all the task's writes
    status = read_status(group, [it["index"] for it in items])
    redo = (PENDING, FAILED) if options.get("redo_failed") else (PENDING,)
    todo = [it for it, st in zip(items, status, strict=True) if st in redo]
    report = [(it["index"], int(st)) for it, st in zip(items, status, strict=True) if st not in redo]
    if options.get("kind", "free") == "auto":
        return report + _run_auto(group, todo, options)
    prepared = []
    for it in todo:
        t0 = time.perf_counter()
        try:
            ds = read_blend(it["path"])
            centers, rows = _centers(ds, it, options)
            model, lik, frame = prepare_blend(ds, centers, key)
            prepared.append(({**it, "ds": ds}, model, lik, frame, rows, time.perf_counter() - t0))
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
            flux, chi2_sum, n_valid = (np.asarray(x) for x in _blend_summary(model, lik))
            chi2 = float(chi2_sum / max(int(n_valid), 1))
            if not np.all(np.isfinite(flux[:n])):
                raise FloatingPointError("fitted fluxes are not finite")
            t1 = time.perf_counter()
            try:
                meas = measure_blend(model, hist, frame, it["ds"], key, n)
            except Exception as err:
                raise RuntimeError(f"measurement failed: {_error(err)}") from err
            result = {
                "status": DONE, "fit_status": hist.status, "error": "", "num_sources": n,
                "num_steps": hist.num_steps, "chi2_reduced": chi2, "fit_time": t_init + per_blend,
                "measure_time": time.perf_counter() - t1, "flux": meas["flux"], "ra": meas["ra"],
                "dec": meas["dec"], "y": meas["y"], "x": meas["x"], "rows": rows,
                "zero_point": meas["zero_point"], "measurements": meas,
            }
            write_blend(group, idx, result)
            report.append((idx, DONE))
        except Exception as err:
            write_blend(group, idx, {"status": FAILED, "error": _error(err),
                                     "num_steps": 0 if hist is None else hist.num_steps})
            report.append((idx, FAILED))
    return report
