"""``filter_jit`` with per-backend XLA compiler options.

Compiling one of our fit or sampling loops with XLA's CPU "fusion emitters"
(the default in jaxlib 0.10) holds about 190 MB of transient memory for a
7-source HSC scene, i.e. a third of the process's peak; the classic CPU
emitters compile the same program in the same time with about 20 MB and
run it as fast (measured in ``benchmarks/bench_hsc.py``). The option is
passed per compiled function through ``jax.jit(compiler_options=...)``, so
the caller's global XLA settings are never touched, and only on the CPU
backend (the option means nothing elsewhere).

Batched (``vmap``-ed) survey fits keep the default emitters, which run
them about 1.4x faster; they use :func:`equinox.filter_jit` directly.

``filter_jit(fun, quick=True)`` also lowers LLVM's optimisation level on the
CPU (:data:`QUICK_COMPILER_OPTIONS`): for programs compiled once and run a
few hundred times (one scene's fit loop) compiling is most of the cost. On
the six 128 px blends (5-8 sources) of the field benchmark the default path
took 96 s instead of 113 s (compiling 57 s instead of 71 s) with the same
fluxes (to 1e-3); a compiled loop then runs 10-17 % slower, so programs that
are reused many times (a survey's canonical blends, samplers) keep the
default level.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax

__all__ = ["filter_jit", "COMPILER_OPTIONS", "QUICK_COMPILER_OPTIONS"]

COMPILER_OPTIONS: dict[str, dict[str, object]] = {
    "cpu": {"xla_cpu_use_fusion_emitters": False},
}
"""XLA options used per backend name (``jax.default_backend()``)."""

QUICK_COMPILER_OPTIONS: dict[str, dict[str, object]] = {
    "cpu": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1},
}
"""XLA options of ``filter_jit(..., quick=True)``: faster to compile, a little slower to run."""


@functools.cache
def _compiled(fun, backend: str, quick: bool = False):
    opts = (QUICK_COMPILER_OPTIONS if quick else COMPILER_OPTIONS).get(backend)
    return eqx.filter_jit(fun, compiler_options=dict(opts)) if opts else eqx.filter_jit(fun)


def filter_jit(fun=None, *, quick: bool = False):
    """Like :func:`equinox.filter_jit`, with :data:`COMPILER_OPTIONS` for the default backend.

    The backend is looked up at the first call (not at import, so importing
    a module that uses this decorator starts no backend).

    Parameters
    ----------
    fun : callable
        Function to compile; arrays in its arguments are traced, everything
        else is static, as in :func:`equinox.filter_jit`. Omitted:
        ``filter_jit(quick=True)`` returns a decorator.
    quick : bool
        Use :data:`QUICK_COMPILER_OPTIONS` (quicker to compile, slower to
        run): for programs compiled for one scene and run a few hundred times.

    Returns
    -------
    callable
        The compiled function.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> @filter_jit
    ... def f(x, n):
    ...     return x * n
    >>> f(jnp.arange(3.0), 2).tolist()
    [0.0, 2.0, 4.0]
    """
    if fun is None:
        return functools.partial(filter_jit, quick=quick)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
            # called inside another compiled function: options belong to the outer one
            return _compiled(fun, "")(*args, **kwargs)
        return _compiled(fun, jax.default_backend(), quick)(*args, **kwargs)

    return wrapper
