"""``scarlet-xr fit FILE [FILE ...] [--psf PSF ...] [--sources CATALOG] --out PATH``."""

from __future__ import annotations

import time
from pathlib import Path

from ..xr import catalog_from_tree, write_catalog, write_deblended
from ._common import check_output, enable_compile_cache, format_summary, write_tree
from ._products import check_products, format_catalog, parse_zero_points
from ._sources import read_catalog as read_catalog

RELEASE_AFTER_FIT_MB = 700
"""Resident memory (MiB) above which ``scarlet-xr fit`` drops the fit's compiled programs before the results.

Measured on a 300-source cutout: the fit leaves ~760 MB, ~210 MB of it the
programs and the heap they used; the measurements add ~500 MB. Small scenes
(500-650 MB after the fit: the make_scenes blends, the HSC cutouts) stay under
it and keep their programs (the results reuse some of them).
"""


def add_parser(sub) -> None:
    """Register the ``fit`` sub-command."""
    p = sub.add_parser(
        "fit",
        help="fit FITS observations (one instrument per FILE) and write the results tree",
        description=(
            "Fit the observations in FITS files (one instrument per FILE). Sources come from a "
            "catalog with ra, dec columns (ECSV or FITS table) or are detected with sep. Writes "
            "the results DataTree to netCDF (.nc) or Zarr (.zarr) and prints a summary."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="FITS image (cube or single band)")
    p.add_argument(
        "--psf", nargs="+", action="extend", default=None, metavar="PSF",
        help="PSF FITS file per FILE, in the same order (default: a 'PSF' HDU in each FILE)",
    )
    for opt, what in (("--variance", "variance"), ("--weight", "inverse variance (weight)"),
                      ("--mask", "bad-pixel mask (non-zero = bad, or see --mask-bits)")):
        p.add_argument(
            opt, nargs="+", action="extend", default=None, metavar=opt[2:].upper(),
            help=f"{what} plane per FILE, in the same order: an HDU name of that FILE or a FITS file; "
                 "'auto' keeps the default for that FILE (default: found by HDU name, "
                 "e.g. VARIANCE, WEIGHT, MASK)",
        )
    p.add_argument(
        "--mask-bits", action="append", default=None, metavar="B1,B2,...",
        help="reject only mask pixels with these bits set: bit numbers or names from the mask "
             "header (MP_<NAME> keywords, as in LSST/HSC files), e.g. BAD,SAT,NO_DATA; once for "
             "all FILEs or once per FILE ('auto': the default for that FILE: any non-zero mask value "
             "rejects the pixel)",
    )
    p.add_argument(
        "--bands", action="append", default=None, metavar="B1,B2,...",
        help="comma-separated band names, once per FILE (default: from the header)",
    )
    p.add_argument("--sources", default=None, metavar="CATALOG",
                   help="ECSV or FITS table with ra, dec columns (deg); optional 'kind' column")
    p.add_argument("--out", required=True, metavar="PATH", help="output file ending in .nc or .zarr")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is not a scarlet_xr result (default: refuse)")
    p.add_argument("--sky", choices=("none", "constant", "plane"), default="none",
                   help="fit a background per band with the sources: 'constant' (a level) or "
                        "'plane' (a level and a gradient), either sign; for images whose sky was "
                        "not subtracted (default: none, the images are background-subtracted)")
    p.add_argument("--kind", default="auto",
                   help="source kind when the catalog has none: 'auto' (default: point source, "
                        "Sersic or bulge+disk, chosen per source from the data), free, monotonic, "
                        "symmetric, point, sersic, bulge+disk, gaussian, spergel, starlet")
    p.add_argument("--max-steps", type=int, default=1000, help="maximum optimizer steps")
    p.add_argument("--no-refine", action="store_true",
                   help="skip the Levenberg-Marquardt steps that settle the fit on its optimum "
                        "(scarlet_xr.infer.refine; on by default)")
    p.add_argument("--no-misfit-pixels", dest="misfit_pixels", action="store_false",
                   help="keep parametric models (point, Sersic, bulge+disk) for every auto source: bright "
                        "sources a smooth model misfits do not become monotonic pixels")
    p.add_argument("--find-missing", choices=("auto", "yes", "no"), default="auto",
                   help="add sources where the fit's residual has a significant peak away from every "
                        "source (flag ADDED; detections merge sources a PSF width or two apart). "
                        "auto (default): when the sources were detected here, not with --sources")
    p.add_argument("--prior", choices=("none", "learned"), default="none",
                   help="'learned': after the default fit, extended sources become free-form pixels "
                        "started from their fitted models, with the shipped galaxy-shape prior "
                        "(scarlet_xr.nn.learned_prior), and are refitted; point sources stay points")
    p.add_argument("--threshold", type=float, default=3.0, help="detection threshold in sigma")
    p.add_argument("--subtract-background", action="store_true",
                   help="subtract the sep background level from each band")
    p.add_argument("--recenter-psf", action="store_true",
                   help="move each PSF's peak onto its central pixel (whole-pixel shift)")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="after the fit, draw N posterior samples per chain with NUTS and write "
                        "/posterior and /sample_stats into the results")
    p.add_argument("--chains", type=int, default=4, metavar="K", help="NUTS chains (default 4)")
    p.add_argument("--warmup", type=int, default=None, metavar="W",
                   help="NUTS warm-up steps per chain (default: N)")
    p.add_argument("--catalog", default=None, metavar="PATH",
                   help="also write the source catalog (one row per source, with units): .ecsv or .fits")
    p.add_argument("--deblended", default=None, metavar="DIR",
                   help="also write each source's deblended image per observation as FITS with WCS")
    p.add_argument("--zero-point", default=None, metavar="ZP",
                   help="AB zero point for magnitudes: one number, or band=zp,band=zp,... "
                        "(default: MAGZERO/FLUXMAG0/PHOTFLAM keywords of the FITS headers)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write figures and the offline inspector page (DIR/inspector.html)")
    p.set_defaults(func=run)


def _load(args):
    from ..xr import open_observation

    n = len(args.files)
    for opt, vals in (("--psf", args.psf), ("--bands", args.bands), ("--variance", args.variance),
                      ("--weight", args.weight), ("--mask", args.mask)):
        if vals is not None and len(vals) != n:
            raise ValueError(f"give {opt} once per FILE: expected {n}; got {len(vals)}")
    if args.mask_bits is not None and len(args.mask_bits) not in (1, n):
        raise ValueError(
            f"give --mask-bits once (for all FILEs) or once per FILE: expected 1 or {n}; "
            f"got {len(args.mask_bits)}"
        )

    def plane(vals, i):
        return None if vals is None or vals[i].lower() == "auto" else vals[i]

    obs = []
    for i, f in enumerate(args.files):
        bands = None if args.bands is None else [b.strip() for b in args.bands[i].split(",")]
        bits = None
        if args.mask_bits is not None:
            bits = plane(args.mask_bits, 0 if len(args.mask_bits) == 1 else i)
        if plane(args.variance, i) is not None and plane(args.weight, i) is not None:
            raise ValueError(f"give --variance or --weight for {Path(f).name!r}, not both")
        obs.append(
            open_observation(
                f,
                psf=None if args.psf is None else args.psf[i],
                variance=plane(args.variance, i),
                weight=plane(args.weight, i),
                mask=plane(args.mask, i),
                mask_bits=bits,
                bands=bands,
                recenter_psf=args.recenter_psf,
                subtract_background=args.subtract_background,
            )
        )
    return obs


def run(args) -> int:
    """Run ``scarlet-xr fit``."""
    t0 = time.perf_counter()
    out = Path(args.out)
    if out.suffix not in (".nc", ".zarr"):
        raise ValueError(f"--out must end in .nc or .zarr; got {out.name!r}")
    planes = [*(args.variance or ()), *(args.weight or ()), *(args.mask or ())]
    planes = [p for p in planes if Path(p).exists()]  # files, not HDU names
    inputs = [*args.files, *(args.psf or ()), args.sources, *planes]
    check_output(out, overwrite=args.overwrite, inputs=inputs)
    check_products(args)
    sky = None if getattr(args, "sky", "none") == "none" else args.sky
    if sky is not None and getattr(args, "prior", "none") == "learned":
        raise ValueError("--sky is not supported with --prior learned; subtract the sky first")
    if sky is not None and args.sample:
        raise ValueError("--sky is not supported with --sample (the sampler has no sky); fit with --sky, "
                         "or subtract the sky and sample")
    enable_compile_cache()
    from .. import frame_from_observations
    from ..scene import detect_sources, fit_sources

    obs = _load(args)
    frame = frame_from_observations(obs)
    if args.sources is not None:
        centers, kinds = read_catalog(args.sources, frame)
        origin = f"catalog {Path(args.sources).name}"
    else:
        centers = detect_sources(obs, frame, threshold=args.threshold)
        kinds = None
        origin = "detected with sep"
        if len(centers) == 0:
            raise ValueError(f"no sources detected above {args.threshold} sigma; give --sources")
    kinds = kinds if kinds is not None else args.kind
    prior = None
    if getattr(args, "prior", "none") == "learned":
        from ..nn import learned_prior

        prior = learned_prior()
    find = getattr(args, "find_missing", "auto")
    find_missing = args.sources is None if find == "auto" else find == "yes"
    fitted = fit_sources(frame, obs, centers, kinds=kinds, max_steps=args.max_steps, progress=True,
                         sky=sky, prior=prior, refine_fit=not getattr(args, "no_refine", False),
                         find_missing=find_missing, misfit_pixels=getattr(args, "misfit_pixels", True))
    # a crowded scene's fit leaves its compiled programs in memory (300 sources: ~210 MB);
    # the results' measurements would come on top of them
    from ..infer import release_compiled_memory

    release_compiled_memory(RELEASE_AFTER_FIT_MB, trim_first=False)
    extra = {"inputs": ",".join(Path(f).name for f in args.files), "sky": sky or "none"}
    tree = fitted.to_datatree(obs, extra_attrs=extra,
                              zero_points=parse_zero_points(args.zero_point))
    if args.sample < 0 or args.chains < 1:
        raise ValueError(f"--sample must be >= 0 and --chains >= 1; got {args.sample}, {args.chains}")
    if args.sample:
        from ..scene import attach_posterior, sample_scene

        post = sample_scene(
            fitted, obs, num_warmup=args.sample if args.warmup is None else args.warmup,
            num_samples=args.sample, num_chains=args.chains, progress=True,
        )
        tree = attach_posterior(tree, post)
    write_tree(tree, out)
    added = len(fitted.sources) - len(centers)
    more = f", {added} added at residual peaks (flag ADDED)" if added else ""
    print(f"scarlet-xr fit: {len(obs)} observation(s), {len(centers)} sources ({origin}){more}")
    for ds in obs:
        notes = []
        if ds.attrs.get("planes"):
            notes.append(f"noise and mask planes used: {ds.attrs['planes']}")
        if ds.attrs.get("noise_estimated"):
            notes.append("noise estimated from the background (sep)")
        if ds.attrs.get("n_nonfinite_masked"):
            notes.append(f"{ds.attrs['n_nonfinite_masked']} non-finite pixels masked")
        if notes:
            print(f"  {ds.attrs['name']}: " + "; ".join(notes))
    print(format_summary(tree, time.perf_counter() - t0))
    table = catalog_from_tree(tree)
    print(format_catalog(table))
    print(f"wrote {out}")
    if args.catalog is not None:
        print(f"wrote {write_catalog(table, args.catalog)}")
    if args.deblended is not None:
        paths = write_deblended(tree, args.deblended)
        print(f"wrote {len(paths)} deblended images to {args.deblended}")
    if args.sample:
        from ..scene import summarize

        print(summarize(tree, var_names=["flux"]).to_string())
    if args.report is not None:
        from ..viz import write_report

        for path in write_report(tree, args.report):
            print(f"wrote {path}")
    return 0
