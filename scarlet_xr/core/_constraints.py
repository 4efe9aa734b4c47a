"""Constraints as bijections from an unconstrained real variable.

A constraint maps an unconstrained array ``u`` (what optimizers and samplers
see) to a constrained value ``v = forward(u)``.  ``inverse`` maps back and
``log_abs_det_jacobian`` gives ``log |dv/du|`` summed over elements, which the
sampler needs to turn a prior on ``v`` into a density on ``u``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _xp(v):
    """numpy for concrete numpy input (no JAX dispatch at set-up), jax.numpy otherwise."""
    return np if isinstance(v, (np.ndarray, np.generic, float, int)) else jnp

__all__ = [
    "AbstractConstraint",
    "Identity",
    "Positive",
    "LogPositive",
    "Interval",
    "Simplex",
]


class AbstractConstraint(eqx.Module):
    """Base class of all constraints (bijections from the real line).

    Subclasses implement :meth:`forward`, :meth:`inverse` and
    :meth:`log_abs_det_jacobian`, and :meth:`check` for eager validation of
    user values.
    """

    def forward(self, u):
        """Map an unconstrained array to the constrained space."""
        raise NotImplementedError

    def inverse(self, v):
        """Map a constrained value to the unconstrained space."""
        raise NotImplementedError

    def log_abs_det_jacobian(self, u):
        """Return ``sum(log|d forward(u) / du|)`` (a scalar)."""
        raise NotImplementedError

    def check(self, v) -> str | None:
        """Return a message if ``v`` violates the constraint, else ``None``."""
        return None


class Identity(AbstractConstraint):
    """No constraint: ``v = u``."""

    def forward(self, u):
        """Return ``u``."""
        return u

    def inverse(self, v):
        """Return ``v``."""
        return v

    def log_abs_det_jacobian(self, u):
        """Return 0."""
        return jnp.zeros((), dtype=u.dtype)

    def check(self, v):
        """Values must be finite."""
        if not np.all(np.isfinite(v)):
            return "values must be finite"
        return None


class Positive(AbstractConstraint):
    """Non-negative values through softplus: ``v = softplus(u)``.

    Softplus is linear for large values (steps are absolute there) and
    exponential near zero (values can approach 0 but never cross it), which
    suits pixel arrays of free-form morphologies.
    """

    def forward(self, u):
        """Return ``softplus(u)``."""
        return jax.nn.softplus(u)

    def inverse(self, v):
        """Return ``softplus^-1(v)``; zeros map to a large negative number."""
        xp = _xp(v)
        v = xp.maximum(v, 1e-30)
        return v + xp.log(-xp.expm1(-v))

    def log_abs_det_jacobian(self, u):
        """Return ``sum(log sigmoid(u))``."""
        return jnp.sum(jax.nn.log_sigmoid(u))

    def check(self, v):
        """Values must be finite and >= 0."""
        if not np.all(np.isfinite(v)):
            return "values must be finite"
        if np.any(np.asarray(v) < 0):
            return f"values must be >= 0; got minimum {np.min(v):.4g}"
        return None


class LogPositive(AbstractConstraint):
    """Strictly positive values through the exponential: ``v = exp(u)``.

    A fixed step in ``u`` is a fixed *relative* change of ``v``, the natural
    scale of amplitudes and sizes.
    """

    def forward(self, u):
        """Return ``exp(u)``."""
        return jnp.exp(u)

    def inverse(self, v):
        """Return ``log(v)``."""
        return _xp(v).log(v)

    def log_abs_det_jacobian(self, u):
        """Return ``sum(u)``."""
        return jnp.sum(u)

    def check(self, v):
        """Values must be finite and > 0."""
        if not np.all(np.isfinite(v)):
            return "values must be finite"
        if np.any(np.asarray(v) <= 0):
            return f"values must be > 0; got minimum {np.min(v):.4g}"
        return None


class Interval(AbstractConstraint):
    """Values in the open interval ``(lower, upper)`` through a scaled sigmoid."""

    lower: float = eqx.field(static=True)
    upper: float = eqx.field(static=True)

    def __check_init__(self):
        if not self.upper > self.lower:
            raise ValueError(
                f"Interval needs upper > lower; got lower={self.lower}, upper={self.upper}"
            )

    def forward(self, u):
        """Return ``lower + (upper - lower) * sigmoid(u)``."""
        return self.lower + (self.upper - self.lower) * jax.nn.sigmoid(u)

    def inverse(self, v):
        """Return ``logit((v - lower) / (upper - lower))``."""
        xp = _xp(v)
        t = (v - self.lower) / (self.upper - self.lower)
        return xp.log(t) - xp.log1p(-t)

    def log_abs_det_jacobian(self, u):
        """Return the summed log-derivative of the scaled sigmoid."""
        return jnp.sum(
            jnp.log(self.upper - self.lower) + jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u)
        )

    def check(self, v):
        """Values must lie strictly inside the interval."""
        v = np.asarray(v)
        if not np.all(np.isfinite(v)):
            return "values must be finite"
        if np.any(v <= self.lower) or np.any(v >= self.upper):
            return (
                f"values must lie in ({self.lower}, {self.upper}); "
                f"got range [{v.min():.4g}, {v.max():.4g}]"
            )
        return None


class Simplex(AbstractConstraint):
    """Non-negative values summing to one (last axis), via additive log-ratio.

    The unconstrained vector has one element fewer than the simplex.
    """

    def forward(self, u):
        """Return ``softmax([u, 0])``."""
        z = jnp.concatenate([u, jnp.zeros(u.shape[:-1] + (1,), u.dtype)], axis=-1)
        return jax.nn.softmax(z, axis=-1)

    def inverse(self, v):
        """Return ``log(v[:-1] / v[-1])``."""
        xp = _xp(v)
        return xp.log(v[..., :-1]) - xp.log(v[..., -1:])

    def log_abs_det_jacobian(self, u):
        """Return the log-determinant of the additive log-ratio map."""
        v = self.forward(u)
        return jnp.sum(jnp.log(v))

    def check(self, v):
        """Values must be > 0 and sum to 1 along the last axis."""
        v = np.asarray(v)
        if np.any(v <= 0):
            return "simplex values must be > 0"
        if not np.allclose(v.sum(-1), 1.0, rtol=1e-5):
            return f"simplex values must sum to 1; got {v.sum(-1)}"
        return None
