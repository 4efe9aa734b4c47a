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
from ._fft import fast_size, kernel_to_origin
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

    The model it takes is either the frame's cube or the frame with a margin
    of the model PSF's half-width on every side (:attr:`margin`): light that
    the model PSF spreads just beyond the frame, which the wider observed PSF
    brings back onto it. :meth:`render_layers` takes the model's intrinsic
    light before its PSF and convolves it with the model PSF and the
    difference kernel in one Fourier transform (see
    :func:`~scarlet_xr.core.render_observations`).

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
    fused_kernel_fft: jax.Array
    band_index: tuple[int, ...] = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)
    crop: tuple[int, int, int, int] = eqx.field(static=True)
    frame_shape: tuple[int, int] = eqx.field(static=True)
    margin: tuple[int, int] = eqx.field(static=True)

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
        my, mx = (int(d) // 2 for d in np.shape(model_psf)[-2:])
        self.frame_shape = (int(hm), int(wm))
        self.margin = (my, mx)
        # a kernel of half-width r wraps nothing into the frame on a grid of the frame (with its
        # margins m) plus r; the fused convolution (model PSF and kernel, half-width m + r) of a
        # canvas with margins m needs the frame plus 2 m + r (a 63 x 73 px blend with a 41 px
        # observed PSF: 96 x 108, where the frame plus r alone was 90 x 96)
        self.fft_shape = (fast_size(max(hm + 2 * my + ph // 2, ph)),
                          fast_size(max(wm + 2 * mx + pw // 2, pw)))
        k = difference_kernel_fft(obs_psf, model_psf, self.fft_shape)
        self.kernel_fft = to_device(k, dtype=default_complex())
        # the model PSF and the difference kernel in one, for intrinsic light (render_layers)
        mp = np.asarray(model_psf, float)
        mp = np.fft.rfft2(kernel_to_origin(mp / mp.sum(), self.fft_shape))
        self.fused_kernel_fft = to_device(k * mp, dtype=default_complex())
        self.band_index = tuple(int(i) for i in band_index)
        self.crop = (oy, oy + ho, ox, ox + wo)

    def __call__(self, model):
        """Select bands, convolve to the observation PSF and crop.

        ``model`` is ``(band, y, x)`` on the frame, or on the frame with
        :attr:`margin` on every side.
        """
        return self._render(jnp, model, self.kernel_fft).astype(model.dtype)

    def render_numpy(self, model) -> np.ndarray:
        """Numpy twin of :meth:`__call__` (float64, no compilation), for ``(..., band, y, x)``.

        The same code as :meth:`__call__` (one function, run with numpy instead of
        jax.numpy), for models rendered a few times outside the fit (initial
        spectra), so that no JAX program is compiled for them.
        """
        return self._render(np, np.asarray(model, float), np.asarray(self.kernel_fft))

    def _offset(self, shape) -> tuple[int, int]:
        """Where the frame starts in a model of ``shape`` (..., y, x): 0 or the margin."""
        hm, wm = self.frame_shape
        my, mx = self.margin
        got = tuple(shape[-2:])
        if got == (hm + 2 * my, wm + 2 * mx):
            return my, mx
        if got == (hm, wm):
            return 0, 0
        raise ValueError(f"model images must be {hm}x{wm} (the frame) or {hm + 2 * my}x{wm + 2 * mx} "
                         f"(with the model PSF's margin); got {got[0]}x{got[1]}")

    def _select(self, model):
        if self.band_index != tuple(range(model.shape[-3])):
            return model[..., list(self.band_index), :, :]
        return model

    def _cropped(self, out, offset):
        y0, y1, x0, x1 = self.crop
        dy, dx = offset
        return out[..., dy + y0 : dy + y1, dx + x0 : dx + x1]

    def _render(self, xp, model, kernel_fft):
        """Band selection, FFT convolution and crop with the array module ``xp`` (numpy or jax.numpy)."""
        offset = self._offset(model.shape)
        model = self._select(model)
        out = xp.fft.irfft2(xp.fft.rfft2(model, s=self.fft_shape) * kernel_fft, s=self.fft_shape)
        return self._cropped(out, offset)

    def render_layers(self, light, intrinsic):
        """The observation's model from a scene's light before and after its PSF, in one transform.

        Parameters
        ----------
        light : array (band, y + 2 my, x + 2 mx) or None
            Light already in the model frame's resolution (e.g. pixel
            morphologies), on the frame with :attr:`margin`.
        intrinsic : array (band, y + 2 my, x + 2 mx) or None
            Intrinsic light (Sersic, Gaussian profiles) before the model PSF,
            on the same grid; convolved with the model PSF this renderer was
            built with (the scene's, in every library path) and the
            difference kernel in one product of precomputed transforms.

        Returns
        -------
        jax.Array (obs band, y, x)
            ``R(light + psf * intrinsic)``: the same as :meth:`__call__` of
            the convolved cube, computed with one inverse transform.
        """
        for name, a in (("light", light), ("intrinsic", intrinsic)):
            if a is not None and self._offset(a.shape) != self.margin:
                raise ValueError(f"{name} must be on the frame with the margin {self.margin}; got shape "
                                 f"{tuple(a.shape)}")
        spec = None
        dtype = None
        if intrinsic is not None:
            dtype = intrinsic.dtype
            spec = jnp.fft.rfft2(self._select(intrinsic), s=self.fft_shape) * self.fused_kernel_fft
        if light is not None:
            dtype = light.dtype
            lf = jnp.fft.rfft2(self._select(light), s=self.fft_shape) * self.kernel_fft
            spec = lf if spec is None else spec + lf
        if spec is None:
            raise ValueError("render_layers needs light or intrinsic light")
        out = jnp.fft.irfft2(spec, s=self.fft_shape)
        return self._cropped(out, self.margin).astype(dtype)
