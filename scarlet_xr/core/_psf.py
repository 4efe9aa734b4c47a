"""PSF helpers: the model frame's narrow PSF and difference kernels.

The model frame carries its own narrow Gaussian PSF so that the model is
band-limited; each observation's PSF is reached by a difference kernel that is
applied in Fourier space (``K = P_obs / P_model``, Wiener-regularised).
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import ArrayLike, Complex, Float, Real

from ._fft import kernel_to_origin

__all__ = ["gaussian_psf_image", "difference_kernel_fft", "check_psf"]


def _erf(x):
    # numpy has no erf; use math.erf vectorised (small arrays only)
    return np.vectorize(math.erf, otypes=[float])(x)


def gaussian_psf_image(sigma: float, size: int | None = None,
                       offset=(0.0, 0.0)) -> Float[np.ndarray, "size size"]:
    """Pixel-integrated, unit-sum circular Gaussian on an odd ``size`` grid.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels.
    size : int, optional
        Odd grid size; default ``2 * ceil(5 sigma) + 1``.
    offset : (float, float)
        Sub-pixel ``(dy, dx)`` of the centre relative to the central pixel.

    Returns
    -------
    numpy.ndarray (size, size)
    """
    if size is None:
        size = 2 * int(math.ceil(5 * sigma)) + 1
    if size % 2 != 1:
        raise ValueError(f"size must be odd; got {size}")
    c = size // 2
    edges = np.arange(size + 1) - c - 0.5
    s2 = math.sqrt(2.0) * sigma
    py = np.diff(0.5 * _erf((edges - offset[0]) / s2))
    px = np.diff(0.5 * _erf((edges - offset[1]) / s2))
    img = py[:, None] * px[None, :]
    return img / img.sum()


def check_psf(psf: Real[ArrayLike, "*band h w"], *, name: str = "psf", atol: float = 1e-3
              ) -> Float[np.ndarray, "*band h w"]:
    """Validate a PSF cube (band, h, w): finite, odd-sized, unit sum, centred.

    Returns the PSF as float64, normalised to unit sum per band. Raises
    ``ValueError`` naming the problem otherwise.
    """
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim == 2:
        psf = psf[None]
    if psf.ndim != 3:
        raise ValueError(f"{name} must have dims (band, y, x); got shape {psf.shape}")
    h, w = psf.shape[-2:]
    if h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"{name} must have odd size so that it has a central pixel; got {h}x{w}")
    if not np.all(np.isfinite(psf)):
        raise ValueError(f"{name} contains non-finite values")
    sums = psf.sum(axis=(-2, -1))
    if np.any(sums <= 0):
        raise ValueError(f"{name} must have a positive sum in every band; got sums {sums}")
    psf = psf / sums[:, None, None]
    yy, xx = np.mgrid[:h, :w]
    cy = (psf * yy).sum(axis=(-2, -1)) - h // 2
    cx = (psf * xx).sum(axis=(-2, -1)) - w // 2
    off = np.hypot(cy, cx)
    if np.any(off > 1.0):
        raise ValueError(
            f"{name} must be centred on its central pixel (centroid within 1 px); "
            f"got centroid offsets {np.round(off, 3)} px"
        )
    return psf


def difference_kernel_fft(obs_psf: Real[ArrayLike, "band h w"], model_psf: Real[ArrayLike, "mh mw"],
                          fft_shape,
                          eps: float = 1e-6) -> Complex[np.ndarray, "band fh fw"]:
    """Fourier transform of the kernel that turns the model PSF into ``obs_psf``.

    Parameters
    ----------
    obs_psf : array (band, h, w)
        Observation PSF per band (odd sizes, unit sum).
    model_psf : array (h', w')
        Model-frame PSF (odd size, unit sum).
    fft_shape : tuple of int
        Padded FFT grid.
    eps : float
        Wiener regularisation relative to ``max |P_model|^2``.

    Returns
    -------
    numpy.ndarray complex (band, fft_shape[0], fft_shape[1] // 2 + 1)
    """
    p = np.fft.rfft2(kernel_to_origin(np.asarray(obs_psf, float), fft_shape))
    m = np.fft.rfft2(kernel_to_origin(np.asarray(model_psf, float), fft_shape))
    m2 = np.abs(m) ** 2
    return p * np.conj(m) / (m2 + eps * m2.max())
