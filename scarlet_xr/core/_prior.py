"""Differentiable priors as Equinox modules: log-densities and score models.

A :class:`~scarlet_xr.core.Parameter` accepts as ``prior`` anything with a
``log_prob(value)`` method (a numpyro distribution, or an
:class:`AbstractPrior`) or a plain callable returning a log-density. The fit
minimises ``-log L - sum(log prior)`` and the sampler adds ``log prior`` to
its potential, so a prior only has to be differentiable in JAX.

Score models (networks trained to return ``grad log p`` rather than
``log p``) enter through :class:`ScorePrior`: its ``log_prob`` returns a
surrogate value whose gradient *is* the score,
``value + sum(stop_gradient(score) * (x - stop_gradient(x)))``. The second
term is zero in value and has gradient ``score``, so optimizers and
gradient-based samplers see exactly the learned score, and no gradient is
ever propagated into the network (one forward pass per evaluation).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._parameter import default_float

__all__ = ["AbstractPrior", "FlatPrior", "NormalPrior", "ScorePrior", "score_surrogate",
           "score_line_integral"]


def score_surrogate(x: Float[Array, "*shape"], score: Float[Array, "*shape"], value=None) -> Float[Array, ""]:
    """Scalar whose value is ``value`` (default 0) and whose gradient in ``x`` is ``score``.

    Parameters
    ----------
    x : array
        The point where the score was evaluated.
    score : array
        ``grad log p(x)``, same shape as ``x`` (gradients are stopped through it).
    value : scalar, optional
        The log-density value to report (gradients are stopped through it).

    Returns
    -------
    jax.Array
        A scalar.

    Raises
    ------
    ValueError
        If ``score`` and ``x`` differ in shape.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.array([1.0, 2.0])
    >>> jax.grad(lambda x: score_surrogate(x, -x))(x).tolist()
    [-1.0, -2.0]
    """
    x = jnp.asarray(x)
    score = jnp.asarray(score)
    if score.shape != x.shape:
        raise ValueError(f"score must have the shape of x {x.shape}; got {score.shape}")
    v = jnp.zeros((), x.dtype) if value is None else jax.lax.stop_gradient(jnp.asarray(value, x.dtype))
    return v + jnp.sum(jax.lax.stop_gradient(score) * (x - jax.lax.stop_gradient(x)))


def score_line_integral(score_fn: Callable, x: jax.Array, x0: jax.Array, order: int = 2) -> jax.Array:
    """Log-density difference ``log p(x) - log p(x0)`` from a score, by a line integral.

    ``int_0^1 score(x0 + t (x - x0)) . (x - x0) dt`` with ``order``-point
    Gauss-Legendre quadrature (exact when the score is a polynomial of degree
    ``<= 2 order - 1`` along the segment; a linear score, i.e. a Gaussian
    density, is exact for any order). Differentiating this value with JAX
    gives a gradient that equals ``score(x)`` wherever the score field is
    conservative, and is in any case the exact gradient of the returned
    value, so a Hamiltonian sampler sees a consistent potential.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(v)`` returns ``grad log p(v)`` with the shape of ``v``.
    x : array
        Evaluation point.
    x0 : array
        Reference point (same shape), where the returned value is 0.
    order : int
        Number of quadrature nodes (>= 1).

    Returns
    -------
    jax.Array
        A scalar.

    Raises
    ------
    ValueError
        If ``x`` and ``x0`` differ in shape or ``order < 1``.

    Examples
    --------
    A standard normal: ``log p(x) - log p(0) = -|x|^2 / 2``.

    >>> import jax.numpy as jnp
    >>> float(score_line_integral(lambda v: -v, jnp.array([1.0, 2.0]), jnp.zeros(2)))
    -2.5
    """
    x = jnp.asarray(x)
    x0 = jnp.asarray(x0, x.dtype)
    if x.shape != x0.shape:
        raise ValueError(f"x and x0 must have the same shape; got {x.shape} and {x0.shape}")
    if int(order) < 1:
        raise ValueError(f"order must be >= 1; got {order}")
    nodes, weights = np.polynomial.legendre.leggauss(int(order))
    t = jnp.asarray((nodes + 1.0) / 2.0, x.dtype)
    w = jnp.asarray(weights / 2.0, x.dtype)
    d = x - x0
    points = x0[None] + t.reshape((-1,) + (1,) * x.ndim) * d[None]
    scores = jax.vmap(score_fn)(points)
    return jnp.sum(w * jnp.sum((scores * d[None]).reshape(len(weights), -1), axis=1))


class AbstractPrior(eqx.Module):
    """Base class of differentiable priors: implement ``log_prob(x) -> scalar``.

    A prior is an Equinox module, so it can carry arrays (e.g. network
    weights); these are never fitted or sampled, only the parameter value is.
    ``log_prob`` may return a scalar or an array (it is summed). Calling the
    prior is the same as ``log_prob``; ``score`` is ``grad log_prob``.

    Examples
    --------
    A custom prior: a Gaussian smoothness penalty on an image, attached to a
    parameter and seen by the fit through ``Parameter.log_prior``.

    >>> import jax, jax.numpy as jnp
    >>> from scarlet_xr.core import AbstractPrior, Parameter
    >>> class Smoothness(AbstractPrior):
    ...     strength: float
    ...     def log_prob(self, x):
    ...         dy = jnp.diff(x, axis=0)
    ...         dx = jnp.diff(x, axis=1)
    ...         return -0.5 * self.strength * (jnp.sum(dy**2) + jnp.sum(dx**2))
    >>> p = Parameter(jnp.array([[0.0, 1.0], [0.0, 0.0]]), prior=Smoothness(2.0))
    >>> float(p.log_prior())
    -2.0
    >>> jax.grad(lambda v: Smoothness(2.0).log_prob(v))(p.value).tolist()
    [[2.0, -4.0], [0.0, 2.0]]
    """

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Return the log prior density of ``x`` (up to a constant)."""
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x)

    def score(self, x: jax.Array) -> jax.Array:
        """Return ``grad log_prob(x)`` (same shape as ``x``)."""
        return jax.grad(lambda v: jnp.sum(self.log_prob(v)))(jnp.asarray(x))

    def for_sampling(self, x: jax.Array) -> AbstractPrior:
        """Return the prior a sampler should use near ``x`` (default: ``self``).

        Priors whose ``log_prob`` is only a surrogate (a value inconsistent
        with its gradient, as for score models) return here a version with
        a consistent log-density, e.g. anchored at ``x``;
        :func:`scarlet_xr.infer.sample` calls this with the starting value of
        each parameter before sampling.
        """
        return self


class ScorePrior(AbstractPrior):
    """A prior given by its score ``grad log p(x)`` (e.g. a trained network).

    Parameters
    ----------
    score_fn : callable or Equinox module
        ``score_fn(x)`` returns ``grad log p(x)`` with the shape of ``x``.
    value_fn : callable, optional
        ``value_fn(x)`` returns a log-density value to report (for loss
        curves and comparisons); default 0. Its gradient is ignored: the
        gradient of :meth:`log_prob` is always ``score_fn(x)``.
    reference : array, optional
        When given, :meth:`log_prob` is instead the exact potential
        :func:`score_line_integral` from ``reference`` (value and gradient
        consistent; the gradient is taken through ``score_fn``, which must
        then be differentiable). :meth:`for_sampling` sets it.
    order : int
        Quadrature nodes of the line integral.

    Notes
    -----
    Without ``reference`` the value is a surrogate (constant with
    ``value_fn=None``): right for optimisation, which needs only the
    gradient, but a Hamiltonian sampler needs a value consistent with the
    gradient; :func:`scarlet_xr.infer.sample` therefore switches to the
    line-integral form through :meth:`for_sampling`.

    Examples
    --------
    A standard normal given by its score ``-x``:

    >>> import jax, jax.numpy as jnp
    >>> prior = ScorePrior(lambda x: -x, value_fn=lambda x: -0.5 * jnp.sum(x**2))
    >>> x = jnp.array([0.5, -1.0])
    >>> float(prior.log_prob(x)), jax.grad(prior.log_prob)(x).tolist()
    (-0.625, [-0.5, 1.0])
    """

    score_fn: Callable
    value_fn: Callable | None = None
    reference: jax.Array | None = None
    order: int = eqx.field(static=True, default=2)

    def log_prob(self, x):
        """Log density: surrogate with gradient ``score_fn(x)``, or the line integral from ``reference``."""
        x = jnp.asarray(x)
        if self.reference is not None:
            return score_line_integral(self.score_fn, x, jax.lax.stop_gradient(self.reference), self.order)
        value = None if self.value_fn is None else self.value_fn(x)
        return score_surrogate(x, self.score_fn(x), value)

    def for_sampling(self, x):
        """Return this prior with an exact potential anchored at ``x`` (see :func:`score_line_integral`)."""
        ref = jnp.asarray(jax.lax.stop_gradient(x))
        return eqx.tree_at(lambda p: p.reference, self, ref, is_leaf=lambda v: v is None)

    def score(self, x):
        """Return ``score_fn(x)``."""
        return self.score_fn(jnp.asarray(x))


class NormalPrior(AbstractPrior):
    """Independent normal prior ``N(mean, sigma^2)`` per element, optionally walled.

    Used, e.g., to keep a source centre near its catalog position.

    Parameters
    ----------
    mean, sigma : array_like
        Broadcastable to the parameter's shape; ``sigma > 0``.
    limit : float, optional
        Distance from ``mean`` beyond which a steep wall ``1e6 (|x - mean| / limit)^16``
        keeps the value, whatever the pull of the data (a bound that, unlike
        an interval constraint, leaves parameters of different sources stackable).
    """

    mean: jax.Array
    sigma: jax.Array
    limit: jax.Array | None

    def __init__(self, mean, sigma, limit=None):
        dtype = default_float()
        self.mean = jnp.asarray(mean, dtype=dtype)
        self.sigma = jnp.asarray(sigma, dtype=dtype)
        self.limit = None if limit is None else jnp.asarray(limit, dtype=dtype)

    def log_prob(self, x):
        """Return ``-0.5 ((x - mean) / sigma)^2`` (minus the wall) summed, up to a constant."""
        z = (x - self.mean) / self.sigma
        out = -0.5 * jnp.sum(z**2)
        if self.limit is not None:
            out = out - 1e6 * jnp.sum(((x - self.mean) / self.limit) ** 16)
        return out


class FlatPrior(AbstractPrior):
    """A flat (improper) prior: ``log_prob = 0`` for every value.

    For parameters the likelihood alone constrains, such as amplitudes that
    enter the model linearly (a :class:`~scarlet_xr.core.LightCurve`, which
    uses it by default): the posterior is then proper, and a sampler does not
    put the default normal prior of unbounded parameters on them (see
    :mod:`scarlet_xr.infer`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(FlatPrior().log_prob(jnp.array([1.0, -3.0])))
    0.0
    """

    def log_prob(self, x):
        """Return 0."""
        return jnp.zeros((), jnp.asarray(x).dtype)
