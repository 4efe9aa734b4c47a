"""Gaussian log-likelihood with per-pixel inverse-variance weights."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._render import AbstractRenderer

__all__ = ["GaussianLikelihood"]


class GaussianLikelihood(eqx.Module):
    """``log L = -1/2 sum w (d - R(m))^2`` for one observation.

    Pixels with weight 0 are masked. Weights must be finite and >= 0; data
    must be finite where the weight is positive (non-finite data at weight 0
    is replaced by 0).

    Parameters
    ----------
    data : array (band, y, x)
    weights : array (band, y, x)
        Inverse variance; 0 masks a pixel.
    renderer : AbstractRenderer
        Maps the model cube into this observation.
    """

    data: jax.Array
    weights: jax.Array
    renderer: AbstractRenderer

    def __init__(self, data, weights, renderer):
        data = np.asarray(data, dtype=float)
        weights = np.asarray(weights, dtype=float)
        if data.ndim != 3:
            raise ValueError(f"data must have dims (band, y, x); got shape {data.shape}")
        if weights.shape != data.shape:
            raise ValueError(f"weights must match data shape {data.shape}; got {weights.shape}")
        if not np.all(np.isfinite(weights)):
            raise ValueError("weights must be finite (use 0 to mask pixels)")
        if np.any(weights < 0):
            raise ValueError(f"weights must be >= 0; got minimum {weights.min():.4g}")
        bad = ~np.isfinite(data)
        if np.any(bad & (weights > 0)):
            raise ValueError(
                f"data has {int(np.sum(bad & (weights > 0)))} non-finite pixels with positive weight"
            )
        dt = jnp.asarray(0.0).dtype
        self.data = jnp.asarray(np.where(bad, 0.0, data), dtype=dt)
        self.weights = jnp.asarray(weights, dtype=dt)
        self.renderer = renderer

    def residual(self, model_cube):
        """Return ``data - R(model)`` on the observation grid."""
        return self.data - self.renderer(model_cube)

    def chi2(self, model_cube):
        """Return ``sum w (d - R(m))^2``."""
        r = self.residual(model_cube)
        return jnp.sum(self.weights * r * r)

    def __call__(self, model_cube):
        """Return the log-likelihood (up to a constant)."""
        return -0.5 * self.chi2(model_cube)

    @property
    def num_valid(self) -> jax.Array:
        """Number of unmasked pixels."""
        return jnp.sum(self.weights > 0)
