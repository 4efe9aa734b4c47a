"""Photometric zero points: from FITS header keywords or given by the user."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["zero_point_from_header", "resolve_zero_points"]


def zero_point_from_header(header) -> float | None:
    """AB zero point (``mag = zp - 2.5 log10(counts)``) from common FITS keywords, or None.

    Keywords, in order: ``MAGZERO``, ``MAGZPT``, ``ZEROPNT``, ``ZP``, ``PHOTZP``
    (a magnitude zero point); ``FLUXMAG0`` (counts of a magnitude-0 source,
    HSC/LSST: ``zp = 2.5 log10(FLUXMAG0)``); ``PHOTFLAM`` with ``PHOTPLAM``
    (HST: ``zp = -2.5 log10(PHOTFLAM) - 5 log10(PHOTPLAM) - 2.408``).

    Parameters
    ----------
    header : mapping
        A FITS header (or any mapping of keywords).

    Returns
    -------
    float or None
    """
    for key in ("MAGZERO", "MAGZPT", "ZEROPNT", "ZP", "PHOTZP"):
        if key in header:
            val = _number(header[key], key)
            if val is not None:
                return val
    if "FLUXMAG0" in header:
        f0 = _number(header["FLUXMAG0"], "FLUXMAG0")
        if f0 is not None and f0 > 0:
            return 2.5 * math.log10(f0)
    if "PHOTFLAM" in header and "PHOTPLAM" in header:
        flam, plam = _number(header["PHOTFLAM"], "PHOTFLAM"), _number(header["PHOTPLAM"], "PHOTPLAM")
        if flam and plam and flam > 0 and plam > 0:
            return -2.5 * math.log10(flam) - 5 * math.log10(plam) - 2.408
    return None


def _number(value, key):
    if isinstance(value, bool):
        raise ValueError(f"header keyword {key} must be a number; got {value!r}")
    try:
        val = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"header keyword {key} must be a number; got {value!r}") from err
    return val if math.isfinite(val) else None


def resolve_zero_points(zero_points, bands, observations=None):
    """Zero point per frame band, or None when none is known.

    Parameters
    ----------
    zero_points : None, float, sequence of float or mapping {band: float}
        Given zero points; None reads ``attrs['zero_point']`` of the
        observations (a number or one per observation band).
    bands : sequence of str
        Frame bands.
    observations : mapping of Datasets, optional

    Returns
    -------
    numpy.ndarray (band,) or None
        NaN for bands without a zero point.

    Raises
    ------
    TypeError, ValueError
        A zero point of the wrong type or length, or an unknown band.
    """
    bands = [str(b) for b in bands]
    if zero_points is None:
        zp = np.full(len(bands), np.nan)
        for ds in (observations or {}).values():
            val = ds.attrs.get("zero_point")
            if val is None:
                continue
            obs_bands = [str(b) for b in ds["band"].values]
            vals = np.broadcast_to(np.asarray(val, float), (len(obs_bands),))
            for b, v in zip(obs_bands, vals, strict=True):
                i = bands.index(b)
                if np.isnan(zp[i]):
                    zp[i] = v
        return None if np.all(np.isnan(zp)) else zp
    if isinstance(zero_points, Mapping):
        unknown = [b for b in zero_points if str(b) not in bands]
        if unknown:
            raise ValueError(f"zero_points names bands {unknown} that are not in the frame; bands are {bands}")
        return np.array([_as_zp(zero_points.get(b, np.nan), b) for b in bands])
    if isinstance(zero_points, (str, bytes)) or isinstance(zero_points, bool):
        raise TypeError(
            f"zero_points must be a number, one number per band or a dict {{band: number}}; "
            f"got {type(zero_points).__name__} {zero_points!r}"
        )
    arr = np.atleast_1d(np.asarray(zero_points, dtype=object))
    if arr.size == 1:
        return np.full(len(bands), _as_zp(arr[0], "all bands"))
    if arr.ndim != 1 or arr.size != len(bands):
        raise ValueError(f"zero_points needs 1 or {len(bands)} values (bands {bands}); got {arr.size}")
    return np.array([_as_zp(v, b) for v, b in zip(arr, bands, strict=True)])


def _as_zp(value, band):
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise TypeError(f"zero point for {band} must be a number (AB mag); got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"zero point for {band} must be a number (AB mag); got {value!r}") from err
