"""A frozen component image that only moves: the morphology of :meth:`SceneModel.frozen`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._morphology import AbstractMorphology

__all__: list[str] = []


class _TemplateMorphology(AbstractMorphology):
    """A fixed image in the model frame (model PSF included) moved by a Fourier phase ramp.

    ``image`` was rendered with its centre at sub-pixel offset ``offset0`` of
    the box's central pixel; ``__call__(offset)`` returns it moved to
    ``offset``. The box is placed on the pixel nearest the centre, so the
    phase ramp only moves it by less than a pixel and a margin of zeros
    around the image keeps the circular shift from wrapping. The shift is
    exact for band-limited images, so the model is smooth in the centre
    across pixel boundaries. ``image`` is stored as its ``rfft2`` when the
    centre moves (one inverse transform per call); with ``moves=False`` (a
    fixed centre) it is the image itself, returned at no cost.
    """

    image: jax.Array
    offset0: jax.Array
    shape: tuple[int, int] = eqx.field(static=True)
    moves: bool = eqx.field(static=True, default=True)

    def __call__(self, offset):
        """The image moved from ``offset0`` to ``offset``."""
        if not self.moves:
            return self.image
        # ``image`` holds the image's rfft2 (computed once): one inverse transform per call
        h, w = self.shape
        shift = jnp.asarray(offset) - self.offset0
        ky = jnp.fft.fftfreq(h)[:, None]
        kx = jnp.fft.rfftfreq(w)[None, :]
        phase = jnp.exp(-2j * jnp.pi * (ky * shift[0] + kx * shift[1]))
        out = jnp.fft.irfft2(self.image * phase.astype(self.image.dtype), s=(h, w))
        return out.astype(self.offset0.dtype)

    @property
    def kind(self) -> str:
        """``"template"``."""
        return "template"
