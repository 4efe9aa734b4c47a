"""The source catalog of a results tree: an astropy Table with units, and its files.

Columns (public contract; extend, never rename): one row per source with
``id``, ``name``, ``ra``, ``dec`` (deg, ICRS, model centroid), ``ra_err``,
``dec_err`` (arcsec), ``x``, ``y`` (model-frame pixels), ``x_err``, ``y_err``,
``flux_<band>``, ``flux_err_<band>``, ``snr_<band>`` (``flux_post_<band>``,
``flux_err_post_<band>``: posterior median and standard deviation when the
tree holds a ``/posterior``), ``mag_<band>`` and
``mag_err_<band>`` plus ``color_<b1>_<b2>`` and ``color_err_<b1>_<b2>`` for
neighbouring bands when a zero point is known, ``r_half`` (arcsec, or pixels
without WCS), ``e1``, ``e2``, ``theta`` (deg), ``pa`` (deg, with WCS),
``kind``, ``kind_reason``, ``blendedness``, ``masked_fraction`` and
``flags`` (bitmask, :data:`scarlet_xr.xr.FLAGS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._measure import FLAGS, flag_descriptions
from ._observation import observation_wcs, shift_wcs
from ._stamps import stamp_box

__all__ = [
    "catalog_from_tree", "select_columns", "write_catalog", "write_deblended", "REQUIRED_SOURCE_VARS",
    "CATALOG_COLUMNS",
]

#: Per-source scalar columns: ``{name: (unit or None for the variable's own, description)}``.

#: Variables of ``/sources`` that a catalog needs (written since scarlet_xr 0.4).
REQUIRED_SOURCE_VARS = ("flux", "flux_err", "x", "y", "r_half", "e1", "e2", "flags", "kind")

CATALOG_COLUMNS = {
    # name: (unit, description); unit None = from the variable's attrs
    "ra": ("deg", "ICRS right ascension of the model's light-weighted centroid"),
    "dec": ("deg", "ICRS declination of the model's light-weighted centroid"),
    "ra_err": ("arcsec", "1-sigma error of ra * cos(dec) (Fisher)"),
    "dec_err": ("arcsec", "1-sigma error of dec (Fisher)"),
    "x": ("pix", "model centroid, model-frame column"),
    "y": ("pix", "model centroid, model-frame row"),
    "x_err": ("pix", "1-sigma error of x (Fisher)"),
    "y_err": ("pix", "1-sigma error of y (Fisher)"),
    "r_half": (None, "half-light radius of the model before the PSF (circular)"),
    "e1": ("", "(Ixx - Iyy) / (Ixx + Iyy) of the model before the PSF"),
    "e2": ("", "2 Ixy / (Ixx + Iyy) of the model before the PSF"),
    "theta": ("deg", "major-axis angle from +x towards +y (pixel frame)"),
    "pa": ("deg", "position angle of the major axis, east of north"),
    "blendedness": ("", "share of the model flux in the footprint that belongs to other sources"),
    "masked_fraction": ("", "fraction of the footprint's pixels that are masked"),
}


def _check_tree(tree):
    if "sources" not in tree.children:
        raise ValueError(
            f"not a scarlet_xr results tree: no /sources node; has {list(tree.children)}"
        )
    src = tree["sources"].to_dataset()
    missing = [v for v in REQUIRED_SOURCE_VARS if v not in src]
    if missing:
        version = tree.attrs.get("scarlet_xr_version", "unknown")
        raise ValueError(
            f"this results tree (written by scarlet_xr {version}) has no catalog measurements: "
            f"/sources lacks {missing}; expected {list(REQUIRED_SOURCE_VARS)}. Fit again with this "
            f"version (tree.scarlet.fit()) to get them."
        )
    return src


def _flux_unit(tree):
    units = set()
    for node in tree["observations"].children.values() if "observations" in tree.children else []:
        u = node.attrs.get("units") or node.attrs.get("bunit")
        if u:
            units.add(str(u))
    if len(units) == 1:
        import astropy.units as u_

        try:
            return u_.Unit(units.pop(), parse_strict="silent")
        except ValueError:
            pass
    return None


def catalog_from_tree(tree, *, columns=None):
    """One row per source of a results tree as an ``astropy.table.Table`` with units.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree (:meth:`scarlet_xr.Scene.to_datatree`, ``scarlet-xr fit``).
    columns : sequence of str, optional
        Keep only these columns (in this order).

    Returns
    -------
    astropy.table.Table
        Columns as in the module docstring; ``meta`` holds the bands, the flag
        bits and the scarlet_xr version.

    Raises
    ------
    ValueError
        Not a results tree, a tree without measurements (older version), or an
        unknown column.
    """
    import astropy.units as u
    from astropy.table import Column, Table

    src = _check_tree(tree)
    bands = [str(b) for b in src["band"].values]
    ns = src.sizes["source"]
    flux_unit = _flux_unit(tree) or u.dimensionless_unscaled
    table = Table()
    table["id"] = Column(np.arange(ns), description="source index in the results tree")
    table["name"] = Column(np.asarray(src["name"].values).astype(str), description="source name")
    for name, (unit, text) in CATALOG_COLUMNS.items():
        if name not in src:
            continue
        if unit is None:
            unit = src[name].attrs.get("units", "")
        if name in ("ra", "dec", "ra_err", "dec_err") and np.all(np.isnan(src[name].values)):
            continue  # no WCS
        table[name] = Column(np.asarray(src[name].values, float), unit=u.Unit(unit), description=text)
    for j, b in enumerate(bands):
        table[f"flux_{b}"] = Column(src["flux"].values[:, j], unit=flux_unit, description=f"flux in {b}")
        table[f"flux_err_{b}"] = Column(src["flux_err"].values[:, j], unit=flux_unit,
                                        description=f"1-sigma flux error in {b} (Fisher)")
        if "snr" in src:
            table[f"snr_{b}"] = Column(src["snr"].values[:, j], unit=u.dimensionless_unscaled,
                                       description=f"flux / flux_err in {b}")
    _add_posterior(table, tree, bands, ns, flux_unit)
    if "mag" in src:
        for j, b in enumerate(bands):
            table[f"mag_{b}"] = Column(src["mag"].values[:, j], unit=u.mag,
                                       description=f"AB magnitude in {b}")
            table[f"mag_err_{b}"] = Column(src["mag_err"].values[:, j], unit=u.mag,
                                           description=f"1-sigma error of mag_{b}")
        for j in range(len(bands) - 1):
            b1, b2 = bands[j], bands[j + 1]
            table[f"color_{b1}_{b2}"] = Column(src["mag"].values[:, j] - src["mag"].values[:, j + 1],
                                               unit=u.mag, description=f"mag_{b1} - mag_{b2}")
            table[f"color_err_{b1}_{b2}"] = Column(
                np.hypot(src["mag_err"].values[:, j], src["mag_err"].values[:, j + 1]), unit=u.mag,
                description=f"1-sigma error of color_{b1}_{b2} (band errors added in quadrature)")
    table["kind"] = Column(np.asarray(src["kind"].values).astype(str), description="model kind")
    if "kind_reason" in src:
        table["kind_reason"] = Column(np.asarray(src["kind_reason"].values).astype(str),
                                      description="why the default path chose this kind")
    table["flags"] = Column(np.asarray(src["flags"].values, np.int64), unit=u.dimensionless_unscaled,
                            description="bitmask: " + "; ".join(f"{k}={v}" for k, v in FLAGS.items()))
    table.meta = {
        "bands": bands,
        "flags": flag_descriptions(),
        "scarlet_xr_version": str(tree.attrs.get("scarlet_xr_version", "")),
    }
    return select_columns(table, columns)


def select_columns(table, columns=None):
    """``table`` with only ``columns`` (in that order); all of it when ``columns`` is None.

    Raises
    ------
    ValueError
        A column the table does not have (the available ones listed).
    """
    if columns is None:
        return table
    columns = list(columns)
    unknown = [c for c in columns if c not in table.colnames]
    if unknown:
        raise ValueError(f"unknown catalog column(s) {unknown}; available: {table.colnames}")
    return table[columns]


def _add_posterior(table, tree, bands, ns, flux_unit):
    """``flux_post_<band>``, ``flux_err_post_<band>``: posterior median and std when sampled."""
    from astropy.table import Column

    if "posterior" not in tree.children or "flux" not in tree["posterior"].to_dataset():
        return
    post = tree["posterior"].to_dataset()["flux"]
    idx = np.asarray(post["source"].values) if "source" in post.coords else np.arange(post.sizes["source"])
    post = post.sel(band=bands) if "band" in post.coords else post
    vals = np.asarray(post.transpose("chain", "draw", "source", "band").values, float)
    med = np.full((ns, len(bands)), np.nan)
    std = np.full((ns, len(bands)), np.nan)
    med[idx] = np.median(vals, axis=(0, 1))
    std[idx] = np.std(vals, axis=(0, 1), ddof=1)
    for j, b in enumerate(bands):
        table[f"flux_post_{b}"] = Column(med[:, j], unit=flux_unit,
                                         description=f"posterior median flux in {b}")
        table[f"flux_err_post_{b}"] = Column(std[:, j], unit=flux_unit,
                                             description=f"posterior standard deviation of the flux in {b}")


def write_catalog(table, path, *, overwrite: bool = True) -> Path:
    """Write a catalog Table as ECSV (``.ecsv``) or a FITS table (``.fits``/``.fit``).

    Parameters
    ----------
    table : astropy.table.Table
    path : str or path-like
    overwrite : bool

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ecsv":
        table.write(path, format="ascii.ecsv", overwrite=overwrite)
    elif suffix in (".fits", ".fit"):
        out = table.copy(copy_data=False)
        # FITS headers hold flat keywords: keep the flag bits, drop nested meta
        out.meta = {"SXVERS": table.meta.get("scarlet_xr_version", ""),
                    "BANDS": ",".join(table.meta.get("bands", []))}
        for name, bit in FLAGS.items():
            out.meta[f"FLAG{int(np.log2(bit))}"] = name
        out.write(path, format="fits", overwrite=overwrite)
    else:
        raise ValueError(f"catalog file must end in .ecsv or .fits; got {path.name!r}")
    return path


def write_deblended(tree, directory) -> list[Path]:
    """Write each source's deblended image per observation as FITS with the observation's WCS.

    Files are ``<directory>/<observation>_src<id>.fits``: primary HDU the
    ``(band, y, x)`` image on the source's box (clipped to the observation),
    header with the celestial WCS of that box, ``BOX_Y0``/``BOX_X0`` (its
    first pixel in the observation), ``BANDS`` and the source's
    ``RA``/``DEC``; a second HDU ``FOOTPRINT`` (uint8).

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree with ``/deblended``.
    directory : str or path-like
        Created if missing.

    Returns
    -------
    list of pathlib.Path
    """
    from astropy.io import fits

    if "deblended" not in tree.children:
        raise ValueError("this results tree has no /deblended node (fit again with this version)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    src = tree["sources"].to_dataset()
    paths = []
    for obs_name, node in tree["deblended"].children.items():
        ds = node.to_dataset()
        wcs = observation_wcs(ds)
        bands = [str(b) for b in ds["band"].values]
        ny, nx = ds.sizes["y"], ds.sizes["x"]
        for k in range(ds.sizes["source"]):
            # the source's box, clipped to the observation; its WCS shifted to the box
            iy, ix, bh, bw = stamp_box(ds, k)
            ys0, xs0 = max(iy, 0), max(ix, 0)
            ys1, xs1 = max(min(iy + bh, ny), ys0), max(min(ix + bw, nx), xs0)
            h = fits.Header() if wcs is None else shift_wcs(wcs, ys0, xs0).to_header(relax=True)
            h["BANDS"] = ",".join(bands)
            h["SOURCE"] = (int(k), "source index in the results tree")
            h["OBSERV"] = (str(obs_name), "observation")
            h["BOX_Y0"] = (int(ds["y"].values[0]) + ys0, "y of the first row in the observation")
            h["BOX_X0"] = (int(ds["x"].values[0]) + xs0, "x of the first column in the observation")
            for key, var in (("RA", "ra"), ("DEC", "dec")):
                if var in src and np.isfinite(src[var].values[k]):
                    h[key] = (float(src[var].values[k]), "source centroid, deg ICRS")
            cut = (slice(ys0 - iy, ys1 - iy), slice(xs0 - ix, xs1 - ix))
            prim = fits.PrimaryHDU(np.asarray(ds["image"].values[k][(slice(None), *cut)], np.float32),
                                   header=h)
            foot = fits.ImageHDU(np.asarray(ds["footprint"].values[k][cut], np.uint8), name="FOOTPRINT")
            path = directory / f"{obs_name}_src{k}.fits"
            fits.HDUList([prim, foot]).writeto(path, overwrite=True)
            paths.append(path)
    return paths
