"""Levenberg-Marquardt refinement of a fitted model under Gaussian likelihoods.

A first-order optimizer (Adam) reaches the basin of the optimum quickly but then
creeps along its valleys: on blends of bulge + disk galaxies the loss still fell
by a few units after 1300 steps, and the fluxes moved by 2-5 %. Near the optimum
the loss ``1/2 |r|^2 - log prior`` is close to quadratic, and Gauss-Newton steps
with the Jacobian of the whitened residuals ``r = sqrt(w) (d - R(m))`` land on it
in a few iterations. The damping (Levenberg-Marquardt, Marquardt's diagonal
scaling) keeps each step inside the region where the quadratic model holds; a
step is kept only when the loss decreases.
"""

from __future__ import annotations

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..core import AbstractMorphology, GaussianLikelihood, SceneModel, filter_jit, render_observations
from ._fit import FitHistory, _from_z, _to_z, loss_function
from ._params import free_filter, log_prior, step_tree

__all__ = ["refine", "refinable", "MAX_JACOBIAN", "JACOBIAN_BATCH"]

logger = logging.getLogger(__name__)

MAX_JACOBIAN = 4e7
"""Largest Jacobian (residuals x parameters) :func:`refine` builds; larger problems are skipped."""

JACOBIAN_BATCH = 128
"""Most Jacobian columns (parameters) linearised at once: up to this many parameters in one
vectorised pass; more in batches of this many, so that the forward passes' intermediates of
only one batch are in memory together (the batched loop compiles about 1.5 s slower)."""


def _spec(model):
    """Free-parameter filter with the parameters of pixel morphologies held fixed."""
    spec = free_filter(model)

    def is_morph(x):
        return isinstance(x, AbstractMorphology)

    def hold(m, s):
        if is_morph(m) and m.pixel_anchored:
            return jax.tree_util.tree_map(lambda _: False, s)
        return s

    return jax.tree_util.tree_map(hold, model, spec, is_leaf=is_morph)


@filter_jit(quick=True)
def _packed(free):
    """Step sizes and the flat vector of ``free`` in step units (one program, not one per leaf)."""
    steps = step_tree(free)
    return ravel_pytree(_to_z(free, steps))[0], steps


@filter_jit(quick=True)
def _unpacked(x, free, steps):
    """``free`` with its leaves set from the flat vector ``x`` (in step units)."""
    return _from_z(ravel_pytree(free)[1](x), steps)


@filter_jit(quick=True)
def _parts(x, free, steps, rest, likelihoods):
    """Loss, gradient, whitened residuals' Jacobian and prior Hessian at ``x``
    (``free``: the free parameters' tree, whose layout ``x`` flattens)."""

    def model_of(v):
        return eqx.combine(_unpacked(v, free, steps), rest)

    def residuals(v):
        rendered = render_observations(model_of(v), likelihoods)
        return jnp.concatenate([(jnp.sqrt(lik.weights) * lik.residual_from(r)).ravel()
                                for lik, r in zip(likelihoods, rendered, strict=True)])

    def neg_log_prior(v):
        return -log_prior(model_of(v))

    r, jvp = jax.linearize(residuals, x)
    eye = jnp.eye(x.size, dtype=x.dtype)
    if x.size <= JACOBIAN_BATCH:  # all columns in one vectorised pass (compiles fastest)
        jac = jax.vmap(jvp, in_axes=1, out_axes=1)(eye)
    else:  # in batches: the forward passes' intermediates of one batch in memory at a time
        jac = jax.lax.map(jvp, eye, batch_size=JACOBIAN_BATCH).T
    loss = 0.5 * jnp.sum(r * r) + neg_log_prior(x)
    grad = jac.T @ r + jax.grad(neg_log_prior)(x)
    return loss, grad, jac, jax.hessian(neg_log_prior)(x)


@filter_jit(quick=True)
def _loss(x, free, steps, rest, likelihoods):
    """The loss alone at ``x`` (a trial step: one render instead of one per parameter)."""
    return loss_function(eqx.combine(_unpacked(x, free, steps), rest), likelihoods)


def refinable(model, likelihoods, *, max_jacobian: float = MAX_JACOBIAN) -> bool:
    """Whether :func:`refine` would work on ``model`` rather than skip it.

    Counts the parameters it would linearise (pixel morphologies held) without
    compiling anything.

    Parameters
    ----------
    model : SceneModel or equinox.Module
    likelihoods : sequence of likelihoods
    max_jacobian : float
        As in :func:`refine`.

    Returns
    -------
    bool
        False when :func:`refine` would return the model unchanged for its
        likelihoods' types or its Jacobian's size.
    """
    likelihoods = tuple(likelihoods)
    if not likelihoods or any(type(lik) is not GaussianLikelihood for lik in likelihoods):
        return False
    free, _ = eqx.partition(model, _spec(model))
    num = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(free) if eqx.is_inexact_array(leaf))
    num_res = sum(int(np.prod(lik.data.shape)) for lik in likelihoods)
    return 0 < num and num * num_res <= max_jacobian


def refine(model, likelihoods, *, max_steps: int = 12, tol: float = 1e-7, min_gain: float = 0.05,
           max_jacobian: float = MAX_JACOBIAN):
    """Refine a fitted model with Levenberg-Marquardt steps.

    Parameters
    ----------
    model : SceneModel or equinox.Module
        A model near its optimum (e.g. after :func:`fit`). Parameters of pixel
        morphologies (free-form, monotonic, starlet) are held fixed: they are too
        many for a dense Jacobian.
    likelihoods : sequence of GaussianLikelihood
        Plain :class:`~scarlet_xr.core.GaussianLikelihood` terms only (with or
        without a profiled sky); with any other likelihood the model is
        returned unchanged.
    max_steps : int
        Most Gauss-Newton iterations.
    tol, min_gain : float
        Stop when an accepted step lowers the loss by less than ``tol`` times
        the loss or by less than ``min_gain`` (0.05: a tenth of a unit of
        chi^2, far below what moves a flux by its error).
    max_jacobian : float
        Skip (return the model unchanged) when residuals x parameters exceeds this.

    Returns
    -------
    model : same type as ``model``
    history : FitHistory
        The loss before each iteration and after the last; ``status`` is
        ``"converged"``, ``"max_steps"`` or ``"skipped"`` (nothing to do, or
        a problem outside the limits above).
    """
    likelihoods = tuple(likelihoods)
    skipped = FitHistory(loss=np.zeros(0), status="skipped", num_steps=0)
    if not refinable(model, likelihoods, max_jacobian=max_jacobian):  # (the one rule fit_sources asks too)
        return model, skipped
    pack = isinstance(model, SceneModel) and not model.is_packed
    work = model.packed() if pack else model
    free, rest = eqx.partition(work, _spec(work))
    # (compiled, as the loss and Jacobian below, with XLA's quick options: they run a few times
    # per scene, so compiling is most of their cost; eager leaf-by-leaf operations compiled one
    # small program per leaf shape, 1.4 s on a 5-source scene)
    x, steps = _packed(free)
    args = (free, steps, rest, likelihoods)
    # the linearisation costs one forward pass of the render per parameter: trial steps
    # evaluate the loss alone, and the Jacobian is rebuilt only where a step was kept
    loss, grad, jac, hp = _parts(x, *args)
    loss = float(loss)
    if not np.isfinite(loss):
        return model, skipped
    hist = [loss]
    lam = 1e-3
    status = "max_steps"
    for _ in range(max_steps):
        jac = np.asarray(jac, np.float64)
        a = jac.T @ jac + np.asarray(hp, np.float64)
        g = np.asarray(grad, np.float64)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(g))):
            status = "converged" if len(hist) > 1 else "skipped"
            break
        diag = np.maximum(np.abs(np.diag(a)), 1e-12 * max(np.abs(np.diag(a)).max(), 1e-30))
        new = None
        while lam < 1e8:
            try:
                dx = np.linalg.solve(a + lam * np.diag(diag), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            cand = x + jnp.asarray(dx, x.dtype)
            value = float(_loss(cand, *args))
            if np.isfinite(value) and value < loss:
                new = cand
                lam = max(lam / 3, 1e-7)
                break
            lam *= 4
        if new is None:
            status = "converged"
            break
        gain = loss - value
        x, loss = new, value
        hist.append(loss)
        if gain < max(tol * abs(loss), min_gain):
            status = "converged"
            break
        _, grad, jac, hp = _parts(x, *args)
    out = eqx.combine(_unpacked(x, free, steps), rest)
    if pack:
        out = out.unpacked()
    return out, FitHistory(loss=np.asarray(hist), status=status, num_steps=len(hist) - 1)
