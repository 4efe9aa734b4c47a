"""Split a model into free unconstrained arrays and everything else."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..core import Parameter, SceneModel, is_parameter

__all__ = ["free_filter", "partition_free", "step_tree", "log_prior"]


def free_filter(model):
    """Filter spec: True exactly at the ``raw`` array of every non-fixed Parameter."""

    def spec(x):
        none = jax.tree_util.tree_map(lambda _: False, x)
        if isinstance(x, Parameter):
            # only ``raw`` is free: arrays inside a prior (distribution parameters,
            # network weights) must never be fitted or sampled
            return eqx.tree_at(lambda q: q.raw, none, not x.fixed)
        return none

    return jax.tree_util.tree_map(spec, model, is_leaf=is_parameter)


def partition_free(model):
    """Return ``(free, rest)`` with ``eqx.combine(free, rest) == model``."""
    return eqx.partition(model, free_filter(model))


def step_tree(free):
    """Per-leaf natural step sizes (arrays shaped like the free leaves)."""

    def steps(x):
        if isinstance(x, Parameter) and x.raw is not None:
            return jax.tree_util.tree_map(lambda r: jnp.full_like(r, x.step), x)
        return x

    return jax.tree_util.tree_map(steps, free, is_leaf=is_parameter)


def log_prior(model) -> jax.Array:
    """Sum of the log priors of all non-fixed parameters (constrained space).

    A :class:`~scarlet_xr.core.SceneModel` sums its own (group by group, see
    :meth:`~scarlet_xr.core.SceneModel.log_prior`).
    """
    if isinstance(model, SceneModel):
        return model.log_prior()
    leaves = jax.tree_util.tree_leaves(model, is_leaf=is_parameter)
    total = jnp.zeros(())
    for p in leaves:
        if isinstance(p, Parameter) and not p.fixed and p.prior is not None:
            total = total + p.log_prior()
    return total
