"""`Parameter`: a value, its constraint, an optional prior, a step scale."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import AbstractConstraint, Identity
from ._device import to_device

__all__ = ["Parameter", "is_parameter", "default_float", "default_complex"]


def default_float():
    """Return the floating dtype of models, data and renderers: ``float32``.

    A fixed choice, not JAX's global 64-bit flag: models built with the flag
    on or off are the same. ``float32`` is what accelerators compute fast;
    for a float64 computation ask for it where it is needed
    (:func:`scarlet_xr.infer.sample` ``precision="float64"`` casts the model
    and likelihoods inside the call).
    """
    return jnp.dtype(jnp.float32)


def default_complex():
    """Return the complex dtype that goes with :func:`default_float` (``complex64``)."""
    return jnp.dtype(jnp.complex64)


class Parameter(eqx.Module):
    """A model parameter stored in unconstrained form.

    Parameters
    ----------
    value : array_like
        Initial value in the constrained space.
    constraint : AbstractConstraint, optional
        Bijection from the unconstrained variable to the value. Default
        :class:`Identity`.
    prior : object, optional
        A numpyro distribution (anything with ``log_prob(value)``) or a
        callable/Equinox module returning a log-density of the value.
    fixed : bool, optional
        If True, fitting and sampling leave the parameter unchanged.
    step : float, optional
        Natural step of the parameter in the *unconstrained* space. Optimizers
        see the parameter in units of this step; the default Adam takes steps of
        about this size. Default 0.05.

    Raises
    ------
    ValueError
        If ``value`` violates ``constraint`` (message gives expected vs got).

    Examples
    --------
    >>> from scarlet_xr.core import Parameter, LogPositive
    >>> p = Parameter([1.0, 2.0], LogPositive(), step=0.05)
    >>> [round(float(v), 6) for v in p.value]
    [1.0, 2.0]
    """

    raw: jax.Array
    constraint: AbstractConstraint = eqx.field(static=True)
    prior: Any = None
    fixed: bool = eqx.field(static=True, default=False)
    step: float = eqx.field(static=True, default=0.05)

    def __init__(
        self,
        value,
        constraint: AbstractConstraint | None = None,
        *,
        prior: Any = None,
        fixed: bool = False,
        step: float | None = None,
    ):
        constraint = Identity() if constraint is None else constraint
        if not isinstance(constraint, AbstractConstraint):
            raise TypeError(
                f"constraint must be an AbstractConstraint; got {type(constraint).__name__}"
            )
        if isinstance(value, jax.core.Tracer):
            self.raw = constraint.inverse(value)
        else:
            arr = np.asarray(value, dtype=np.float64)
            msg = constraint.check(arr)
            if msg is not None:
                raise ValueError(f"invalid parameter value for {type(constraint).__name__}: {msg}")
            with np.errstate(divide="ignore"):
                raw = constraint.inverse(arr)
            self.raw = to_device(raw, dtype=default_float())
        self.constraint = constraint
        self.prior = prior
        self.fixed = bool(fixed)
        self.step = 0.05 if step is None else float(step)
        if not self.step > 0:
            raise ValueError(f"step must be > 0; got {step}")

    @property
    def value(self) -> jax.Array:
        """The constrained value."""
        return self.constraint.forward(self.raw)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the value (found abstractly: nothing is computed or compiled)."""
        return tuple(jax.eval_shape(self.constraint.forward, self.raw).shape)

    def log_prior(self) -> jax.Array:
        """Log prior density of the value (0 when there is no prior)."""
        if self.prior is None:
            return jnp.zeros((), self.raw.dtype)
        v = self.value
        if hasattr(self.prior, "log_prob"):
            return jnp.sum(self.prior.log_prob(v))
        return jnp.sum(self.prior(v))


def is_parameter(x) -> bool:
    """Return True for :class:`Parameter` instances (for ``is_leaf``)."""
    return isinstance(x, Parameter)
