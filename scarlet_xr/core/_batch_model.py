"""A scene model whose sources can be switched off, for batched fitting.

Batched fitting with ``jax.vmap`` needs every blend in a batch to have the
same pytree structure: the same number of sources with the same box shapes.
Blends with fewer sources are padded with placeholder sources whose
``active`` weight is 0; they render to nothing and receive zero gradients, so
the optimizer leaves them where they are.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._model import _place
from ._source import Source

__all__ = ["ActiveSceneModel"]


class ActiveSceneModel(eqx.Module):
    """Sources with a per-source ``active`` weight multiplying their model.

    Behaves like :class:`~scarlet_xr.core.SceneModel` (same rendering), except
    that source ``i`` contributes ``active[i]`` times its model. With all
    weights 1 it renders exactly the same cube as ``SceneModel``.

    Parameters
    ----------
    sources : sequence of Source
    shape : (band, y, x)
        Model-frame shape.
    active : array (source,), optional
        Weights in [0, 1]; default all 1. Not a fit parameter.

    Examples
    --------
    >>> import numpy as np
    >>> from scarlet_xr.core import ActiveSceneModel, GaussianMorphology, Source
    >>> src = [Source((10, 10), np.ones(2), GaussianMorphology(1.5)) for _ in range(2)]
    >>> m = ActiveSceneModel(src, (2, 21, 21), active=[1.0, 0.0])
    >>> round(float(m().sum()), 3)
    2.0
    """

    sources: tuple[Source, ...]
    active: jax.Array
    shape: tuple[int, int, int] = eqx.field(static=True)
    pad: int = eqx.field(static=True)

    def __init__(self, sources, shape, active=None):
        self.sources = tuple(sources)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"model shape must be (band, y, x); got {shape}")
        if not self.sources:
            raise ValueError("ActiveSceneModel needs at least one source")
        for i, s in enumerate(self.sources):
            if s.num_bands != self.shape[0]:
                raise ValueError(
                    f"source {i} has {s.num_bands} bands but the model frame has {self.shape[0]}"
                )
        n = len(self.sources)
        if active is None:
            active = np.ones(n)
        if isinstance(active, jax.core.Tracer):
            self.active = active
        else:
            active = np.asarray(active, dtype=float)
            if active.shape != (n,):
                raise ValueError(f"active must have shape ({n},) (one per source); got {active.shape}")
            if not np.all((active >= 0) & (active <= 1)):
                raise ValueError(f"active weights must lie in [0, 1]; got {active}")
            self.active = jnp.asarray(active, dtype=self.sources[0].center.raw.dtype)
        boxes = [max(c.morphology.shape) for s in self.sources for c in s.components]
        self.pad = max(boxes) + 2

    def __call__(self) -> jax.Array:
        """Return the model cube (band, y, x)."""
        b, hh, ww = self.shape
        p = self.pad
        canvas = jnp.zeros((b, hh + 2 * p, ww + 2 * p), dtype=self.sources[0].center.raw.dtype)
        for k, src in enumerate(self.sources):
            center = src.center.value
            offset = center - jnp.round(center)
            for comp in src.components:
                canvas = _place(canvas, self.active[k] * comp(offset), center, p)
        return canvas[:, p : p + hh, p : p + ww]

    def fluxes(self) -> jax.Array:
        """Total flux per source and band ``(source, band)`` (0 for inactive sources)."""
        return jnp.stack([self.active[k] * s.flux() for k, s in enumerate(self.sources)])
