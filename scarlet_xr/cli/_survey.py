"""``scarlet-xr survey CATALOG|FIELD.fits --out STORE.zarr``: deblend a catalog of blends or a whole field."""

from __future__ import annotations

import time
from pathlib import Path


def add_parser(sub) -> None:
    """Register the ``survey`` sub-command."""
    p = sub.add_parser("survey", help="deblend every blend of a catalog into one Zarr store (resumable)")
    p.add_argument("catalog", nargs="+", metavar="INPUT",
                   help="ECSV/FITS/CSV table with columns file[, ra, dec]; or a whole field: a FITS image "
                        "(band, y, x) with PSF and optional VARIANCE/WEIGHT/MASK HDUs, or several "
                        "files of the same pixel grid (e.g. one per band)")
    p.add_argument("--out", required=True, help="output Zarr store (re-running resumes it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace whatever is at --out (also a survey store, which is otherwise resumed)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    p.add_argument("--scheduler", default=None,
                   help="address of a running dask scheduler (default: start a LocalCluster)")
    p.add_argument("--kind", choices=["auto", "free", "freeform"], default="auto",
                   help="source models: auto (default, as `scarlet-xr fit`: point source, Sersic or "
                        "bulge+disk chosen per source from the data) or free (free-form pixels, fitted in "
                        "vmapped batches: faster, less accurate on blends)")
    p.add_argument("--find-missing", choices=("auto", "yes", "no"), default="auto",
                   help="--kind auto: add sources where a blend's fit leaves a significant residual peak "
                        "away from every source (flag ADDED; detections merge sources a PSF width or two "
                        "apart). auto (default): for a whole field and for blends without catalog "
                        "positions; catalog rows stay one-to-one")
    p.add_argument("--max-steps", type=int, default=None,
                   help="maximum optimizer steps per blend (default 1000 for --kind auto, 300 for free)")
    p.add_argument("--blends-per-task", type=int, default=8, help="blends per dask task")
    p.add_argument("--retry-failed", action="store_true", help="also redo blends recorded as failed")
    p.add_argument("--catalog", dest="catalog_out", default=None, metavar="FILE",
                   help="also write the catalog: one row per input row, with units and flags "
                        "(FAILED for rows without a fit); .ecsv or .fits")
    p.add_argument("--zero-point", default=None, metavar="ZP",
                   help="AB zero point for the catalog's magnitudes: one number, or band=zp,band=zp,... "
                        "(default: MAGZERO/FLUXMAG0/PHOTFLAM keywords of the blend files)")
    p.add_argument("--detect-threshold", type=float, default=4.0,
                   help="field mode: detection threshold in noise units of the coadd (default 4)")
    p.add_argument("--margin", type=int, default=8,
                   help="field mode: pixels around footprints joining neighbours into one blend (default 8)")
    p.add_argument("--mask-bits", default=None, metavar="B1,B2,...",
                   help="field mode: reject only mask pixels with these bits (numbers or names from the "
                        "mask header's MP_<NAME> keywords, e.g. BAD,SAT); default: any non-zero value")
    p.add_argument("--no-misfit-pixels", dest="misfit_pixels", action="store_false",
                   help="keep parametric models (point, Sersic, bulge+disk) for every source: bright "
                        "sources a smooth model misfits do not become monotonic pixels (faster; see "
                        "docs/default_path.md)")
    p.add_argument("--workdir", default=None,
                   help="field mode: where the blend cutouts go (default STORE.zarr.blends)")
    p.set_defaults(func=run)


def _input_kind(paths) -> str:
    """``"field"`` if every input is a FITS image, ``"table"`` for one catalog; else a clear error."""
    from astropy.io import fits

    kinds = []
    for path in paths:
        p = Path(path)
        if p.suffix.lower() in (".ecsv", ".csv", ".txt", ".dat"):
            kinds.append("table")
            continue
        if not p.exists():
            raise ValueError(f"input {path!r} does not exist")
        try:
            with fits.open(p, memmap=True) as hdul:
                images = [h.name or str(i) for i, h in enumerate(hdul)
                          if h.is_image and h.header.get("NAXIS", 0) in (2, 3) and h.name != "PSF"]
                tables = [h.name or str(i) for i, h in enumerate(hdul)
                          if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
        except OSError as err:
            raise ValueError(f"input {path!r} is neither a FITS file nor an ECSV/CSV table: {err}") from err
        if images and tables:
            raise ValueError(
                f"input {path!r} is ambiguous: it holds image HDU(s) {images} (a field) and table HDU(s) "
                f"{tables} (a catalog of blends); expected one or the other"
            )
        if not images and not tables:
            raise ValueError(f"input {path!r} holds neither an image nor a table HDU")
        kinds.append("field" if images else "table")
    if set(kinds) == {"field"}:
        return "field"
    if kinds == ["table"]:
        return "table"
    raise ValueError(f"expected one catalog table or one or more field images; got {len(paths)} inputs of "
                     f"kinds {kinds}")


def _check_catalog_out(args) -> None:
    """Refuse a ``--catalog`` path that cannot be written (or is the input), before any fitting."""
    from types import SimpleNamespace

    from ._products import check_products

    check_products(SimpleNamespace(catalog=args.catalog_out, zero_point=args.zero_point))
    inputs = args.catalog if isinstance(args.catalog, list) else [args.catalog]
    if args.catalog_out is not None and any(Path(args.catalog_out).resolve() == Path(i).resolve()
                                            for i in inputs):
        raise ValueError(f"--catalog {args.catalog_out!r} is an input; choose another path")


def run(args) -> int:
    """Run the survey; print a summary. Returns 0 if no blend failed, 1 otherwise."""
    from ..survey import deblend_catalog
    from ..xr import FLAGS
    from ._common import SURVEY, check_output, enable_compile_cache
    from ._products import parse_zero_points

    field = _input_kind(args.catalog) == "field"
    if not field:
        args.catalog = args.catalog[0]
    check_output(args.out, overwrite=args.overwrite, expect=SURVEY,
                 inputs=args.catalog if field else [args.catalog])
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
    runner = {"client": client, "n_workers": args.workers, "blends_per_task": args.blends_per_task,
              "max_steps": args.max_steps, "kind": args.kind, "retry_failed": args.retry_failed,
              "progress": True,
              "compile_cache": None if cache.lower() in ("", "0", "off", "none") else cache}
    if not getattr(args, "misfit_pixels", True):
        runner["misfit_pixels"] = False
    find = getattr(args, "find_missing", "auto")
    if find != "auto":
        runner["find_missing"] = find == "yes"
    try:
        if field:
            import xarray as xr

            from ..survey import deblend_field

            table = deblend_field(args.catalog, out=args.out, catalog=args.catalog_out, workdir=args.workdir,
                                  threshold=args.detect_threshold, margin=args.margin,
                                  mask_bits=args.mask_bits,
                                  zero_points=parse_zero_points(args.zero_point), **runner)
            ds = xr.open_zarr(str(args.out), consolidated=False)
        else:
            ds = deblend_catalog(args.catalog, out=args.out, **runner)
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
    if args.catalog_out and field:
        n_edge = int(((table["flags"] & FLAGS["EDGE"]) > 0).sum())
        n_added = int(((table["flags"] & FLAGS["ADDED"]) > 0).sum())
        print(f"wrote {args.catalog_out}: {len(table) - n_added} detected and {n_added} added sources in "
              f"{status.size} blends ({n_edge} flagged EDGE)")
    elif args.catalog_out:
        from ..survey import survey_catalog
        from ..xr import write_catalog

        table = survey_catalog(args.out, zero_points=parse_zero_points(args.zero_point))
        write_catalog(table, args.catalog_out)
        n_failed_rows = int(((table["flags"] & FLAGS["FAILED"]) > 0).sum())
        print(f"wrote {args.catalog_out}: {len(table)} rows ({n_failed_rows} without a fit, flag FAILED)")
    return 0 if n_failed == 0 else 1
