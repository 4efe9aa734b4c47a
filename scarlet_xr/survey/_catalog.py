"""One catalog for a whole survey store: one row per input catalog row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..xr import CATALOG_COLUMNS as _SCALAR
from ..xr import FLAGS, flag_descriptions, resolve_zero_points, select_columns
from ._store import MEASURE_VARS, check_store, open_store

__all__ = ["survey_catalog"]

# row variable -> catalog column, in the order of scarlet_xr.xr.catalog_from_tree
_SCALAR_COLUMNS = ("ra", "dec", "ra_err", "dec_err", "x", "y", "x_err", "y_err", "r_half", "r_half_pix",
                   "e1", "e2", "theta", "pa", "blendedness", "masked_fraction")
_UNITS = {"ra": "deg", "dec": "deg", "x": "pix", "y": "pix"}


def _zero_points(group, zero_points, bands, blend_index, valid):
    """Zero point per row and band ``(row, band)``: given ones, else each blend's header's."""
    n_rows = len(blend_index)
    if zero_points is not None:
        zp = resolve_zero_points(zero_points, bands)
        return np.broadcast_to(zp, (n_rows, len(bands)))
    per_blend = np.asarray(group["zero_point"][:], float)
    out = np.full((n_rows, len(bands)), np.nan)
    ok = valid & (blend_index >= 0)
    out[ok] = per_blend[blend_index[ok]]
    return None if np.all(np.isnan(out)) else out


def survey_catalog(store, *, zero_points=None, columns=None, added: bool = False):
    """The catalog of a survey store: one row per input catalog row, in input order.

    Column names, units and descriptions follow
    :func:`scarlet_xr.xr.catalog_from_tree` where they apply (``ra``, ``dec``,
    ``ra_err``, ``dec_err``, ``x``, ``y``, ``x_err``, ``y_err``, ``r_half``,
    ``e1``, ``e2``, ``theta``, ``pa``, ``blendedness``, ``masked_fraction``,
    ``flux_<band>``, ``flux_err_<band>``, ``snr_<band>``, ``mag_<band>``,
    ``mag_err_<band>``, ``color_<b1>_<b2>``, ``kind``, ``flags``), plus ``id``
    (the input row), ``file``, ``blend_index`` and ``r_half_pix``. ``x`` and
    ``y`` are pixels of the row's cutout; ``r_half`` is in arcsec (NaN for a
    cutout without WCS). A row without a fit (its blend failed, is still
    pending, or the row had no ra/dec) has NaN values, ``kind`` ``"none"`` and the
    ``FAILED`` bit in ``flags``. Sources detected in blends without catalog
    positions have no input row and are not in this table.

    Parameters
    ----------
    store : str or path-like
        A store written by :func:`scarlet_xr.survey.deblend_catalog`.
    zero_points : float, sequence or dict, optional
        AB zero point(s) for ``mag`` columns (one number, one per band, or
        ``{band: zp}``). Default: those read from each cutout's FITS header
        (``MAGZERO``, ``FLUXMAG0``, ...); no magnitudes if none is known.
    columns : sequence of str, optional
        Keep only these columns (in this order).
    added : bool
        Also list the fitted sources without an input row, after the input
        rows, with ``id`` -1: those the fits added where their residual had a
        significant peak (``find_missing``, flag ``ADDED``) and those detected
        in blends without catalog positions. Default False: one row per input
        row.

    Returns
    -------
    astropy.table.Table
        ``meta`` holds the bands, the flag bits, the scarlet_xr version and
        the store path.

    Raises
    ------
    ValueError
        If ``store`` is not a survey store, was written by a version without
        measurements, or a requested column is unknown.
    """
    path = Path(store)
    if not path.exists():
        raise ValueError(f"survey store {str(path)!r} does not exist")
    try:
        group = open_store(path, mode="r")
        bands = [str(b) for b in group["band"][:]]
        files = np.array([str(f) for f in group["file"][:]])
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a survey store (deblend_catalog output): {err}") from err
    check_store(group)
    blend_index = np.asarray(group["blend_index"][:], np.int64)
    valid = np.asarray(group["valid"][:], bool)

    def row(name):
        values = np.asarray(group[name][:])
        return values.astype(np.float64) if values.dtype.kind == "f" else values

    table = _table(group, bands, files, blend_index, valid, row, np.arange(len(blend_index)), zero_points)
    if added:
        from astropy.table import vstack

        from ._store import DONE, read_status

        done = (read_status(group) == DONE)[:, None]
        rowless = np.asarray(group["source_row"][:]) < 0
        b, s = np.nonzero(np.asarray(group["source_valid"][:], bool) & rowless & done)
        if len(b):
            per_slot = {"flux": "source_flux", "ra": "source_ra", "dec": "source_dec", "x": "source_x",
                        "y": "source_y", "kind_code": "source_kind_code", "flags": "source_flags"}

            def slot(name):
                values = np.asarray(group[per_slot.get(name, f"source_{name}")][:])[b, s]
                return values.astype(np.float64) if values.dtype.kind == "f" else values

            more = _table(group, bands, files, b.astype(np.int64), np.ones(len(b), bool), slot,
                          np.full(len(b), -1), zero_points)
            table = vstack([table, more], metadata_conflicts="silent")
    table.meta = {
        "bands": bands,
        "flags": flag_descriptions(),
        "scarlet_xr_version": str(group.attrs.get("scarlet_xr_version", "")),
        "store": str(path),
    }
    return select_columns(table, columns)


def _table(group, bands, files, blend_index, valid, row, ids, zero_points):
    """Catalog columns of rows whose store variables ``row(name)`` gives (see :func:`survey_catalog`)."""
    import astropy.units as u
    from astropy.table import Column, Table

    table = Table()
    table["id"] = Column(ids, description="row of the input catalog (-1: added by the fit)")
    table["file"] = Column(np.where(blend_index >= 0, files[np.maximum(blend_index, 0)], ""),
                           description="blend file of the row (as given in the input catalog)")
    table["blend_index"] = Column(blend_index, description="blend of the survey store (-1: none)")
    for name in _SCALAR_COLUMNS:
        if name == "r_half_pix":
            unit, text = "pix", MEASURE_VARS["r_half_pix"][4]
        else:
            unit, text = _SCALAR[name]
            unit = unit if unit is not None else MEASURE_VARS[name][3]
        if name == "masked_fraction":
            text = MEASURE_VARS[name][4]
        table[name] = Column(row(name), unit=u.Unit(unit), description=text)
    flux, flux_err = row("flux"), row("flux_err")
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / flux_err
    for j, b in enumerate(bands):
        table[f"flux_{b}"] = Column(flux[:, j], unit=u.dimensionless_unscaled, description=f"flux in {b}")
        table[f"flux_err_{b}"] = Column(flux_err[:, j], unit=u.dimensionless_unscaled,
                                        description=f"1-sigma flux error in {b} (Fisher)")
        table[f"snr_{b}"] = Column(snr[:, j], unit=u.dimensionless_unscaled,
                                   description=f"flux / flux_err in {b}")
    zp = _zero_points(group, zero_points, bands, blend_index, valid)
    if zp is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = flux > 0
            mag = np.where(pos, zp - 2.5 * np.log10(np.where(pos, flux, 1.0)), np.nan)
            mag_err = np.where(pos, 2.5 / np.log(10) * flux_err / np.where(pos, flux, 1.0), np.nan)
        for j, b in enumerate(bands):
            table[f"mag_{b}"] = Column(mag[:, j], unit=u.mag, description=f"AB magnitude in {b}")
            table[f"mag_err_{b}"] = Column(mag_err[:, j], unit=u.mag, description=f"1-sigma error of mag_{b}")
        for j in range(len(bands) - 1):
            b1, b2 = bands[j], bands[j + 1]
            table[f"color_{b1}_{b2}"] = Column(mag[:, j] - mag[:, j + 1], unit=u.mag,
                                               description=f"mag_{b1} - mag_{b2}")
            table[f"color_err_{b1}_{b2}"] = Column(
                np.hypot(mag_err[:, j], mag_err[:, j + 1]), unit=u.mag,
                description=f"1-sigma error of color_{b1}_{b2} (band errors added in quadrature)")
    kind = str(group.attrs.get("source_kind", "freeform"))
    names = list(group.attrs.get("kind_codes", []))
    codes = np.asarray(row("kind_code"), np.int64) if "kind_code" in group else np.full(len(valid), -1)
    per_source = np.array([names[c] if 0 <= c < len(names) else kind for c in codes], dtype=object)
    table["kind"] = Column(np.where(valid, per_source, "none").astype(str),
                           description="model kind ('none' without a fit)")
    table["flags"] = Column(np.asarray(row("flags"), np.int64), unit=u.dimensionless_unscaled,
                            description="bitmask: " + "; ".join(f"{k}={v}" for k, v in FLAGS.items()))
    return table
