"""Source catalogs for ``scarlet-xr fit --sources``: sky positions with units, to frame pixels.

What is accepted, converted and refused is listed in ``docs/input_contract.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["read_catalog", "read_sky_positions", "DUPLICATE_PIXELS"]

logger = logging.getLogger(__name__)

RA_NAMES = ("ra", "ra_icrs", "raj2000", "ra_j2000", "alpha_j2000", "ra_deg", "radeg")
"""Column names (any case) read as right ascension (ICRS; FK5 J2000 is treated as ICRS)."""
DEC_NAMES = ("dec", "de_icrs", "dec_icrs", "dej2000", "decj2000", "dec_j2000", "delta_j2000", "dec_deg",
             "dedeg", "decdeg")
"""Column names (any case) read as declination."""
GLON_NAMES, GLAT_NAMES = ("l", "glon"), ("b", "glat")
"""Column names (any case) read as galactic longitude and latitude (converted to ICRS)."""
DUPLICATE_PIXELS = 0.5
"""Two catalog rows of the same given kind closer than this (model-frame pixels) are refused as duplicates."""

_MAX_ROWS_LISTED = 10
_BINARY_SUFFIXES = (
    ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".ecsv", ".hdf5", ".h5", ".parquet", ".vot", ".xml",
)
"""Catalog suffixes never re-read as plain text when astropy cannot identify them."""


def _mask(col) -> np.ndarray:
    """Per-row mask of a (possibly masked) column."""
    return np.broadcast_to(np.asarray(getattr(col, "mask", False), bool), (len(col),))


def _rows(idx) -> str:
    idx = [int(i) for i in np.atleast_1d(idx)]
    more = f" (and {len(idx) - _MAX_ROWS_LISTED} more)" if len(idx) > _MAX_ROWS_LISTED else ""
    return f"{idx[:_MAX_ROWS_LISTED]}{more}"


def _read_table(path):
    from astropy.table import Table

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such source catalog: {str(path)!r}")
    from astropy.io.registry import IORegistryError

    try:
        try:
            return Table.read(path)
        except IORegistryError:
            if "".join(path.suffixes).lower() in _BINARY_SUFFIXES:
                raise
            return Table.read(path, format="ascii")  # plain text: let astropy guess (csv, whitespace ...)
    except Exception as err:  # astropy raises many types for unreadable tables
        raise ValueError(
            f"cannot read the source catalog {str(path)!r} (expected ECSV, FITS table or CSV): {err}"
        ) from err


def _is_string(col) -> bool:
    return np.asarray(col).dtype.kind in "USO"


def _angle_column(col, name: str, *, hours_if_sexagesimal: bool) -> np.ndarray:
    """One coordinate column in degrees: from its unit, sexagesimal strings or plain numbers (deg)."""
    import astropy.units as u
    from astropy.coordinates import Angle

    mask = _mask(col)
    if _is_string(col):
        text = np.array([str(v).strip() for v in np.asarray(col)], dtype=object)
        out = np.full(len(text), np.nan)
        for i, v in enumerate(text):
            if mask[i] or v in ("", "--", "nan", "NaN"):
                continue
            try:
                out[i] = float(v)  # a number written as text: degrees
                continue
            except ValueError:
                pass
            try:
                hours = hours_if_sexagesimal and not any(c in v for c in "d°")
                out[i] = Angle(v, unit=u.hourangle if hours else u.deg).deg
            except (ValueError, u.UnitsError) as err:
                example = "10:00:28.6 or 10h00m28.6s" if hours_if_sexagesimal else "+02:12:21"
                raise ValueError(
                    f"catalog column {name!r}, row {i}: cannot parse {v!r} as an angle (expected degrees or "
                    f"sexagesimal such as {example}): {err}"
                ) from err
        if any(":" in v or "h" in v or " " in v for v in text):
            logger.info("catalog column %r: sexagesimal strings parsed (%s)", name,
                        "hours" if hours_if_sexagesimal else "degrees")
        return out
    unit = getattr(col, "unit", None)
    values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    if unit is None or str(unit) == "":
        return np.asarray(values, float)
    try:
        deg = (np.asarray(values, float) * u.Unit(unit)).to_value(u.deg)
    except (ValueError, TypeError, u.UnitsError) as err:
        raise ValueError(
            f"catalog column {name!r} has unit {str(unit)!r}; expected an angle (deg, rad, arcsec, hourangle)"
        ) from err
    if u.Unit(unit) != u.deg:
        logger.info("catalog column %r converted from %s to degrees", name, unit)
    return deg


def _find(cols: dict, names) -> str | None:
    return next((cols[n] for n in names if n in cols), None)


def read_sky_positions(table, *, source: str = "the source catalog"):
    """ICRS ``(ra, dec)`` in degrees of every row of a table.

    Parameters
    ----------
    table : astropy.table.Table
        With a ``SkyCoord`` column, or columns named as in :data:`RA_NAMES`
        and :data:`DEC_NAMES` (any case), or galactic :data:`GLON_NAMES` /
        :data:`GLAT_NAMES`. Column units (``deg``, ``rad``, ``arcsec``,
        ``hourangle`` ...) are honoured; columns without a unit are degrees;
        text columns may hold sexagesimal strings (right ascension in hours:
        ``10:00:28.6`` or ``10h00m28.6s``; declination in degrees: ``+02:12:21``).
    source : str
        How to name the table in messages.

    Returns
    -------
    ra, dec : numpy.ndarray
        Degrees, ICRS.

    Raises
    ------
    ValueError
        No rows, no position columns, unparsable values, non-angle units, missing (NaN or masked)
        positions or declinations outside [-90, 90] (naming the rows).
    """
    from astropy.coordinates import SkyCoord

    sky = [c for c in table.colnames if isinstance(table[c], SkyCoord)]
    cols = {c.lower(): c for c in table.colnames}
    has_eq = _find(cols, RA_NAMES) and _find(cols, DEC_NAMES)
    has_gal = _find(cols, GLON_NAMES) and _find(cols, GLAT_NAMES)
    if not (sky or has_eq or has_gal):
        raise ValueError(
            f"{source} must have columns 'ra' and 'dec' (or galactic 'l' and 'b', or a SkyCoord column); "
            f"got {table.colnames}"
        )
    if len(table) == 0:
        raise ValueError(
            f"{source} has no rows; expected at least one source (omit --sources to detect sources)"
        )
    if sky:
        c = table[sky[0]].icrs
        ra, dec = np.asarray(c.ra.deg, float), np.asarray(c.dec.deg, float)
    elif has_eq:
        rname, dname = _find(cols, RA_NAMES), _find(cols, DEC_NAMES)
        ra = _angle_column(table[rname], rname, hours_if_sexagesimal=True)
        dec = _angle_column(table[dname], dname, hours_if_sexagesimal=False)
    else:
        lname, bname = _find(cols, GLON_NAMES), _find(cols, GLAT_NAMES)
        lon = _angle_column(table[lname], lname, hours_if_sexagesimal=False)
        lat = _angle_column(table[bname], bname, hours_if_sexagesimal=False)
        ok = np.isfinite(lon) & np.isfinite(lat)
        ra, dec = np.full(len(lon), np.nan), np.full(len(lon), np.nan)
        c = SkyCoord(lon[ok], lat[ok], unit="deg", frame="galactic").icrs
        ra[ok], dec[ok] = c.ra.deg, c.dec.deg
        logger.info("%s: galactic (%s, %s) converted to ICRS", source, lname, bname)
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        raise ValueError(
            f"{source}: {int(bad.sum())} row(s) have no position (NaN or empty ra/dec): rows "
            f"{_rows(np.flatnonzero(bad))}; expected finite coordinates in every row"
        )
    off = np.abs(dec) > 90
    if off.any():
        raise ValueError(
            f"{source}: declination must lie in [-90, 90] deg; got {dec[off][0]:.6g} in rows "
            f"{_rows(np.flatnonzero(off))} (is the column in other units? give it a unit, e.g. rad)"
        )
    return ra % 360.0, dec


def _unit_hint(table, frame, ny, nx) -> str:
    """A hint when unitless positions land in the image if read as radians or hours."""
    cols = {c.lower(): c for c in table.colnames}
    rname, dname = _find(cols, RA_NAMES), _find(cols, DEC_NAMES)
    if rname is None or _is_string(table[rname]) or getattr(table[rname], "unit", None) not in (None, ""):
        return ""
    ra = np.ma.filled(np.ma.asarray(table[rname], dtype=float), np.nan)
    dec = np.ma.filled(np.ma.asarray(table[dname], dtype=float), np.nan)
    for what, r, d in (("radians", np.degrees(ra), np.degrees(dec)), ("hours (ra)", ra * 15.0, dec)):
        if not np.all(np.abs(d) <= 90):
            continue
        y, x = frame.sky_to_pixel(r % 360.0, d)
        if np.all((y > -0.5) & (y < ny - 0.5) & (x > -0.5) & (x < nx - 0.5)):
            return (f"; the positions fall inside the image if read as {what}: give the columns a unit "
                    "(e.g. 'unit: rad' in ECSV, TUNITn in FITS)")
    return ""


def read_catalog(path, frame):
    """Frame pixel centres ``(n, 2)`` and kinds from a catalog of sky positions.

    Parameters
    ----------
    path : str or path-like
        ECSV, FITS table or CSV with sky positions (see
        :func:`read_sky_positions`: ``ra``/``dec`` with units or sexagesimal,
        galactic ``l``/``b``, or a ``SkyCoord`` column), optional ``kind``.
    frame : Frame
        Model frame with a WCS (any celestial frame; the ICRS positions are
        converted into it).

    Returns
    -------
    centers : numpy.ndarray (n, 2)
        ``(y, x)`` in model-frame pixels.
    kinds : list of str or None

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unreadable file, zero rows, missing columns, unparsable or missing
        positions (naming the rows), a frame without WCS, a position outside
        the image, empty ``kind`` cells, or two rows of the same kind at the
        same position (closer than :data:`DUPLICATE_PIXELS` pixels).
    """
    table = _read_table(path)
    name = f"the source catalog {Path(path).name!r}"
    ra, dec = read_sky_positions(table, source=name)
    if frame.wcs is None:
        raise ValueError("a catalog with ra, dec needs observations with a WCS")
    y, x = frame.sky_to_pixel(ra, dec)
    y, x = np.asarray(y, float), np.asarray(x, float)
    ny, nx = frame.shape
    outside = ~((y > -0.5) & (y < ny - 0.5) & (x > -0.5) & (x < nx - 0.5))
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{int(outside.sum())} catalog position(s) lie outside the image; e.g. row {i} "
            f"(ra={ra[i]:.6f}, dec={dec[i]:.6f}) falls on pixel (y={y[i]:.1f}, x={x[i]:.1f}), "
            f"expected within y 0..{ny - 1}, x 0..{nx - 1}" + _unit_hint(table, frame, ny, nx)
        )
    cols = {c.lower(): c for c in table.colnames}
    kinds = None
    if "kind" in cols:
        col = table[cols["kind"]]
        mask = _mask(col)
        kinds = [str(k).strip() for k in np.asarray(col)]
        empty = [i for i, k in enumerate(kinds) if mask[i] or k in ("", "--")]
        if empty:
            raise ValueError(f"{name}: the 'kind' column is empty in rows {_rows(empty)}; expected a "
                             "source kind in every row (or drop the column to use --kind)")
    centers = np.stack([y, x], axis=1)
    _check_duplicates(centers, kinds, ra, dec, name)
    return centers, kinds


def _close_pairs(centers, radius: float) -> list:
    """Sorted pairs ``(i, j)``, ``i < j``, of points closer than ``radius`` (Euclidean; pixels).

    Catalogs of a blend or a cutout (up to a few thousand rows) are compared
    all against all in numpy; larger ones go through a k-d tree (importing
    :mod:`scipy.spatial` costs a tenth of a second on every command).
    """
    n = len(centers)
    if n > 2000:
        from scipy.spatial import cKDTree

        return sorted(cKDTree(centers).query_pairs(radius))
    d2 = ((centers[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    i, j = np.nonzero(np.triu(d2 <= radius**2, k=1))
    return sorted(zip(i.tolist(), j.tolist(), strict=True))


def _check_duplicates(centers, kinds, ra, dec, name) -> None:
    """Refuse two rows of the same given kind at one position; log other co-located rows.

    Without a ``kind`` column co-located rows are kept (a star on a galaxy is
    a real blend the default path models with two sources) and a warning
    names them.
    """
    if len(centers) < 2:
        return
    pairs = _close_pairs(np.asarray(centers, float), DUPLICATE_PIXELS)
    same = [(i, j) for i, j in pairs if kinds is not None and kinds[i].lower() == kinds[j].lower()]
    if same:
        i, j = same[0]
        sep = float(np.hypot(*(centers[i] - centers[j])))
        raise ValueError(
            f"{name}: {len(same)} pair(s) of rows of the same kind are at the same position (closer than "
            f"{DUPLICATE_PIXELS} pixel), e.g. rows {i} and {j} at ra={ra[i]:.6f}, dec={dec[i]:.6f} "
            f"({sep:.3f} pixel apart); expected one row per source (remove duplicates; co-located sources "
            "need different kinds, e.g. 'point' and 'sersic')"
        )
    for i, j in pairs:
        if kinds is None:
            logger.warning("%s: rows %d and %d are %.2f pixel apart; both are kept and fitted as separate "
                           "sources (a star on a galaxy?); remove one if they are duplicates", name, i, j,
                           float(np.hypot(*(centers[i] - centers[j]))))
        else:
            logger.info("%s: rows %d and %d share a position with kinds %r and %r (composite source)",
                        name, i, j, kinds[i], kinds[j])
