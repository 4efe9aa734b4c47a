"""Observations as xarray Datasets.

Convention (``BAND, Y, X = "band", "y", "x"``): a Dataset with

- ``data`` (band, y, x): the image,
- ``weight`` (band, y, x): inverse variance, 0 = masked,
- ``psf`` (band, psf_y, psf_x): the PSF per band (odd size, unit sum),
- coordinates ``band`` (names) and integer ``y``/``x`` pixel indices of the
  original full image (a cutout remembers its offset),
- attrs ``name`` and, when known, ``wcs_header`` (FITS header string of the
  WCS of the *original* image; :func:`observation_wcs` slices it to the
  cutout using ``y[0]``, ``x[0]``); the ``data`` variable carries the same
  header in its attrs so that the image alone (``ds["data"]``) keeps its WCS.

Slicing by band or pixel region keeps data, weight, PSF and WCS consistent;
a WCS whose pixel coordinates no longer form a unit-step grid (e.g. after a
reduction over ``y``) is reported as stale and never used.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..core import check_psf
from ..wcs import celestial_frame, is_icrs_like, normalize_epochs, shift_wcs

if TYPE_CHECKING:  # (astropy is imported where a WCS is used: `import scarlet_xr` stays light)
    from astropy.wcs import WCS

__all__ = [
    "BAND",
    "Y",
    "X",
    "make_observation",
    "observation_epoch",
    "check_observation",
    "observation_wcs",
    "shift_wcs",
]

logger = logging.getLogger(__name__)

BAND, Y, X = "band", "y", "x"


@functools.lru_cache(maxsize=64)
def _wcs_from_header(header: str) -> WCS:
    from astropy.io import fits
    from astropy.wcs import WCS

    return WCS(fits.Header.fromstring(header), relax=True)


def wcs_to_header_string(wcs: WCS) -> str:
    """Serialise the celestial part of a WCS to a FITS header string."""
    return wcs.celestial.to_header_string(relax=True)


def make_observation(
    data,
    *,
    psf,
    weights=None,
    variance=None,
    mask=None,
    bands=None,
    wcs: WCS | None = None,
    name: str = "observation",
    origin=(0, 0),
    noise_estimated: bool = False,
    noise_correlation=None,
    epoch=None,
) -> xr.Dataset:
    """Build an observation Dataset from arrays, validating everything eagerly.

    Parameters
    ----------
    data : array (band, y, x) or (y, x)
        The image.
    psf : array (band, h, w) or (h, w)
        PSF per band (odd sizes; normalised to unit sum here).
    weights, variance : array like data, optional
        Inverse variance or variance (give at most one). Default: weight 1.
    mask : bool array like data, optional
        True marks bad pixels (weight set to 0).
    bands : sequence of str, optional
        Band names; default ``"b0", "b1", ...``.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the *original* image (pixel ``(0, 0)`` = ``origin``).
    name : str
        Observation name (node name in results).
    origin : (int, int)
        Index of the first pixel in the original image.
    noise_estimated : bool
        Record that the weights were estimated from the image background.
    noise_correlation : array or "estimate", optional
        For resampled or coadded images (correlated noise): the
        autocovariance of the whitened noise ``sqrt(weight) * noise``, shape
        ``(band, kh, kw)`` or ``(kh, kw)`` with odd sizes, or ``"estimate"``
        to estimate a 7x7 kernel from the source-free pixels; the fit then
        uses the correlated likelihood (see
        :func:`~scarlet_xr.xr.with_noise_correlation`, ``docs/noise.md``).
    epoch : number, datetime64 or str, optional
        When the image was taken (e.g. MJD), stored as the scalar coordinate
        ``epoch``. Observations with epochs let variable sources
        (:class:`~scarlet_xr.core.LightCurve`) have a flux per epoch; give
        every observation of a scene an epoch, or none (``docs/time.md``).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    ValueError
        Shape mismatches, negative or zero variance/negative weights on
        unmasked pixels, band-count mismatch with the PSF, a non-celestial WCS,
        an all-masked image, or a bad PSF (see :func:`~scarlet_xr.core.check_psf`).

    Notes
    -----
    Non-finite data pixels are masked (weight 0) and counted in
    ``attrs["n_nonfinite_masked"]``; a warning is logged.
    """
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise ValueError(f"data must be a real-valued numeric array; got dtype {data.dtype}")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"data must have dims (band, y, x); got shape {data.shape}")
    nb = data.shape[0]
    if weights is not None and variance is not None:
        raise ValueError("give weights or variance, not both")
    # the stored planes are float32: build them directly (one copy each, no float64 temporaries)
    data = np.array(data, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3 or mask.shape[1:] != data.shape[1:] or mask.shape[0] not in (1, nb):
            raise ValueError(f"mask must match data shape {data.shape}; got {mask.shape}")
        mask = np.broadcast_to(mask.astype(bool, copy=False), data.shape)
    if variance is not None:
        variance = np.asarray(variance)
        if variance.ndim == 2:
            variance = variance[None]
        if variance.shape != data.shape:
            raise ValueError(f"variance must match data shape {data.shape}; got {variance.shape}")
        positive = variance > 0
        bad = ~positive
        if mask is not None:
            bad &= ~mask
        if np.any(bad & np.isfinite(data)):
            raise ValueError(
                f"variance must be > 0 on unmasked pixels; got {int(np.sum(bad))} pixels "
                f"with variance <= 0 or non-finite (mask them with mask=)"
            )
        del bad
        weights = np.zeros(data.shape, np.float32)
        with np.errstate(divide="ignore", over="ignore"):
            np.divide(1.0, variance, out=weights, where=positive, casting="unsafe")
    elif weights is not None:
        weights = np.asarray(weights)
        if weights.ndim == 2:
            weights = weights[None]
        if weights.shape != data.shape:
            raise ValueError(f"weights must match data shape {data.shape}; got {weights.shape}")
        weights = np.array(weights, dtype=np.float32)
        weights[~np.isfinite(weights)] = 0.0
        if np.any(weights < 0):
            raise ValueError(f"weights must be >= 0; got minimum {np.min(weights):.4g}")
    else:
        weights = np.ones(data.shape, np.float32)
    if mask is not None:
        weights[mask] = 0.0
    nonfinite = ~np.isfinite(data)
    n_bad = int(np.count_nonzero(nonfinite & (weights > 0)))
    if n_bad:
        logger.warning("masking %d non-finite data pixels (weight set to 0)", n_bad)
    weights[nonfinite] = 0.0
    data[nonfinite] = 0.0
    del nonfinite
    if not np.any(weights > 0):
        raise ValueError("all pixels are masked (every weight is 0); nothing to fit")
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim == 2:
        psf = np.broadcast_to(psf, (nb,) + psf.shape).copy()
    if psf.ndim != 3 or psf.shape[0] != nb:
        raise ValueError(
            f"PSF must have one image per band: expected ({nb}, h, w); got shape {psf.shape}"
        )
    psf = check_psf(psf, name="psf")
    if bands is None:
        bands = [f"b{i}" for i in range(nb)]
    bands = [str(b) for b in bands]
    if len(bands) != nb:
        raise ValueError(f"expected {nb} band names (one per image plane); got {len(bands)}")
    y0, x0 = int(origin[0]), int(origin[1])
    ny, nx = data.shape[1:]
    attrs = {"name": str(name), "n_nonfinite_masked": n_bad, "noise_estimated": int(noise_estimated)}
    if wcs is not None:
        if not wcs.has_celestial:
            raise ValueError("the WCS must be celestial (RA/Dec axes); got axes "
                             f"{list(wcs.wcs.ctype)}")
        sky = celestial_frame(wcs)
        attrs["sky_frame"] = str(sky.name)
        if not is_icrs_like(sky):
            logger.info(
                "%s: the WCS is in the %r frame; sky positions are converted to/from ICRS", name, sky.name
            )
        attrs["wcs_header"] = header = wcs_to_header_string(wcs)
    ds = xr.Dataset(
        {
            "data": ((BAND, Y, X), data),
            "weight": ((BAND, Y, X), weights),
            "psf": ((BAND, "psf_y", "psf_x"), psf),
        },
        coords={BAND: bands, Y: np.arange(y0, y0 + ny), X: np.arange(x0, x0 + nx)},
        attrs=attrs,
    )
    if "wcs_header" in attrs:
        # the image alone (``ds["data"]``) keeps its WCS too (DataArray accessor)
        ds["data"].attrs["wcs_header"] = header
    if epoch is not None:
        ds = ds.assign_coords(epoch=_checked_epoch(epoch, name))
    if noise_correlation is not None:
        from ._noise import with_noise_correlation

        ds = with_noise_correlation(ds, noise_correlation)
    return ds


def _checked_epoch(epoch, name):
    """The epoch as a 0-d array, or a ValueError naming the observation."""
    try:
        normalize_epochs([epoch])
    except ValueError as err:
        raise ValueError(f"observation {name!r}: bad epoch: {err}") from None
    return np.asarray(epoch)


def observation_epoch(ds):
    """The observation's epoch (its scalar ``epoch`` coordinate), or None.

    Parameters
    ----------
    ds : xarray.Dataset

    Returns
    -------
    float, numpy.datetime64, str or None
    """
    if "epoch" not in ds.coords:
        return None
    return normalize_epochs([ds.coords["epoch"].values])[0]


def check_observation(ds) -> xr.Dataset:
    """Validate an observation Dataset and return it; raise ``ValueError`` otherwise."""
    if isinstance(ds, xr.DataArray):
        raise TypeError(
            "an observation is a Dataset with 'data', 'weight' and 'psf' (see "
            "scarlet_xr.make_observation); got a DataArray"
        )
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset observation; got {type(ds).__name__}")
    for var in ("data", "weight", "psf"):
        if var not in ds:
            raise ValueError(f"observation is missing the variable {var!r}; has {list(ds.data_vars)}")
    if ds["data"].dims != (BAND, Y, X):
        raise ValueError(f"data must have dims ('band', 'y', 'x'); got {ds['data'].dims}")
    if ds["weight"].dims != (BAND, Y, X):
        raise ValueError(f"weight must have dims ('band', 'y', 'x'); got {ds['weight'].dims}")
    if "noise_correlation" in ds and ds["noise_correlation"].dims != (BAND, "corr_y", "corr_x"):
        raise ValueError(
            "noise_correlation must have dims ('band', 'corr_y', 'corr_x'); "
            f"got {ds['noise_correlation'].dims}"
        )
    if "epoch" in ds.coords:
        _checked_epoch(ds.coords["epoch"].values, ds.attrs.get("name", ""))
    if ds["psf"].dims[0] != BAND:
        raise ValueError(f"psf must have dims ('band', psf_y, psf_x); got {ds['psf'].dims}")
    for ax in (Y, X):
        c = np.asarray(ds[ax].values)
        if c.size > 1 and not np.all(np.diff(c) == 1):
            raise ValueError(
                f"coordinate {ax!r} must be consecutive integer pixel indices; the pixel grid "
                "was changed (e.g. by striding or coarsening), so the WCS is stale"
            )
    return ds


def observation_wcs(ds) -> WCS | None:
    """Return the WCS of the (possibly sliced) observation, or None.

    The stored header describes the original image; the result is shifted to
    the first pixel of this cutout (``y[0]``, ``x[0]``).

    Raises
    ------
    ValueError
        If the pixel grid is not a unit-step grid along y and x (stale WCS).
    """
    header = ds.attrs.get("wcs_header")
    if header is None:
        return None
    for ax in (Y, X):
        if ax not in ds.dims or ax not in ds.coords:
            raise ValueError(
                f"the WCS is stale: dimension {ax!r} is gone (was the array reduced over it?)"
            )
        c = np.asarray(ds[ax].values)
        if c.size > 1 and not np.all(np.diff(c) == 1):
            raise ValueError(
                f"the WCS is stale: coordinate {ax!r} is not a unit-step pixel grid"
            )
    w = _wcs_from_header(header)
    y0, x0 = int(ds[Y].values[0]), int(ds[X].values[0])
    return shift_wcs(w, y0, x0)


