"""SceneModel: a tuple of sources rendered into the model frame (pure JAX)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._fft import fast_size, kernel_to_origin
from ._source import Source

__all__ = ["SceneModel", "render_source"]


def _place(canvas, box, center, pad):
    """Add ``box`` (band, h, w) to ``canvas`` centred on the pixel nearest ``center``."""
    h, w = box.shape[-2:]
    iy = jnp.round(center[0]).astype(jnp.int32)
    ix = jnp.round(center[1]).astype(jnp.int32)
    start = (jnp.zeros((), jnp.int32), iy - h // 2 + pad, ix - w // 2 + pad)
    cur = jax.lax.dynamic_slice(canvas, start, box.shape)
    return jax.lax.dynamic_update_slice(canvas, cur + box, start)


def _render(sources, shape, pad, psf_fft, fft_shape):
    """Sum of ``sources`` on the frame; intrinsic profiles convolved with the model PSF."""
    b, hh, ww = shape
    dtype = sources[0].center.raw.dtype if sources else jnp.float32
    frame = jnp.zeros((b, hh + 2 * pad, ww + 2 * pad), dtype=dtype)
    intrinsic = None
    for src in sources:
        center = src.center.value
        offset = center - jnp.round(center)
        for comp in src.components:
            if comp.morphology.intrinsic and psf_fft is not None:
                if intrinsic is None:
                    intrinsic = jnp.zeros_like(frame)
                intrinsic = _place(intrinsic, comp(offset), center, pad)
            else:
                frame = _place(frame, comp(offset), center, pad)
    if intrinsic is not None:
        conv = jnp.fft.irfft2(jnp.fft.rfft2(intrinsic, s=fft_shape) * psf_fft, s=fft_shape)
        frame = frame + conv[:, : frame.shape[1], : frame.shape[2]].astype(dtype)
    return frame[:, pad : pad + hh, pad : pad + ww]


def render_source(source: Source, shape: tuple[int, int, int], pad: int, psf=None) -> jax.Array:
    """Render one source into a zero frame of ``shape`` (band, y, x).

    ``psf`` is the model-frame PSF applied to intrinsic profiles (optional).
    """
    return SceneModel([source], shape, psf=psf, pad=pad)()


class SceneModel(eqx.Module):
    """All sources of a scene and the model-frame shape.

    Calling it returns the model cube ``(band, y, x)`` in the model frame
    (convolved with the model PSF only).

    Parameters
    ----------
    sources : sequence of Source
    shape : (band, y, x)
        Model-frame shape.
    psf : array (h, w), optional
        Model-frame PSF; intrinsic profiles (Gaussian, Sersic) are convolved
        with it. Without it every morphology is taken to be in the frame already.
    pad : int, optional
        Border added while placing boxes (default: largest box + 2).
    """

    sources: tuple[Source, ...]
    psf_fft: jax.Array | None
    shape: tuple[int, int, int] = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, sources, shape, *, psf=None, pad: int | None = None):
        self.sources = tuple(sources)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"model shape must be (band, y, x); got {shape}")
        for i, s in enumerate(self.sources):
            if s.num_bands != self.shape[0]:
                raise ValueError(
                    f"source {i} has {s.num_bands} bands but the model frame has {self.shape[0]}"
                )
        boxes = [max(c.morphology.shape) for s in self.sources for c in s.components]
        self.pad = int(pad) if pad is not None else (max(boxes) if boxes else 1) + 2
        hp, wp = self.shape[1] + 2 * self.pad, self.shape[2] + 2 * self.pad
        if psf is None:
            self.psf_fft = None
            self.fft_shape = (hp, wp)
        else:
            psf = np.asarray(psf, float)
            if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
                raise ValueError(f"model PSF must be a 2-D odd-sized image; got shape {psf.shape}")
            self.fft_shape = (fast_size(hp + psf.shape[0]), fast_size(wp + psf.shape[1]))
            k = np.fft.rfft2(kernel_to_origin(psf / psf.sum(), self.fft_shape))
            self.psf_fft = jnp.asarray(k, dtype=jnp.result_type(jnp.asarray(0.0).dtype, jnp.complex64))

    def __call__(self) -> jax.Array:
        """Return the model cube (band, y, x)."""
        return _render(self.sources, self.shape, self.pad, self.psf_fft, self.fft_shape)

    def render_sources(self) -> jax.Array:
        """Return each source rendered alone, ``(source, band, y, x)``."""
        return jnp.stack(
            [_render([s], self.shape, self.pad, self.psf_fft, self.fft_shape) for s in self.sources]
        )

    def fluxes(self) -> jax.Array:
        """Total flux per source and band ``(source, band)``."""
        return jnp.stack([s.flux() for s in self.sources])
