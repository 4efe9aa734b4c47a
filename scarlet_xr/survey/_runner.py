"""``deblend_catalog``: fit every blend of a catalog with dask, results in one Zarr store."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import xarray as xr

from .._version import __version__
from ._bucket import SLOT_COUNTS, bucket_key
from ._fits import read_blend_header
from ._store import (
    FAILED,
    PENDING,
    check_store,
    create_store,
    open_store,
    read_status,
    write_blend,
    write_rows,
)
from ._task import SURVEY_E_REL, SURVEY_MISFIT_PIXELS, run_task

__all__ = ["deblend_catalog", "read_catalog"]

logger = logging.getLogger(__name__)


SURVEY_KINDS = ("auto", "free")
"""Source models of :func:`deblend_catalog`: the default path, or batched free-form sources."""


def read_catalog(catalog):
    """Read a catalog (path to ECSV/FITS/CSV, or an astropy Table).

    Returns
    -------
    table : astropy.table.Table
    base : Path
        Directory that relative ``file`` entries are resolved against.

    Raises
    ------
    ValueError
        If the ``file`` column is missing, or only one of ``ra``/``dec`` is given.
    """
    from astropy.table import Table

    if isinstance(catalog, Table):
        table, base = catalog, Path.cwd()
    else:
        path = Path(catalog)
        if not path.exists():
            raise ValueError(f"catalog {str(path)!r} does not exist")
        fmt = "ascii.csv" if path.suffix.lower() == ".csv" else None
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
        base = path.parent
    if "file" not in table.colnames:
        raise ValueError(f"the catalog needs a 'file' column; got columns {table.colnames}")
    if ("ra" in table.colnames) != ("dec" in table.colnames):
        raise ValueError("the catalog needs both 'ra' and 'dec' columns, or neither (to detect)")
    return table, base


def _group(table, base):
    """Blends in order of first appearance: (path, rows, ra, dec or None)."""
    files = [str(f).strip() for f in table["file"]]
    has_pos = "ra" in table.colnames
    ra = np.asarray(table["ra"], float) if has_pos else np.full(len(files), np.nan)
    dec = np.asarray(table["dec"], float) if has_pos else np.full(len(files), np.nan)
    rows = defaultdict(list)
    for i, f in enumerate(files):
        rows[f].append(i)
    blends = []
    for f, r in rows.items():
        r = np.asarray(r)
        p = Path(f) if Path(f).is_absolute() else base / f
        pos = np.isfinite(ra[r]) & np.isfinite(dec[r])
        if pos.any():
            blends.append({"file": f, "path": str(p), "rows": r[pos], "ra": ra[r][pos], "dec": dec[r][pos]})
        else:
            blends.append({"file": f, "path": str(p), "rows": np.zeros(0, int), "ra": None, "dec": None})
    return blends


def _fingerprint(blends, n_rows) -> str:
    h = hashlib.sha256(str(n_rows).encode())
    for b in blends:
        h.update(b["file"].encode())
        h.update(np.asarray(b["rows"], np.int64).tobytes())
        if b["ra"] is not None:
            h.update(np.round(np.asarray(b["ra"], float), 9).tobytes())
            h.update(np.round(np.asarray(b["dec"], float), 9).tobytes())
    return h.hexdigest()


def _slots_needed(n):
    return next(s for s in SLOT_COUNTS if s >= n)


def deblend_catalog(
    catalog,
    *,
    out,
    client=None,
    n_workers: int = 2,
    blends_per_task: int = 8,
    batch_size: int | None = None,
    kind: str = "auto",
    max_steps: int | None = None,
    e_rel: float | None = None,
    max_sources: int = 8,
    retry_failed: bool = False,
    progress: bool = True,
    compile_cache=None,
    find_missing: bool | None = None,
    misfit_pixels: bool = SURVEY_MISFIT_PIXELS,
) -> xr.Dataset:
    """Deblend every blend of a catalog and write the results to one Zarr store.

    Rows are grouped into blends by their ``file`` (a FITS cutout, see
    :func:`scarlet_xr.survey.write_blend_fits`); rows without ``ra``/``dec``
    (or a catalog without those columns) mean: detect sources in that file.
    Each blend is fitted with the default path of ``scarlet-xr fit``
    (``kind="auto"``: every source gets the model its data support, see
    :func:`scarlet_xr.scene.fit_sources`), or with ``kind="free"`` as free-form
    sources padded into canonical buckets (:func:`bucket_key`) and fitted in
    vmapped batches (faster, less accurate on blends: ``docs/default_path.md``),
    and written by the worker that fitted it. Re-running with the same catalog
    and ``out`` resumes: finished blends (done or failed) are skipped. A blend
    that fails (unreadable file, bad data, divergence) is recorded with its
    error and the run goes on; a worker that dies loses only its unfinished
    blends, which dask re-runs elsewhere or a later run picks up.

    Parameters
    ----------
    catalog : str, Path or astropy.table.Table
        One row per source; columns ``file``, and ``ra``, ``dec`` in degrees.
        Relative paths are resolved against the catalog's directory.
    out : str or Path
        The Zarr store (created, or resumed if it exists for this catalog).
    client : distributed.Client or "synchronous", optional
        Where to run. Default: a ``LocalCluster`` with ``n_workers`` single-
        threaded worker processes, each pinned to its own CPU core where there
        are enough (Linux), closed at the end. ``"synchronous"`` runs
        in this process without dask.
    n_workers : int
        Workers of the default LocalCluster.
    blends_per_task : int
        Blends of one bucket per dask task.
    batch_size : int, optional
        Blends vmapped together inside a task (``kind="free"``). Default 1 on
        CPU (fastest there), ``blends_per_task`` on GPU.
    kind : {"auto", "free"}
        The source models (see above; ``"freeform"`` is an alias of ``"free"``).
        A store keeps the kind it was started with.
    max_steps, e_rel : optional
        Optimizer settings (see :func:`scarlet_xr.infer.fit`). Default 1000 and
        :data:`SURVEY_E_REL` for ``"auto"``, 300 and 1e-4 for ``"free"``.
    max_sources : int
        Sources kept per detected blend (brightest first).
    retry_failed : bool
        Also redo blends recorded as failed.
    progress : bool
        Show a progress bar (``tqdm.auto``; honours ``TQDM_DISABLE``).
    compile_cache : str or Path, optional
        JAX persistent compilation cache shared by the workers. Default
        ``$SCARLET_XR_CACHE`` if set (``off``, ``none``, ``0`` or empty: no cache, as for the CLI).
    find_missing : bool, optional
        ``kind="auto"``: add sources where a blend's fit leaves a significant
        residual peak (see :func:`scarlet_xr.scene.fit_sources`; detections
        merge sources a PSF width or two apart). They are stored in the
        blend's slots without a catalog row (``source_row`` -1), flagged
        ``ADDED``, and listed by ``survey_catalog(..., added=True)``.
        Default: in blends without catalog positions (detected here); True
        adds them to catalog blends too (:func:`deblend_field` does, its
        catalog being its own detections). A store keeps its setting.
    misfit_pixels : bool
        ``kind="auto"``: bright sources that a smooth model misfits become
        monotonic pixels, as in ``scarlet-xr fit`` (default True); False keeps
        parametric models only, faster where the misfits are merged sources
        rather than structure (see :data:`scarlet_xr.survey._task.SURVEY_MISFIT_PIXELS`).

    Returns
    -------
    xarray.Dataset
        The store, opened lazily (see :mod:`scarlet_xr.survey._store` for the layout);
        every fitted source is measured (:func:`scarlet_xr.scene.measure_scene`)
        and :func:`scarlet_xr.survey.survey_catalog` makes the catalog.

    Raises
    ------
    ValueError
        If the catalog is invalid, or ``out`` holds a store of another catalog or
        of a version without measurements.
    """
    if blends_per_task < 1:
        raise ValueError(f"blends_per_task must be >= 1; got {blends_per_task}")
    kind = {"freeform": "free"}.get(str(kind), str(kind))
    if kind not in SURVEY_KINDS:
        raise ValueError(f"kind must be one of {SURVEY_KINDS} (or 'freeform'); got {kind!r}")
    if max_steps is None:
        max_steps = 1000 if kind == "auto" else 300
    if e_rel is None:
        e_rel = SURVEY_E_REL if kind == "auto" else 1e-4
    store_kind = {"auto": "auto", "free": "freeform"}[kind]
    table, base = read_catalog(catalog)
    blends = _group(table, base)
    if not blends:
        raise ValueError("the catalog has no rows")
    n_rows = len(table)
    fp = _fingerprint(blends, n_rows)
    keys, header_errors, bands = [], {}, None
    for i, b in enumerate(blends):
        try:
            h = read_blend_header(b["path"])
            bands = bands or h["bands"]
            if h["bands"] != bands:
                raise ValueError(f"bands {h['bands']} differ from the survey's {bands}")
            n = max_sources if b["ra"] is None else len(b["rows"])
            keys.append(bucket_key(h["shape"], n, h["psf_shape"], h["bands"]))
        except Exception as err:
            keys.append(None)
            header_errors[i] = f"{type(err).__name__}: {err}"
    if bands is None:
        raise ValueError(f"no readable blend file; first error: {next(iter(header_errors.values()))}")
    slots = max(k.slots for k in keys if k is not None)
    searched = find_missing is True or (find_missing is None and any(b["ra"] is None for b in blends))
    if kind == "auto" and searched:  # room for the sources a fit may add
        from ..scene import MISSING_MAX_SOURCES

        slots = max(slots, _slots_needed(MISSING_MAX_SOURCES))
    out = Path(out)
    if out.exists():
        group = open_store(out)
        got = group.attrs.get("catalog_fingerprint")
        if got != fp:
            raise ValueError(
                f"{out} holds results of a different catalog (fingerprint {str(got)[:12]} vs "
                f"{fp[:12]}); choose another --out or delete it"
            )
        check_store(group)
        if group.attrs.get("source_kind", "freeform") != store_kind:
            raise ValueError(
                f"{out} was started with kind {group.attrs.get('source_kind', 'freeform')!r}; resume it "
                f"with that kind, or choose another --out for kind {store_kind!r}"
            )
        got_find = group.attrs.get("find_missing", None)
        if got_find != find_missing:
            raise ValueError(f"{out} was started with find_missing={got_find!r}; resume it with that "
                             f"setting, or choose another --out for find_missing={find_missing!r}")
        got_pixels = bool(group.attrs.get("misfit_pixels", True))  # stores of earlier versions: on
        if got_pixels != bool(misfit_pixels):
            raise ValueError(f"{out} was started with misfit_pixels={got_pixels}; resume it with that "
                             f"setting, or choose another --out for misfit_pixels={bool(misfit_pixels)}")
    else:
        group = create_store(out, files=[b["file"] for b in blends], bands=bands, slots=slots,
                             n_rows=n_rows, fingerprint=fp,
                             attrs={"scarlet_xr_version": __version__, "source_kind": store_kind,
                                    "find_missing": find_missing, "misfit_pixels": bool(misfit_pixels)})
        index = np.full(n_rows, -1, np.int64)
        for i, b in enumerate(blends):
            index[b["rows"]] = i
        group["blend_index"][:] = index
    status = read_status(group)
    for i, msg in header_errors.items():
        if status[i] == PENDING or (retry_failed and status[i] == FAILED):
            write_blend(group, i, {"status": FAILED, "error": msg})
            status[i] = FAILED
    redo = (PENDING, FAILED) if retry_failed else (PENDING,)
    todo = [i for i in range(len(blends)) if status[i] in redo and i not in header_errors]
    by_key = defaultdict(list)
    for i in todo:
        by_key[keys[i]].append(i)
    per_bucket = []
    for key, idx in by_key.items():
        chunks = []
        for s in range(0, len(idx), blends_per_task):
            items = [{"index": i, "path": blends[i]["path"], "rows": blends[i]["rows"],
                      "ra": blends[i]["ra"], "dec": blends[i]["dec"]} for i in idx[s : s + blends_per_task]]
            chunks.append((items, key))
        per_bucket.append(chunks)
    # round-robin over buckets: workers start on different buckets, so each bucket is
    # compiled once and later tasks of it find the shared compilation cache warm
    tasks = [t for group_ in itertools.zip_longest(*per_bucket) for t in group_ if t is not None]
    cache = compile_cache if compile_cache is not None else os.environ.get("SCARLET_XR_CACHE")
    if cache is not None and str(cache).strip().lower() in ("", "0", "off", "none"):
        cache = None
    options = {"kind": kind, "max_steps": int(max_steps), "e_rel": float(e_rel),
               "max_sources": int(max_sources), "find_missing": find_missing,
               "misfit_pixels": bool(misfit_pixels),
               "redo_failed": bool(retry_failed), "compile_cache": str(cache) if cache else None,
               "batch_size": batch_size}
    if tasks:
        _execute(str(out), tasks, options, client, n_workers, progress, len(todo), blends_per_task)
    write_rows(open_store(out))
    return xr.open_zarr(str(out), consolidated=False)


def _execute(store, tasks, options, client, n_workers, progress, total, blends_per_task):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="blends", unit="blend",
               disable=not progress or bool(os.environ.get("TQDM_DISABLE")))
    try:
        if isinstance(client, str):
            if client != "synchronous":
                raise ValueError(f"client must be a distributed.Client or 'synchronous'; got {client!r}")
            opts = dict(options)
            if opts["batch_size"] is None:
                opts["batch_size"] = _default_batch(blends_per_task)
            for items, key in tasks:
                run_task(store, items, key, opts)
                bar.update(len(items))
            return
        if client is None:
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as own:
                cores = _cores_to_pin(n_workers)
                if cores:
                    own.run(_pin_worker, cores)
                _submit(own, store, tasks, options, bar, blends_per_task, by_bucket=True)
        else:
            _submit(client, store, tasks, options, bar, blends_per_task)
    finally:
        bar.close()


def _cores_to_pin(n_workers: int) -> list[int]:
    """The CPU cores the default LocalCluster's workers are pinned to (one each), or ``[]``.

    JAX's CPU runtime runs a process's steps on more threads than it gains from: a
    single process fitting survey blends used 1.5 cores for 8 % more speed than on one
    core (40 blends whose programs were compiled: 10.7 s on two cores, 11.6 s pinned to
    one), so two unpinned workers on two cores slowed each other. Survey workers
    therefore get one core each when there are at least as many cores as workers
    (Linux; elsewhere, or with fewer cores, they are left alone): the 200 blends of
    ``benchmarks/bench_survey.py`` with a warm compile cache took 85.5 and 86.7 s instead
    of 95.5 and 96.4 s (2 workers, 2 cores, fluxes unchanged).
    """
    if n_workers < 2 or not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    return cores[:n_workers] if len(cores) >= n_workers else []


def _pin_worker(cores, dask_worker=None) -> int:
    """Pin every thread of this worker process to one of ``cores`` (by the worker's name)."""
    name = getattr(dask_worker, "name", 0)
    index = name if isinstance(name, int) else zlib.crc32(str(name).encode())
    core = cores[index % len(cores)]
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:  # a thread that ended meanwhile
            pass
    return core


def _default_batch(blends_per_task):
    import jax

    return 1 if jax.default_backend() == "cpu" else blends_per_task


def _preferred_workers(tasks, workers) -> list:
    """For each task, the worker its bucket is given to: buckets spread over ``workers`` by cost.

    A worker traces (and compiles, or loads from the compile cache) every program of
    the buckets it fits, so buckets are not shared: each goes whole to the worker with
    the least work so far, largest first (work: ``1 + stamp / 64`` per blend plus
    :data:`BUCKET_COMPILE_COST` per bucket; a survey blend whose programs are compiled
    takes about 0.3 s on a 32 px stamp, 0.4 s on 64 px and 1 s on 256 px on one core).
    No preference (all None) when the buckets cannot be spread evenly: fewer buckets
    than workers, or a worker with more than :data:`BUCKET_IMBALANCE` times the mean
    work (idle workers would wait).
    """
    if len(workers) < 2:
        return [None] * len(tasks)
    cost = defaultdict(float)
    for items, key in tasks:
        cost[key] += len(items) * (1.0 + key.stamp / 64)
    load = dict.fromkeys(workers, 0.0)
    owner = {}
    for key in sorted(cost, key=lambda k: (-cost[k], repr(k))):
        w = min(workers, key=lambda w_: (load[w_], w_))
        owner[key] = w
        load[w] += cost[key] + BUCKET_COMPILE_COST
    if len(cost) < len(workers) or max(load.values()) > BUCKET_IMBALANCE * sum(load.values()) / len(load):
        return [None] * len(tasks)
    return [owner[key] for _, key in tasks]


BUCKET_COMPILE_COST = 10.0
"""Cost of a bucket's programs (about 2 s of compiling) in the units of :func:`_preferred_workers`
(about 0.2 s each)."""

BUCKET_IMBALANCE = 1.25
"""Most work of one worker, over the mean, for which :func:`_preferred_workers` spreads buckets."""


def _submit(client, store, tasks, options, bar, blends_per_task, by_bucket=False):
    from distributed import as_completed

    opts = dict(options)
    if opts["batch_size"] is None:
        opts["batch_size"] = client.submit(_default_batch, blends_per_task, pure=False).result()
    prefer = (_preferred_workers(tasks, sorted(client.scheduler_info()["workers"])) if by_bucket
              else [None] * len(tasks))
    futures = {}
    for (items, key), w in zip(tasks, prefer, strict=True):
        where = {} if w is None else {"workers": [w], "allow_other_workers": True}
        futures[client.submit(run_task, store, items, key, opts, pure=False, retries=1, **where)] = len(items)
    lost = 0
    for fut in as_completed(futures):
        try:
            fut.result()
        except Exception as err:  # e.g. KilledWorker: those blends stay pending for a re-run
            lost += 1
            logger.warning("a survey task failed (%s); its unfinished blends stay pending", err)
        bar.update(futures[fut])
    if lost:
        logger.warning("%d task(s) failed; re-run deblend_catalog to resume them", lost)
