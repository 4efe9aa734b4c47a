"""Compiled programs are dropped before a long process reaches the kernel's cap on memory areas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scarlet_xr.infer import bound_compiled_programs, memory_map_count

linux = pytest.mark.skipif(memory_map_count() is None, reason="needs /proc (Linux)")


@jax.jit
def _kept(x):
    """A module-level program: JAX keeps it compiled until its caches are cleared."""
    return jnp.cumsum(jnp.tanh(x @ x.T), 0) + jnp.fft.irfft(jnp.fft.rfft(x, axis=1), n=x.shape[1], axis=1)


@linux
def test_programs_are_dropped_above_the_fraction_and_kept_below():
    used, cap = memory_map_count()
    assert 0 < used < cap and cap >= 1000
    for n in range(4, 24):  # 20 shapes: 20 compiled programs, each with its own mapped code
        _kept(jnp.ones((n, n)))
    before = memory_map_count()[0]
    assert not bound_compiled_programs(1.0)  # below the cap: nothing dropped
    assert memory_map_count()[0] >= before - 5
    assert bound_compiled_programs(before / cap / 2)  # above half of what is in use: dropped
    after = memory_map_count()[0]
    assert after < before - 40, (before, after)
    # and the program still works (compiled anew)
    x = np.ones((5, 5))
    np.testing.assert_allclose(np.asarray(_kept(x)), np.asarray(_kept.__wrapped__(jnp.asarray(x))), rtol=1e-6)


def test_a_fraction_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]; got 0"):
        bound_compiled_programs(0)
