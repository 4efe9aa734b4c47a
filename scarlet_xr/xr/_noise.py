"""Correlated noise of an observation: its kernel, given or estimated, and what it does to flux errors.

An observation whose pixels have correlated noise (a resampled, drizzled or
coadded image) carries the variable ``noise_correlation`` with dims
``(band, corr_y, corr_x)``: the autocovariance ``xi(dy, dx)`` of the
*whitened* noise ``sqrt(weight) * noise`` (odd sizes, lag 0 at the centre).
:func:`~scarlet_xr.xr.likelihood_for` then builds a
:class:`~scarlet_xr.core.CorrelatedGaussianLikelihood` (chi2 in Fourier space),
and :func:`flux_variance_factor` corrects the flux errors of the
white-weighted linear flux solve. See ``docs/noise.md``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..core import noise_power_spectrum
from ._observation import BAND, check_observation

__all__ = ["NOISE_CORRELATION", "estimate_noise_correlation", "with_noise_correlation",
           "flux_variance_factor", "flux_variance_terms",
           "flux_variance_ratio"]

NOISE_CORRELATION = "noise_correlation"
"""Name of the observation variable holding the kernel (dims ``band, corr_y, corr_x``)."""


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


def estimate_noise_correlation(ds: xr.Dataset, *, size: int = 7, clip: float = 4.0,
                               residual=None) -> np.ndarray:
    """Estimate the autocovariance of the whitened noise from source-free pixels.

    Per band: ``z = sqrt(w) (d - median)`` (or of ``residual``); pixels with
    ``|z| > clip`` (sigma-clipped, iterated), their neighbours within the
    kernel half-size (so source wings are cut too) and masked pixels are
    excluded; then ``xi(lag) = sum z(p) z(p + lag) / (number of pairs)`` over
    pairs of kept pixels, computed with zero-padded FFTs.

    Parameters
    ----------
    ds : xarray.Dataset
        An observation (``data``, ``weight``).
    size : int
        Kernel size (odd, >= 1); 7 suits resampling and coadd kernels.
    clip : float
        Clipping threshold in noise units.
    residual : array (band, y, x), optional
        Use this instead of the data (e.g. ``data - model`` after a fit).

    Returns
    -------
    numpy.ndarray (band, size, size)

    Raises
    ------
    ValueError
        If ``size`` is not odd and positive or larger than the image, or a
        band has fewer than ``20 size^2`` source-free pixels.
    """
    check_observation(ds)
    size = int(size)
    data = np.asarray(ds["data"].values if residual is None else residual, float)
    w = np.asarray(ds["weight"].values, float)
    if data.shape != w.shape:
        raise ValueError(f"residual must have the data's shape {w.shape}; got {data.shape}")
    if size < 1 or size % 2 == 0 or size > min(data.shape[1:]):
        raise ValueError(f"kernel size must be odd, >= 1 and <= the image size; got {size}")
    h = size // 2
    ny, nx = data.shape[1:]
    out = np.zeros((data.shape[0], size, size))
    for b in range(data.shape[0]):
        keep = w[b] > 0
        z = np.where(keep, np.sqrt(w[b]) * data[b], 0.0)
        for _ in range(5):
            med = np.median(z[keep])
            sig = 1.4826 * np.median(np.abs(z[keep] - med))
            new = (w[b] > 0) & ~_dilate(np.abs(z - med) > clip * max(sig, 1e-30), h)
            if np.array_equal(new, keep):
                break
            keep = new
        if keep.sum() < 20 * size * size:
            raise ValueError(
                f"band {b}: only {int(keep.sum())} source-free pixels to estimate a {size}x{size} noise "
                "correlation kernel; give the kernel explicitly"
            )
        z = np.where(keep, z - np.mean(z[keep]), 0.0)
        m = keep.astype(float)
        shape = (2 * ny, 2 * nx)
        zk, mk = np.fft.rfft2(z, shape), np.fft.rfft2(m, shape)
        num = np.fft.irfft2(np.abs(zk) ** 2, shape)
        den = np.fft.irfft2(np.abs(mk) ** 2, shape)
        num = np.roll(num, (h, h), axis=(0, 1))[:size, :size]
        den = np.roll(den, (h, h), axis=(0, 1))[:size, :size]
        xi = num / np.maximum(np.round(den), 1.0)
        out[b] = 0.5 * (xi + xi[::-1, ::-1])
    return out


def with_noise_correlation(ds: xr.Dataset, kernel="estimate", *, size: int = 7) -> xr.Dataset:
    """Return the observation with a noise correlation kernel (used by the fit automatically).

    Parameters
    ----------
    ds : xarray.Dataset
        An observation.
    kernel : "estimate" or array (band, kh, kw) or (kh, kw)
        The autocovariance of the whitened noise ``sqrt(weight) * noise``
        (odd sizes, lag 0 at the centre; one for all bands if 2-D), or
        ``"estimate"`` for :func:`estimate_noise_correlation` from the
        source-free pixels.
    size : int
        Kernel size when estimating.

    Returns
    -------
    xarray.Dataset
        A copy with the variable ``noise_correlation`` (band, corr_y, corr_x).

    Raises
    ------
    ValueError
        A kernel of the wrong shape (not odd, more bands than the image,
        larger than the image), not finite or without a positive centre.

    Examples
    --------
    >>> import numpy as np
    >>> from scarlet_xr.xr import make_observation
    >>> rng = np.random.default_rng(0)
    >>> obs = make_observation(rng.normal(size=(1, 64, 64)), psf=np.ones((1, 3, 3)))
    >>> k = with_noise_correlation(obs)["noise_correlation"]
    >>> k.dims, bool(abs(float(k[0, 3, 3]) - 1) < 0.1)
    (('band', 'corr_y', 'corr_x'), True)
    """
    check_observation(ds)
    nb = ds.sizes[BAND]
    if isinstance(kernel, str):
        if kernel != "estimate":
            raise ValueError(f"kernel must be an array or 'estimate'; got {kernel!r}")
        k = estimate_noise_correlation(ds, size=size)
    else:
        k = np.asarray(kernel, float)
        if k.ndim == 2:
            k = np.broadcast_to(k, (nb, *k.shape)).copy()
        if k.ndim != 3 or k.shape[0] != nb:
            raise ValueError(
                f"noise correlation kernel must have shape ({nb}, kh, kw) or (kh, kw); got {k.shape}"
            )
    noise_power_spectrum(k, ds["data"].shape[1:])  # validates shape, finiteness, centre
    out = ds.copy()
    out[NOISE_CORRELATION] = ((BAND, "corr_y", "corr_x"), k.astype(np.float64))
    out[NOISE_CORRELATION].attrs["description"] = (
        "autocovariance of the whitened noise sqrt(weight)*noise; lag 0 at the centre"
    )
    return out


def _convolve_same(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``kernel * img`` on ``img``'s grid (zero outside), direct sum over the small kernel."""
    kh, kw = kernel.shape
    hy, hx = kh // 2, kw // 2
    pad = np.pad(img, ((hy, hy), (hx, hx)))
    out = np.zeros_like(img)
    for i in range(kh):
        for j in range(kw):
            if kernel[i, j] != 0:
                out += kernel[i, j] * pad[i:i + img.shape[0], j:j + img.shape[1]]
    return out


def flux_variance_factor(observed, datasets, num_sources: int, num_bands: int) -> np.ndarray:
    """Factor by which correlated noise multiplies the variance of white-weighted fluxes.

    The linear flux solve weights pixels by ``w`` alone (ordinary least
    squares in the whitened pixels). Its variance is then the sandwich
    ``(t^T W t)^-1 (z^T Xi z) (t^T W t)^-1`` with ``z = sqrt(w) t`` the
    whitened template and ``Xi`` the noise covariance (convolution with the
    kernel), i.e. the white Fisher variance times
    ``(z^T Xi z) / (z^T z)``. This returns that factor per source and band
    (combined over observations of a band in proportion to their Fisher
    information); 1 for observations without ``noise_correlation``.
    Cross-terms between blended sources are not included.

    Parameters
    ----------
    observed : list of (templates, data, weight, band_index)
        Per observation, the unit flux templates (``templates[k] = (y0, x0,
        array (obs band, h, w))`` or None for source ``k < num_sources``), as
        built by :func:`scarlet_xr.scene.measure_scene`.
    datasets : list of xarray.Dataset
        The observations, in the same order.
    num_sources, num_bands : int

    Returns
    -------
    numpy.ndarray (source, band)
    """
    info = np.zeros((num_sources, num_bands))
    inflated = np.zeros((num_sources, num_bands))
    for (templates, _, w, band_index), ds in zip(observed, datasets, strict=True):
        one_info, one_inflated = flux_variance_terms(templates, w, band_index, ds, num_sources, num_bands)
        info += one_info
        inflated += one_inflated
    return flux_variance_ratio(info, inflated)


def flux_variance_ratio(white, correlated) -> np.ndarray:
    """The factor of :func:`flux_variance_factor` from summed :func:`flux_variance_terms`.

    Parameters
    ----------
    white, correlated : numpy.ndarray (source, band)
        The terms summed over observations.

    Returns
    -------
    numpy.ndarray (source, band)
        ``correlated / white``; 1 where ``white`` is 0 (no information).
    """
    white = np.asarray(white, float)
    return np.where(white > 0, correlated / np.where(white > 0, white, 1.0), 1.0)


def flux_variance_terms(templates, weight, band_index, dataset, num_sources: int, num_bands: int):
    """One observation's share of :func:`flux_variance_factor`: ``(white, correlated)`` sums.

    The factor is ``sum(correlated) / sum(white)`` over the observations (1 where the
    white sum is 0), so a caller can add each observation's terms and let its templates go.

    Parameters
    ----------
    templates : sequence or dict
        Unit flux templates of the observation (see :func:`flux_variance_factor`).
    weight : numpy.ndarray (obs band, y, x)
    band_index : sequence of int
        Frame band of each observation band.
    dataset : xarray.Dataset
        The observation (its ``noise_correlation`` kernel, if any).
    num_sources, num_bands : int

    Returns
    -------
    white, correlated : numpy.ndarray (source, band)
        ``z^T z`` and ``z^T Xi z`` of each whitened template ``z``.
    """
    info = np.zeros((num_sources, num_bands))
    inflated = np.zeros((num_sources, num_bands))
    kernel = dataset[NOISE_CORRELATION].values if NOISE_CORRELATION in dataset else None
    for k in range(num_sources):
        patch = templates.get(k) if isinstance(templates, dict) else templates[k]
        if patch is None:
            continue
        y0, x0, vals = patch
        for j, b in enumerate(band_index):
            t = np.asarray(vals[j], float)
            ww = np.asarray(weight[j, y0:y0 + t.shape[0], x0:x0 + t.shape[1]], float)
            z = np.sqrt(ww) * t
            zz = float(np.sum(z * z))
            if zz <= 0:
                continue
            info[k, b] += zz
            if kernel is not None:
                zz = float(np.sum(z * _convolve_same(z, kernel[j])))
            inflated[k, b] += zz
    return info, inflated
