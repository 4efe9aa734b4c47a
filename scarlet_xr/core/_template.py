"""A frozen component image that only moves: the morphology of :meth:`SceneModel.frozen`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._fft import fourier_shift
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
    across pixel boundaries. With ``moves=False`` (a fixed centre) the image
    is returned as it is, at no cost.
    """

    image: jax.Array
    offset0: jax.Array
    shape: tuple[int, int] = eqx.field(static=True)
    moves: bool = eqx.field(static=True, default=True)

    def __call__(self, offset):
        """The image moved from ``offset0`` to ``offset``."""
        if not self.moves:
            return self.image
        return fourier_shift(self.image, jnp.asarray(offset) - self.offset0)

    @property
    def kind(self) -> str:
        """``"template"``."""
        return "template"
