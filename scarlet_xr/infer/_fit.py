"""Maximum-a-posteriori fitting with optax, compiled in chunks of steps."""

from __future__ import annotations

import functools
import logging
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ..core import (
    SceneModel,
    default_float,
    filter_jit,
    log_likelihood,
    reverse_mode_rendering,
    to_device,
)
from ._params import log_prior, partition_free, step_tree

__all__ = [
    "newton_step",
    "fit", "FitHistory", "FitDivergedError", "default_optimizer", "settling_optimizer",
    "quasi_newton_optimizer", "plateau_optimizer", "loss_function",
]

logger = logging.getLogger(__name__)

CONVERGED, MAX_STEPS, DIVERGED = 1, 2, 3
_STATUS = {0: "running", CONVERGED: "converged", MAX_STEPS: "max_steps", DIVERGED: "diverged"}
_WINDOW = 10


class FitDivergedError(RuntimeError):
    """Raised by :func:`fit` with ``on_divergence="raise"`` when the loss turns non-finite."""


class FitHistory(eqx.Module):
    """Record of a fit.

    Attributes
    ----------
    loss : numpy.ndarray
        Loss (``0.5 chi^2 - log prior``) before each step taken.
    status : str
        ``"converged"``, ``"max_steps"`` or ``"diverged"``.
    num_steps : int
        Number of optimizer steps applied.
    restored_step : int or None
        When the loss ended well above its best (see :data:`RESTORE_RISE`),
        the step whose state was returned instead of the last one; else None.
    """

    loss: np.ndarray
    status: str = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    restored_step: int | None = eqx.field(static=True, default=None)


RESTORE_RISE = 1e-3
"""A fit whose last loss exceeds the lowest loss it passed through (sampled at the start of each
compiled chunk of steps) by more than this fraction of it returns that state, not the last one.

Adam can leave a good state: on the HSC cutout a pixel stage started from a state that differed by
float32 rounding (a variant of the placement's arithmetic, not kept) jumped from loss 9.58e3 to
1.79e4 and ended at its step cap (reduced chi^2 1.77 instead of 1.47). A converging fit ends within
~1e-6 of its best and is returned unchanged."""


@functools.cache
def default_optimizer() -> optax.GradientTransformation:
    """Adam in natural units (learning rate 1: each parameter moves by about its ``step``).

    Cached so that repeated fits reuse the same object and hit JAX's compile cache.
    """
    return optax.adam(learning_rate=1.0)


@functools.cache
def settling_optimizer() -> optax.GradientTransformation:
    """Adam in natural units with a learning rate halving every 100 steps (floor 0.02).

    For parametric shapes, which need a settled optimum rather than Adam's
    constant-rate jitter around it (used by :func:`scarlet_xr.scene.fit_sources`;
    on blend scenes the flux errors of galaxies drop by about a tenth against
    :func:`default_optimizer`). Cached, so that every fit reuses one compiled loop.
    """
    schedule = optax.exponential_decay(1.0, transition_steps=100, decay_rate=0.5, end_value=0.02)
    return optax.adam(learning_rate=schedule)


@functools.cache
def quasi_newton_optimizer() -> optax.GradientTransformationExtraArgs:
    """L-BFGS (10 pairs of curvature memory) with a zoom line search (strong Wolfe conditions).

    An alternative to the default path's Adam for crowded parametric scenes where the
    optimum matters more than time: Adam follows each parameter's own gradient scale
    and creeps along the valleys that blended profiles make (sizes, indices and
    neighbours' fluxes trade off), so its relative loss change can fall below a
    stopping rule well before the optimum. On the second stage of a 300-source
    cutout (4336 parameters, from the same start) L-BFGS reached Adam's 560-step
    loss in about 270 steps and after 600 steps a loss 430 lower, with median flux
    errors 0.0427 instead of 0.0453; each step costs more (line search), and in
    the default path on small blends it doubled the time, so it is not the default.
    :func:`fit` passes it the loss, gradient and loss function its line search
    needs (any optax optimizer with a line search works the same way). Cached, so
    that fits reuse one compiled loop.
    """
    return optax.lbfgs(memory_size=10)


@functools.cache
def plateau_optimizer() -> optax.GradientTransformationExtraArgs:
    """Adam in natural units whose learning rate halves when the loss stops improving.

    The rate halves after 10 steps without a relative improvement of 1e-6 over the
    best loss (optax's ``reduce_on_plateau``), down to 0.02 of its start. While the
    loss falls the rate stays high; :func:`settling_optimizer` halves it every 100
    steps whatever the progress. :func:`fit` passes it the loss. Cached, so that
    every fit reuses one compiled loop.
    """
    return optax.chain(
        optax.adam(learning_rate=1.0),
        optax.contrib.reduce_on_plateau(factor=0.5, patience=10, rtol=1e-6, min_scale=0.02),
    )


def _uses_line_search(opt_state) -> bool:
    """Whether an optimizer state carries a line search's value (optax's line searches)."""
    return optax.tree_utils.tree_get(opt_state, "value", default=None) is not None


def loss_function(model, likelihoods) -> jax.Array:
    """Return ``-sum(log L) - log prior`` of ``model`` for the given likelihood terms.

    The model is rendered into the observations as
    :func:`~scarlet_xr.core.log_likelihood` does.
    """
    return -log_prior(model) - log_likelihood(model, likelihoods)


def _to_z(free, steps):
    return jax.tree_util.tree_map(lambda u, s: u / s, free, steps)


def _from_z(z, steps):
    return jax.tree_util.tree_map(lambda u, s: u * s, z, steps)


def _loss_dtype(free):
    """The floating dtype of the free parameters, in which the loss is computed."""
    leaves = [x for x in jax.tree_util.tree_leaves(free) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.result_type(*leaves) if leaves else default_float()


@filter_jit(quick=True)
def _start(free, optimizer):
    z = _to_z(free, step_tree(free))
    return z, optimizer.init(ravel_pytree(z)[0])


@filter_jit(quick=True)
def _finish(z):
    return _from_z(z, step_tree(z))


def _chunk_impl(z, opt_state, ring, rest, likelihoods, optimizer, n_done, max_steps, e_rel, chunk,
                reverse_only=False):
    # (``reverse_only``: the loop's model is traced for gradients only, see
    # core.reverse_mode_rendering; the batched loops keep the placement jax.vmap handles best)
    with reverse_mode_rendering(reverse_only):
        return _chunk_body(z, opt_state, ring, rest, likelihoods, optimizer, n_done, max_steps, e_rel,
                           chunk)


def _chunk_body(z, opt_state, ring, rest, likelihoods, optimizer, n_done, max_steps, e_rel, chunk):
    # the loop runs on one flat vector: the optimizer's and the loop's own
    # per-leaf work then compiles once, not once per parameter of every source
    # (with per-leaf updates the compile time of a 30-source scene was ~30x longer)
    steps = step_tree(z)
    x0, unravel = ravel_pytree(z)

    def loss_z(x_):
        model = eqx.combine(_from_z(unravel(x_), steps), rest)
        return loss_function(model, likelihoods)

    hist0 = jnp.full((chunk,), jnp.nan, dtype=ring.dtype)

    def cond(state):
        i, _, _, _, _, _, status = state
        return (i < chunk) & (n_done + i < max_steps) & (status == 0)

    line_search = _uses_line_search(opt_state)
    takes_value = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def body(state):
        i, z_, good, opt_state_, ring_, hist, status = state
        if line_search:  # (the line search evaluated the loss and gradient at z_ already)
            loss, g = optax.value_and_grad_from_state(loss_z)(z_, state=opt_state_)
        else:
            loss, g = jax.value_and_grad(loss_z)(z_)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
        # z_ has a finite loss: remember it as the last good state
        good = jnp.where(finite, z_, good)
        if line_search:
            updates, new_opt = optimizer.update(g, opt_state_, z_, value=loss, grad=g, value_fn=loss_z)
        elif takes_value:  # (e.g. a learning rate reduced on plateaus of the loss)
            updates, new_opt = optimizer.update(g, opt_state_, z_, value=loss)
        else:
            updates, new_opt = optimizer.update(g, opt_state_, z_)
        new_z = optax.apply_updates(z_, updates)
        ok = finite & jnp.all(jnp.isfinite(new_z))
        z_ = jnp.where(ok, new_z, good)
        opt_state_ = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new_opt, opt_state_)
        hist = hist.at[i].set(loss)
        k = n_done + i
        old = ring_[k % _WINDOW]
        ring_ = ring_.at[k % _WINDOW].set(loss)
        rel = jnp.abs(old - loss) / (_WINDOW * jnp.abs(loss) + 1e-30)
        converged = (k >= _WINDOW) & (rel < e_rel)
        status = jnp.where(~ok, DIVERGED, jnp.where(converged, CONVERGED, status))
        return i + jnp.where(ok, 1, 0), z_, good, opt_state_, ring_, hist, status

    init = (jnp.zeros((), jnp.int32), x0, x0, opt_state, ring, hist0, jnp.zeros((), jnp.int32))
    i, x, _, opt_state, ring, hist, status = jax.lax.while_loop(cond, body, init)
    return unravel(x), opt_state, ring, hist, i, status


# Two compiled versions of the same loop: ``core.filter_jit`` (XLA's classic CPU
# emitters: ~170 MB less peak memory when compiling a scene, same speed on
# one large scene) for interactive fits, and plain ``equinox.filter_jit``
# (default emitters, faster on the many small blends of a survey).
_run_chunk = eqx.filter_jit(_chunk_impl)
_run_chunk_lean = filter_jit(_chunk_impl)
# (and with quicker compiling, for a scene's own layout: compiled for it alone, see core._jit)
_run_chunk_quick = filter_jit(_chunk_impl, quick=True)


def fit(
    model,
    likelihoods,
    *,
    optimizer: optax.GradientTransformation | None = None,
    max_steps: int = 1000,
    e_rel: float = 1e-4,
    progress: bool = False,
    chunk: int = 100,
    on_divergence: str = "warn",
    canonical: bool = False,
    templates=(),
):
    """Fit a model by minimising ``-log L - log prior`` with optax.

    The optimizer sees every free parameter in units of its natural ``step``
    (``u / step`` in the unconstrained space), so the default Adam with
    learning rate 1 moves each parameter by about its step per iteration and
    needs no tuning. The loop runs compiled in chunks of ``chunk`` steps
    (no Python work per step); a progress bar, if requested, is updated
    between chunks.

    Parameters
    ----------
    model : callable pytree
        E.g. a :class:`~scarlet_xr.core.SceneModel`; ``model()`` returns the
        model cube consumed by the likelihood terms.
    likelihoods : sequence of GaussianLikelihood
        One term per observation.
    optimizer : optax.GradientTransformation, optional
        Default :func:`default_optimizer`. It is applied to one flat vector
        holding every free parameter in units of its step (so that the
        compiled loop does not grow with the number of parameters); an
        optimizer that needs the parameter tree's structure (e.g.
        ``optax.multi_transform``) does not apply. Optimizers with a line
        search (``optax.lbfgs``, :func:`quasi_newton_optimizer`) get the loss,
        its gradient and the loss function they need.
    max_steps : int
        Maximum number of steps.
    e_rel : float
        Stop when the loss changed by less than ``e_rel`` (relative, per step,
        averaged over the last 10 steps).
    progress : bool
        Show a ``tqdm.auto`` progress bar (honours ``TQDM_DISABLE``).
    chunk : int
        Steps per compiled call.
    on_divergence : {"warn", "raise"}
        What to do if the loss or its gradient becomes non-finite: the fit
        always stops and keeps the last finite state; ``"warn"`` logs a
        warning and reports ``status="diverged"``, ``"raise"`` raises
        :class:`FitDivergedError`.
    canonical : bool
        Fit a :class:`~scarlet_xr.core.SceneModel` in its canonical layout
        (:meth:`~scarlet_xr.core.SceneModel.canonical`: sources sorted by
        structure, unnamed, each structure's count padded to a power of two
        with weight-0 placeholders), so that many scenes of one frame shape
        (a survey's blends) share a few compiled programs instead of
        compiling one each; the returned model is the scene as given.
        Other models, and scene models that cannot be made canonical
        (packed, with ``active`` weights or variable sources), are fitted as
        they are. Default False: the scene's own layout.
    templates : sequence of Source
        With ``canonical``: sources whose structures the canonical layout
        always holds, padded to the scene's count (e.g. a point, a Sersic and
        a bulge + disk source made from one of the scene's sources: blends
        that differ only in which of these their sources are then share one
        compiled program; see :meth:`~scarlet_xr.core.SceneModel.canonical`).

    Returns
    -------
    model
        The fitted model (same structure as the input): the last state, or,
        when the loss ended more than :data:`RESTORE_RISE` above the lowest
        loss at the start of a chunk, that chunk's starting state (logged as
        a warning; ``FitHistory.restored_step`` says which step).
    FitHistory
        Loss per step, status and number of steps.

    Raises
    ------
    ValueError
        If the initial loss is not finite or an argument is invalid.
    FitDivergedError
        If the fit diverges and ``on_divergence="raise"``.
    """
    return _fit(model, likelihoods, optimizer=optimizer, max_steps=max_steps, e_rel=e_rel,
                progress=progress, chunk=chunk, on_divergence=on_divergence, lean=True, canonical=canonical,
                templates=templates)


def _fit(model, likelihoods, *, optimizer, max_steps, e_rel, progress, chunk, on_divergence, lean,
         canonical=False, templates=()):
    """:func:`fit`; ``lean`` compiles the loop with XLA's classic CPU emitters (about 170 MB
    less peak memory for the HSC demo scene, same speed), otherwise with XLA's defaults
    (faster on the many small scenes of a survey's batched runner)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {max_steps}")
    if on_divergence not in ("warn", "raise"):
        raise ValueError(f"on_divergence must be 'warn' or 'raise'; got {on_divergence!r}")
    likelihoods = tuple(likelihoods)
    optimizer = default_optimizer() if optimizer is None else optimizer
    # a scene model's sources stacked by structure: the compiled step sees a few arrays,
    # not a few per source, so its size does not grow with the number of sources
    unpack = isinstance(model, SceneModel) and not model.is_packed
    restore = None
    if unpack and canonical:
        model, restore = model.canonical(templates=templates)
    if unpack and restore is None:
        model = model.packed()
    free, rest = partition_free(model)
    if not lean:
        run_chunk = _run_chunk
    elif restore is not None:  # a canonical layout's program serves many scenes: worth optimising
        run_chunk = _run_chunk_lean
    else:  # a scene's own layout: compiled for it alone, so compiled quickly
        run_chunk = _run_chunk_quick
    z, opt_state = _start(free, optimizer)
    dtype = _loss_dtype(free)
    ring = jnp.zeros((_WINDOW,), dtype)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc="fit", disable=bool(os.environ.get("TQDM_DISABLE")))
    losses = []
    n_done = 0
    status = 0
    best = None  # (loss, state, step) of the lowest chunk-start loss
    try:
        while True:
            z_in = z
            z, opt_state, ring, hist, n, st = run_chunk(
                z, opt_state, ring, rest, likelihoods, optimizer,
                to_device(n_done, jnp.int32), to_device(max_steps, jnp.int32),
                to_device(e_rel, dtype), int(chunk), reverse_only=True,
            )
            n = int(n)
            st = int(st)
            hist = np.asarray(hist)
            losses.append(hist[: n + (1 if st == 3 else 0)])
            if len(losses[-1]) and np.isfinite(losses[-1][0]) and (best is None or losses[-1][0] < best[0]):
                best = (float(losses[-1][0]), z_in, n_done)
            n_done += n
            if bar is not None:
                bar.update(n)
                if len(losses[-1]):
                    bar.set_postfix(loss=float(losses[-1][-1]))
            if st != 0:
                status = st
                break
            if n_done >= max_steps:
                status = MAX_STEPS
                break
    finally:
        if bar is not None:
            bar.close()
    loss = np.concatenate(losses) if losses else np.zeros(0)
    if n_done == 0 and status == DIVERGED:
        raise ValueError(
            "the initial loss or its gradient is not finite; check the data, weights and "
            "initial parameters"
        )
    restored_step = None
    if status != DIVERGED and best is not None and len(loss) and _rose(float(loss[-1]), best[0]):
        logger.warning("the fit's loss rose from %.6g (step %d) to %.6g at its end (step %d); "
                       "returning the state of step %d", best[0], best[2], float(loss[-1]), n_done, best[2])
        z, restored_step = best[1], best[2]
    fitted = eqx.combine(_finish(z), rest)
    if unpack:
        fitted = fitted.unpacked() if restore is None else fitted.restored(*restore)
    hist = FitHistory(loss=loss, status=_STATUS[status], num_steps=n_done, restored_step=restored_step)
    if status == DIVERGED:
        msg = (
            f"fit diverged after {n_done} steps (loss or gradient became non-finite); "
            "returning the last finite state"
        )
        if on_divergence == "raise":
            raise FitDivergedError(msg)
        logger.warning(msg)
    return fitted, hist


def _rose(last: float, lowest: float) -> bool:
    """Whether a fit's ``last`` loss lies more than :data:`RESTORE_RISE` above its ``lowest``."""
    return bool(np.isfinite(last)) and last - lowest > RESTORE_RISE * max(abs(lowest), 1.0)


def _split(x, shapes):
    """The flat vector ``x`` cut back into arrays of ``shapes`` (static: no closure to hash)."""
    out, i = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(x[i : i + n].reshape(s))
        i += n
    return out


@eqx.filter_jit
def _newton_parts(x, model, likelihoods, get, shapes):
    def loss_x(v):
        return loss_function(eqx.tree_at(get, model, _split(v, shapes)), likelihoods)

    return loss_x(x), jax.grad(loss_x)(x), jax.hessian(loss_x)(x)


def newton_step(model, likelihoods, get):
    """One Newton step on some raw parameter arrays of ``model``; exact for parameters entering linearly.

    For amplitudes that enter the model linearly (an
    :class:`~scarlet_xr.core.LightCurve` of either sign, a spectrum in its
    value space) under a Gaussian likelihood and a flat or Gaussian prior,
    the loss is quadratic in them and one step lands on their optimum given
    everything else. The step is kept only when the loss decreases.

    Parameters
    ----------
    model : equinox.Module
        E.g. a :class:`~scarlet_xr.core.SceneModel`.
    likelihoods : sequence of callables
        As for :func:`fit`.
    get : callable
        ``get(model)`` returns the list of raw arrays to solve for (as for
        ``equinox.tree_at``). The compiled step is cached by ``get`` (and the
        model's structure): pass the same function object to reuse it.

    Returns
    -------
    model : same type as ``model``
        With the solved arrays (or unchanged if the step did not help).
    improved : bool
    gain : float
        Decrease of the loss (0 when the step was not kept).
    """
    leaves = get(model)
    if not leaves:
        return model, False, 0.0
    shapes = tuple(tuple(int(d) for d in leaf.shape) for leaf in leaves)
    x0 = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
    loss0, g, h = _newton_parts(x0, model, tuple(likelihoods), get, shapes)
    h = np.asarray(h, np.float64)
    g = np.asarray(g, np.float64)
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(g))):
        return model, False, 0.0
    ridge = 1e-10 * max(float(np.abs(np.diag(h)).max()), 1e-30)
    try:
        dx = np.linalg.solve(h + ridge * np.eye(len(g)), g)
    except np.linalg.LinAlgError:
        return model, False, 0.0
    x1 = (np.asarray(x0, np.float64) - dx).astype(np.asarray(x0).dtype)
    new = eqx.tree_at(get, model, _split(jnp.asarray(x1), shapes))
    loss1 = loss_function(new, tuple(likelihoods))
    if not (np.isfinite(float(loss1)) and float(loss1) <= float(loss0)):
        return model, False, 0.0
    return new, True, float(loss0) - float(loss1)
