"""Posterior sampling of a core model with numpyro's NUTS kernel.

The sampler sees exactly the free parameters the fit uses (the ``raw`` arrays
of every non-fixed :class:`~scarlet_xr.core.Parameter`), in their
unconstrained space. Its target density is

``log p(u) = sum(log L) + sum(log prior(value(u))) + sum(log |d value / d u|)``.

Before sampling, the unconstrained vector ``u`` is whitened around the mode:
a few Newton steps from the fitted solution find the mode ``u0`` and the
Hessian ``H`` of ``-log p`` there, and NUTS runs on ``z`` with
``u = u0 + A z`` where ``A = V diag(|lambda|^-1/2)`` comes from the
eigen-decomposition of ``H`` (dense, for up to ``max_dense`` parameters) or
``A = diag(H_ii^-1/2)`` (diagonal, for more). The posterior NUTS sees is
then close to a unit normal: step sizes near 1, short trajectories, and a
warm-up that only has to refine the mass matrix. This is also what makes
single precision work (the peer's float32 chains stall at step sizes near
1e-6); float32 is the default. ``precision="float64"`` runs the sampler in
64-bit, enabled only inside :func:`sample` and restored afterwards.

Default priors (``missing_prior="default"``) for free parameters without one:

* unbounded parameters (``Identity`` constraint, e.g. centres):
  ``Normal(start value, default_sigma)`` in the parameter's units
  (pixels for centres), wide compared with the likelihood of any detected
  source but proper;
* constrained parameters (``LogPositive``, ``Positive``, ``Interval``,
  ``Simplex``): flat in the constrained value (the Jacobian term is kept),
  i.e. a uniform prior on e.g. the flux, not on its logarithm. A flat prior
  on a log-amplitude would be improper towards zero flux.

``missing_prior="error"`` raises instead.

Priors given by a score (:class:`~scarlet_xr.core.ScorePrior`, the learned
morphology prior of :mod:`scarlet_xr.nn`) report a surrogate value during
fits. Before sampling, every prior with a ``for_sampling`` method is
replaced by ``prior.for_sampling(start value)``, for those priors the exact
line integral of the score from the starting point, so that the potential's
value and gradient agree as Hamiltonian Monte Carlo requires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..core import Identity, Parameter, filter_jit, is_parameter, log_likelihood
from ._params import partition_free

__all__ = ["sample", "PosteriorSamples", "log_density"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PosteriorSamples:
    """Draws of :func:`sample`.

    Attributes
    ----------
    params : dict of str to numpy.ndarray
        Constrained value of every free parameter, ``(chain, draw, *shape)``,
        keyed by its path in the model (e.g. ``"sources[0].center"``).
    derived : dict of str to numpy.ndarray
        Outputs of the ``derived`` function per draw, ``(chain, draw, ...)``.
    sample_stats : dict of str to numpy.ndarray
        Per-draw NUTS statistics ``(chain, draw)`` with ArviZ names:
        ``lp``, ``energy``, ``diverging``, ``n_steps``, ``acceptance_rate``,
        ``step_size``.
    num_warmup : int
    precision : str
        ``"float64"`` or ``"float32"``.
    time_s : float
        Wall time of warm-up and sampling (compilation included).
    scale : numpy.ndarray
        The whitening matrix ``A`` (or its diagonal) used for ``u = u0 + A z``.
    """

    params: dict
    derived: dict
    sample_stats: dict
    num_warmup: int
    precision: str
    time_s: float
    scale: np.ndarray = field(repr=False)

    @property
    def num_chains(self) -> int:
        """Number of chains."""
        return int(self.sample_stats["lp"].shape[0])

    @property
    def num_samples(self) -> int:
        """Number of draws per chain."""
        return int(self.sample_stats["lp"].shape[1])


class _Config(NamedTuple):
    num_warmup: int
    dense_mass: bool
    target_accept: float
    max_tree_depth: int
    chunk: int
    vectorized: bool


def _free_parameters(model):
    return [p for p in jax.tree_util.tree_leaves(model, is_leaf=is_parameter)
            if isinstance(p, Parameter) and not p.fixed]


def _priors_for_sampling(model):
    """Replace each free parameter's prior by ``prior.for_sampling(value)`` where it has one."""

    def one(p):
        if isinstance(p, Parameter) and not p.fixed and hasattr(p.prior, "for_sampling"):
            new = p.prior.for_sampling(p.value)
            if new is not p.prior:
                return eqx.tree_at(lambda q: q.prior, p, new)
        return p

    return jax.tree_util.tree_map(one, model, is_leaf=is_parameter)


def _parameter_names(model) -> list[str]:
    out = []
    for path, p in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_parameter)[0]:
        if isinstance(p, Parameter) and not p.fixed:
            out.append(jax.tree_util.keystr(path, simple=True, separator=".").lstrip("."))
    return out


def log_density(model, likelihoods, start=None, *, default_sigma: float = 1.0):
    """Log posterior density of ``model`` in the unconstrained space.

    ``sum(log L) + log prior + log|Jacobian|`` over the free parameters, with
    the default priors of this module for parameters without a prior.

    Parameters
    ----------
    model : callable pytree
    likelihoods : sequence of GaussianLikelihood
    start : pytree, optional
        Model holding the centres of the default normal priors (default:
        ``model`` itself, i.e. those terms vanish).
    default_sigma : float
        Width of the default normal prior of unbounded parameters.
    """
    total = log_likelihood(model, likelihoods)
    ref = _free_parameters(model if start is None else start)
    for p, p0 in zip(_free_parameters(model), ref, strict=True):
        if p.prior is not None:
            total = total + p.log_prior()
        elif isinstance(p.constraint, Identity):
            d = (p.value - jax.lax.stop_gradient(p0.value)) / default_sigma
            total = total - 0.5 * jnp.sum(d * d)
        if not isinstance(p.constraint, Identity):
            total = total + p.constraint.log_abs_det_jacobian(p.raw)
    return total


class _Problem(eqx.Module):
    """Everything the potential needs, as one pytree (so compiled code is reused)."""

    free: Any
    rest: Any
    start: Any
    likelihoods: tuple
    u0: jax.Array
    scale: jax.Array
    default_sigma: jax.Array

    def model_at(self, u):
        _, unravel = ravel_pytree(self.free)
        return eqx.combine(unravel(u), self.rest)

    def log_density_u(self, u):
        return log_density(self.model_at(u), self.likelihoods, self.start,
                           default_sigma=self.default_sigma)

    def to_u(self, z):
        if self.scale.ndim == 2:
            return self.u0 + self.scale @ z
        return self.u0 + self.scale * z

    def potential(self, z):
        return -self.log_density_u(self.to_u(z))


@filter_jit
def _log_density_at_start(problem: _Problem):
    return problem.log_density_u(problem.u0)


def _potential_gen(problem):
    return problem.potential


@filter_jit
def _newton(problem: _Problem, num_steps: int, dense: bool):
    """Chord-Newton steps on ``-log p(u)``; return the mode and the whitening matrix there."""
    f = lambda u: -problem.log_density_u(u)  # noqa: E731
    n = problem.u0.shape[0]
    grad = jax.grad(f)

    def hess_rows(u):
        hvp = lambda v: jax.jvp(grad, (u,), (v,))[1]  # noqa: E731
        if dense:
            return jax.lax.map(hvp, jnp.eye(n, dtype=u.dtype), batch_size=min(n, 128))
        def diag(i):
            return hvp(jax.nn.one_hot(i, n, dtype=u.dtype))[i]
        return jax.lax.map(diag, jnp.arange(n), batch_size=min(n, 64))

    def whitening(h):
        # A with A A^T = |H|^-1 (eigenvalues floored); diagonal: A = |H_ii|^-1/2
        if dense:
            lam, vec = jnp.linalg.eigh(0.5 * (h + h.T))
            lam = jnp.abs(lam)
            lam = jnp.maximum(lam, jnp.max(lam) * 1e-10 + 1e-30)
            return vec * jax.lax.rsqrt(lam)[None, :]
        h = jnp.abs(h)
        return jax.lax.rsqrt(jnp.maximum(h, jnp.max(h) * 1e-10 + 1e-30))

    a0 = whitening(hess_rows(problem.u0))

    def step(u, _):
        # chord-Newton: the curvature at the start, the gradient at the current point
        g = grad(u)
        du = -a0 @ (a0.T @ g) if dense else -a0 * a0 * g
        f0 = f(u)
        # backtracking: full step, then halves; keep the best finite improvement
        cands = jnp.stack([u + t * du for t in (1.0, 0.5, 0.25)])
        fc = jax.vmap(f)(cands)
        fc = jnp.where(jnp.isfinite(fc), fc, jnp.inf)
        k = jnp.argmin(fc)
        return jnp.where(fc[k] < f0, cands[k], u), None

    if num_steps == 0:
        return problem.u0, a0
    u, _ = jax.lax.scan(step, problem.u0, None, length=num_steps)
    a = whitening(hess_rows(u))
    return u, a


def _hmc():
    from numpyro.infer.hmc import hmc

    return hmc(potential_fn_gen=_potential_gen, algo="NUTS")


def _init_kwargs(cfg: _Config):
    return dict(
        num_warmup=cfg.num_warmup,
        step_size=1.0,
        adapt_step_size=True,
        adapt_mass_matrix=True,
        dense_mass=cfg.dense_mass,
        target_accept_prob=cfg.target_accept,
        max_tree_depth=cfg.max_tree_depth,
        find_heuristic_step_size=False,
    )


@filter_jit
def _init_states(problem: _Problem, z0, keys, cfg: _Config):
    init_kernel, _ = _hmc()
    init = lambda z, k: init_kernel(z, model_args=(problem,), rng_key=k, **_init_kwargs(cfg))  # noqa: E731
    return jax.vmap(init)(z0, keys)


@filter_jit
def _advance(problem: _Problem, states, n_valid, cfg: _Config):
    """Run ``cfg.chunk`` NUTS iterations (only the first ``n_valid`` change the state)."""
    init_kernel, sample_kernel = _hmc()
    # init_kernel configures sample_kernel's closure (warm-up schedule, tree depth);
    # trace it abstractly so that nothing is computed.
    one = jax.tree_util.tree_map(lambda x: x[0], states)
    eqx.filter_eval_shape(
        lambda z, k, p: init_kernel(z, model_args=(p,), rng_key=k, **_init_kwargs(cfg)),
        one.z, one.rng_key, problem,
    )
    kernel = lambda s: sample_kernel(s, model_args=(problem,))  # noqa: E731

    def record(s):
        return (s.z, -s.potential_energy, s.energy, s.diverging, s.num_steps,
                s.accept_prob, s.adapt_state.step_size)

    def one_step(s, i):
        s = jax.lax.cond(i < n_valid, kernel, lambda x: x, s)
        return s, record(s)

    if cfg.vectorized:
        def step(s, i):
            s = jax.lax.cond(i < n_valid, jax.vmap(kernel), lambda x: x, s)
            return s, record(s)

        states, out = jax.lax.scan(step, states, jnp.arange(cfg.chunk))
        out = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), out)
    else:
        states, out = jax.lax.map(
            lambda s: jax.lax.scan(one_step, s, jnp.arange(cfg.chunk)), states
        )
    return states, out


@filter_jit
def _values(problem: _Problem, z, derived):
    """Constrained parameter values and derived quantities for draws ``z`` (k, n)."""

    def one(zi):
        model = problem.model_at(problem.to_u(zi))
        vals = [p.value for p in _free_parameters(model)]
        return vals, ({} if derived is None else derived(model))

    return jax.lax.map(one, z, batch_size=min(z.shape[0], 256))


def _cast(tree, real, cplx):
    def cast(x):
        if eqx.is_array(x):
            if jnp.issubdtype(x.dtype, jnp.complexfloating):
                return x.astype(cplx)
            if jnp.issubdtype(x.dtype, jnp.floating):
                return x.astype(real)
        return x

    return jax.tree_util.tree_map(cast, tree)


def _as_key(key):
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key


def sample(
    model,
    likelihoods,
    *,
    key=0,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    derived=None,
    precision: str = "float32",
    dense_mass: bool = False,
    max_dense: int = 256,
    newton_steps: int = 5,
    target_accept: float = 0.8,
    max_tree_depth: int = 8,
    chain_method: str = "vectorized",
    missing_prior: str = "default",
    default_sigma: float = 1.0,
    init_jitter: float = 0.5,
    progress: bool = True,
    chunk: int = 100,
) -> PosteriorSamples:
    """Draw posterior samples of the free parameters of ``model`` with NUTS.

    See the module docstring for the target density, the default priors and
    the whitening. Chains start from the mode near the fitted ``model``
    (jittered by ``init_jitter`` posterior standard deviations).

    Parameters
    ----------
    model : callable pytree
        Typically the fitted :class:`~scarlet_xr.core.SceneModel`. Its
        non-fixed parameters are sampled; fixed ones stay fixed.
    likelihoods : sequence of GaussianLikelihood
    key : int or jax PRNG key
        Random seed or key.
    num_warmup, num_samples, num_chains : int
        Warm-up iterations (step size and mass-matrix adaptation), kept
        draws per chain, number of chains.
    derived : callable, optional
        ``derived(model) -> dict of arrays``, evaluated for every draw (e.g.
        fluxes). Use a module-level function so that compiled code is reused.
    precision : {"float64", "float32"}
        Arithmetic of the sampler. ``"float32"`` (default) works because the
        problem is whitened at the mode; ``"float64"`` enables 64-bit JAX only
        inside this call and casts the model and data to float64; the caller's
        JAX configuration is restored afterwards.
    dense_mass : bool
        Adapt a dense mass matrix (in the whitened space) instead of a diagonal one.
    max_dense : int
        Up to this many free scalars the whitening uses the full Hessian,
        above it the Hessian diagonal.
    newton_steps : int
        Newton iterations from the fitted solution to the mode before sampling.
    target_accept : float
        NUTS target acceptance probability.
    max_tree_depth : int
        Maximum NUTS tree depth.
    chain_method : {"vectorized", "sequential"}
        Run the chains in lockstep (one batched computation) or one after another.
    missing_prior : {"default", "error"}
        What to do with free parameters that have no prior (see module docstring).
    default_sigma : float
        Width of the default normal prior of unbounded parameters.
    init_jitter : float
        Spread of the chains' starting points, in whitened units.
    progress : bool
        Show a ``tqdm.auto`` progress bar (honours ``TQDM_DISABLE``).
    chunk : int
        Iterations per compiled call (the progress bar is updated between calls).

    Returns
    -------
    PosteriorSamples

    Raises
    ------
    ValueError
        For invalid arguments, a model without free parameters, a free
        parameter without prior when ``missing_prior="error"``, or a
        non-finite log density at the starting point.
    """
    for name, v, lo in (("num_warmup", num_warmup, 1), ("num_samples", num_samples, 1),
                        ("num_chains", num_chains, 1), ("chunk", chunk, 1)):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32'; got {precision!r}")
    if chain_method not in ("vectorized", "sequential"):
        raise ValueError(f"chain_method must be 'vectorized' or 'sequential'; got {chain_method!r}")
    if missing_prior not in ("default", "error"):
        raise ValueError(f"missing_prior must be 'default' or 'error'; got {missing_prior!r}")
    if not default_sigma > 0:
        raise ValueError(f"default_sigma must be > 0; got {default_sigma}")
    likelihoods = tuple(likelihoods)
    params = _free_parameters(model)
    names = _parameter_names(model)
    if not params:
        raise ValueError("the model has no free parameters to sample")
    if missing_prior == "error":
        missing = [n for n, p in zip(names, params, strict=True) if p.prior is None]
        if missing:
            raise ValueError(f"free parameters without a prior: {missing}")
    key = _as_key(key)
    ctx = jax.enable_x64(True) if precision == "float64" else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        real = jnp.float64 if precision == "float64" else jnp.float32
        cplx = jnp.complex128 if precision == "float64" else jnp.complex64
        model = _cast(_priors_for_sampling(model), real, cplx)
        likelihoods = _cast(likelihoods, real, cplx)
        free, rest = partition_free(model)
        u0, _ = ravel_pytree(free)
        n = int(u0.shape[0])
        dense = n <= max_dense
        problem = _Problem(free, rest, model, likelihoods, u0,
                           jnp.ones((n, n) if dense else (n,), real),
                           jnp.asarray(default_sigma, real))
        lp0 = float(_log_density_at_start(problem))
        if not np.isfinite(lp0):
            raise ValueError(f"the log density at the starting point is not finite ({lp0})")
        u_mode, a = _newton(problem, int(newton_steps), dense)
        a = jax.block_until_ready(a)
        logger.info("mode and %s whitening of %d parameters: %.1f s", "dense" if dense else "diagonal",
                    n, time.perf_counter() - t0)
        problem = eqx.tree_at(lambda p: (p.u0, p.scale), problem, (u_mode, a))
        k_init, k_chain = jax.random.split(key)
        z0 = init_jitter * jax.random.normal(k_init, (num_chains, n), real)
        cfg = _Config(int(num_warmup), bool(dense_mass), float(target_accept),
                      int(max_tree_depth), int(chunk), chain_method == "vectorized")
        states = _init_states(problem, z0, jax.random.split(k_chain, num_chains), cfg)
        total = num_warmup + num_samples
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="sample", disable=bool(os.environ.get("TQDM_DISABLE")))
        pieces = []
        done = 0
        try:
            while done < total:
                nv = min(chunk, total - done)
                states, out = _advance(problem, states, jnp.asarray(nv), cfg)
                out = jax.tree_util.tree_map(lambda x, nv=nv: np.asarray(x[:, :nv]), out)
                # keep only post-warm-up iterations
                lo = max(0, num_warmup - done)
                if lo < nv:
                    pieces.append(jax.tree_util.tree_map(lambda x, lo=lo: x[:, lo:], out))
                done += nv
                logger.info("NUTS iteration %d of %d: %.1f s", done, total, time.perf_counter() - t0)
                if bar is not None:
                    bar.update(nv)
                    bar.set_postfix(step=float(np.mean(np.asarray(out[6])[:, -1])))
        finally:
            if bar is not None:
                bar.close()
        z, lp, energy, div, nsteps, acc, step = (
            np.concatenate([p[i] for p in pieces], axis=1) for i in range(7)
        )
        flat_z = jnp.asarray(z.reshape(-1, n), real)
        vals, der = _values(problem, flat_z, derived)
        elapsed = time.perf_counter() - t0
        shape = (num_chains, num_samples)
        par = {nm: np.asarray(v).reshape(shape + v.shape[1:])
               for nm, v in zip(names, vals, strict=True)}
        der = {k: np.asarray(v).reshape(shape + v.shape[1:]) for k, v in der.items()}
        scale = np.asarray(a)
    stats = {
        "lp": lp.astype(np.float64),
        "energy": energy.astype(np.float64),
        "diverging": div.astype(bool),
        "n_steps": nsteps.astype(np.int64),
        "acceptance_rate": acc.astype(np.float64),
        "step_size": step.astype(np.float64),
    }
    return PosteriorSamples(params=par, derived=der, sample_stats=stats, num_warmup=int(num_warmup),
                            precision=precision, time_s=elapsed, scale=scale)
