"""SceneModel: a tuple of sources rendered into the model frame (pure JAX)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._source import Source

__all__ = ["SceneModel", "render_source"]


def _place(canvas, box, center, pad):
    """Add ``box`` (band, h, w) to ``canvas`` centred on the pixel nearest ``center``."""
    h, w = box.shape[-2:]
    iy = jnp.round(center[0]).astype(jnp.int32)
    ix = jnp.round(center[1]).astype(jnp.int32)
    start = (0, iy - h // 2 + pad, ix - w // 2 + pad)
    cur = jax.lax.dynamic_slice(canvas, start, box.shape)
    return jax.lax.dynamic_update_slice(canvas, cur + box, start)


def render_source(source: Source, shape: tuple[int, int, int], pad: int) -> jax.Array:
    """Render one source into a zero frame of ``shape`` (band, y, x)."""
    b, hh, ww = shape
    canvas = jnp.zeros((b, hh + 2 * pad, ww + 2 * pad), dtype=source.center.raw.dtype)
    center = source.center.value
    offset = center - jnp.round(center)
    for comp in source.components:
        canvas = _place(canvas, comp(offset), center, pad)
    return canvas[:, pad : pad + hh, pad : pad + ww]


class SceneModel(eqx.Module):
    """All sources of a scene and the model-frame shape.

    Calling it returns the model cube ``(band, y, x)`` in the model frame
    (convolved with the model PSF only).

    Parameters
    ----------
    sources : sequence of Source
    shape : (band, y, x)
        Model-frame shape.
    """

    sources: tuple[Source, ...]
    shape: tuple[int, int, int] = eqx.field(static=True)
    pad: int = eqx.field(static=True)

    def __init__(self, sources, shape):
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
        self.pad = (max(boxes) if boxes else 1) + 2

    def __call__(self) -> jax.Array:
        """Return the model cube (band, y, x)."""
        b, hh, ww = self.shape
        p = self.pad
        dtype = self.sources[0].center.raw.dtype if self.sources else jnp.float32
        canvas = jnp.zeros((b, hh + 2 * p, ww + 2 * p), dtype=dtype)
        for src in self.sources:
            center = src.center.value
            offset = center - jnp.round(center)
            for comp in src.components:
                canvas = _place(canvas, comp(offset), center, p)
        return canvas[:, p : p + hh, p : p + ww]

    def render_sources(self) -> jax.Array:
        """Return each source rendered alone, ``(source, band, y, x)``."""
        return jnp.stack([render_source(s, self.shape, self.pad) for s in self.sources])

    def fluxes(self) -> jax.Array:
        """Total flux per source and band ``(source, band)``."""
        return jnp.stack([s.flux() for s in self.sources])
