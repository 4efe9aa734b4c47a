"""``scarlet-xr survey CATALOG --out STORE.zarr``: deblend a catalog of blends."""

from __future__ import annotations

import time


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
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the survey; print a summary. Returns 0 if no blend failed, 1 otherwise."""
    from ..survey import deblend_catalog
    from ._common import SURVEY, check_output, enable_compile_cache

    check_output(args.out, overwrite=args.overwrite, expect=SURVEY, inputs=[args.catalog])
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
    return 0 if n_failed == 0 else 1
