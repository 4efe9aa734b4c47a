"""``scarlet-xr survey CATALOG --out STORE.zarr``: deblend a catalog of blends."""

from __future__ import annotations

import time
from pathlib import Path


def add_parser(sub) -> None:
    """Register the ``survey`` sub-command."""
    p = sub.add_parser("survey", help="deblend every blend of a catalog into one Zarr store (resumable)")
    p.add_argument("catalog", help="ECSV/FITS/CSV table with columns file[, ra, dec]")
    p.add_argument("--out", required=True, help="output Zarr store (re-running resumes it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace whatever is at --out (also a survey store, which is otherwise resumed)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    p.add_argument("--scheduler", default=None,
                   help="address of a running dask scheduler (default: start a LocalCluster)")
    p.add_argument("--max-steps", type=int, default=300, help="maximum optimizer steps per blend")
    p.add_argument("--blends-per-task", type=int, default=8, help="blends per dask task")
    p.add_argument("--retry-failed", action="store_true", help="also redo blends recorded as failed")
    p.add_argument("--catalog", dest="catalog_out", default=None, metavar="FILE",
                   help="also write the catalog: one row per input row, with units and flags "
                        "(FAILED for rows without a fit); .ecsv or .fits")
    p.add_argument("--zero-point", default=None, metavar="ZP",
                   help="AB zero point for the catalog's magnitudes: one number, or band=zp,band=zp,... "
                        "(default: MAGZERO/FLUXMAG0/PHOTFLAM keywords of the blend files)")
    p.set_defaults(func=run)


def _check_catalog_out(args) -> None:
    """Refuse a ``--catalog`` path that cannot be written (or is the input), before any fitting."""
    from types import SimpleNamespace

    from ._products import check_products

    check_products(SimpleNamespace(catalog=args.catalog_out, zero_point=args.zero_point))
    if args.catalog_out is not None and Path(args.catalog_out).resolve() == Path(args.catalog).resolve():
        raise ValueError(f"--catalog {args.catalog_out!r} is the input catalog; choose another path")


def run(args) -> int:
    """Run the survey; print a summary. Returns 0 if no blend failed, 1 otherwise."""
    from ..survey import deblend_catalog
    from ..xr import FLAGS
    from ._common import SURVEY, check_output, enable_compile_cache
    from ._products import parse_zero_points

    check_output(args.out, overwrite=args.overwrite, expect=SURVEY, inputs=[args.catalog])
    _check_catalog_out(args)
    enable_compile_cache()
    import os
    from pathlib import Path

    cache = os.environ.get("SCARLET_XR_CACHE", str(Path.home() / ".cache" / "scarlet_xr" / "jax"))
    t0 = time.perf_counter()
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    try:
        ds = deblend_catalog(
            args.catalog, out=args.out, client=client, n_workers=args.workers,
            blends_per_task=args.blends_per_task, max_steps=args.max_steps,
            retry_failed=args.retry_failed, progress=True,
            compile_cache=None if cache.lower() in ("", "0", "off", "none") else cache,
        )
    finally:
        if client is not None:
            client.close()
    status = ds["status"].values
    n_done, n_failed = int((status == 1).sum()), int((status == 2).sum())
    wall = time.perf_counter() - t0
    print(f"scarlet-xr survey: {status.size} blends, {n_done} done, {n_failed} failed, "
          f"{int((status == 0).sum())} pending; {int(ds['valid'].values.sum())}/{ds.sizes['row']} "
          f"catalog rows fitted; wall time {wall:.1f} s")
    if n_failed:
        errors = ds["error"].values
        files = ds["file"].values
        for i in list(range(status.size))[:1000]:
            if status[i] == 2:
                print(f"  failed: {files[i]}: {errors[i]}")
    print(f"wrote {args.out}")
    if args.catalog_out:
        from ..survey import survey_catalog
        from ..xr import write_catalog

        table = survey_catalog(args.out, zero_points=parse_zero_points(args.zero_point))
        write_catalog(table, args.catalog_out)
        n_failed_rows = int(((table["flags"] & FLAGS["FAILED"]) > 0).sum())
        print(f"wrote {args.catalog_out}: {len(table)} rows ({n_failed_rows} without a fit, flag FAILED)")
    return 0 if n_failed == 0 else 1
