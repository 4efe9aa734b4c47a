"""Renderers from the model frame into an observation's pixel grid.

Everything that depends only on frames and PSFs (difference-kernel FFTs,
band maps, crops) is computed once at construction; ``__call__`` does only
array work and is differentiable.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._device import to_device
from ._fft import fast_size
from ._parameter import default_complex
from ._psf import difference_kernel_fft

__all__ = ["AbstractRenderer", "ConvolutionRenderer"]


class AbstractRenderer(eqx.Module):
    """Maps a model cube (model bands, y, x) to an observation cube."""

    def __call__(self, model: jax.Array) -> jax.Array:
        """Return the observation-space model."""
        raise NotImplementedError


class ConvolutionRenderer(AbstractRenderer):
    """Same pixel grid as the model frame (up to an integer offset): select bands,
    convolve with the difference kernel in Fourier space, crop.

    Parameters
    ----------
    model_shape : (band, y, x)
        Shape of the model frame.
    obs_shape : (band, y, x)
        Shape of the observation.
    band_index : sequence of int
        For each observation band, its index in the model frame.
    obs_psf : array (obs band, h, w)
        Observation PSF per band.
    model_psf : array (h, w)
        Model-frame PSF.
    origin : (int, int)
        Position of the observation's pixel (0, 0) in model-frame pixels.
    """

    kernel_fft: jax.Array
    band_index: tuple[int, ...] = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)
    crop: tuple[int, int, int, int] = eqx.field(static=True)

    def __init__(self, model_shape, obs_shape, band_index, obs_psf, model_psf, origin=(0, 0)):
        _, hm, wm = model_shape
        nb, ho, wo = obs_shape
        obs_psf = np.asarray(obs_psf, float)
        if obs_psf.shape[0] != nb:
            raise ValueError(
                f"PSF has {obs_psf.shape[0]} bands but the observation has {nb}"
            )
        if len(band_index) != nb:
            raise ValueError(f"band_index needs {nb} entries; got {len(band_index)}")
        ph, pw = obs_psf.shape[-2:]
        oy, ox = int(origin[0]), int(origin[1])
        if oy < 0 or ox < 0 or oy + ho > hm or ox + wo > wm:
            raise ValueError(
                f"observation grid (origin {origin}, size {ho}x{wo}) must lie inside the "
                f"model frame ({hm}x{wm})"
            )
        # a kernel of half-width r wraps nothing into the frame on a grid of the frame plus r
        # (blend frames of 66 px with 41 px PSFs: 90 instead of 108 per axis; the rendered
        # cube differs by 1e-7 of its peak)
        self.fft_shape = (fast_size(max(hm + ph // 2, ph)), fast_size(max(wm + pw // 2, pw)))
        k = difference_kernel_fft(obs_psf, model_psf, self.fft_shape)
        self.kernel_fft = to_device(k, dtype=default_complex())
        self.band_index = tuple(int(i) for i in band_index)
        self.crop = (oy, oy + ho, ox, ox + wo)

    def __call__(self, model):
        """Select bands, convolve to the observation PSF and crop."""
        return self._render(jnp, model, self.kernel_fft).astype(model.dtype)

    def render_numpy(self, model) -> np.ndarray:
        """Numpy twin of :meth:`__call__` (float64, no compilation), for ``(..., band, y, x)``.

        The same code as :meth:`__call__` (one function, run with numpy instead of
        jax.numpy), for models rendered a few times outside the fit (initial
        spectra), so that no JAX program is compiled for them.
        """
        return self._render(np, np.asarray(model, float), np.asarray(self.kernel_fft))

    def _render(self, xp, model, kernel_fft):
        """Band selection, FFT convolution and crop with the array module ``xp`` (numpy or jax.numpy)."""
        if self.band_index != tuple(range(model.shape[-3])):
            model = model[..., list(self.band_index), :, :]
        out = xp.fft.irfft2(xp.fft.rfft2(model, s=self.fft_shape) * kernel_fft, s=self.fft_shape)
        y0, y1, x0, x1 = self.crop
        return out[..., y0:y1, x0:x1]
