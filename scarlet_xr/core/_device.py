"""Host arrays onto the device without compiling anything.

In JAX 0.10, ``jnp.asarray(numpy_array)`` compiles a small XLA program (a
"stage", or a type conversion) for every new shape and dtype, 10-70 ms each
on a CPU; a scene's set-up and measurements convert dozens of differently
shaped arrays. ``jax.device_put`` of a numpy array compiles nothing (but on
the CPU it may share the numpy array's memory: :func:`to_device` copies first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["to_device"]


def to_device(x, dtype=None) -> jax.Array:
    """``jnp.asarray(x, dtype)`` for concrete input, without compiling a program.

    Parameters
    ----------
    x : array_like or jax.Array
        Host data (numpy array, number, nested sequence) or a JAX array.
        Traced values are passed to :func:`jax.numpy.asarray` unchanged.
    dtype : dtype, optional
        Wanted dtype (canonicalised as JAX does: float64 becomes float32
        unless 64-bit mode is on).

    Returns
    -------
    jax.Array
    """
    if isinstance(x, jax.core.Tracer):
        return jnp.asarray(x, dtype=dtype)
    if isinstance(x, jax.Array):
        if dtype is None or x.dtype == jax.dtypes.canonicalize_dtype(dtype):
            return x
        x = np.asarray(x)
    # a private copy: on the CPU, device_put aliases the numpy buffer (even with may_alias=False in
    # JAX 0.10), and callers go on changing their arrays in place
    arr = np.array(x, dtype=None if dtype is None else jax.dtypes.canonicalize_dtype(dtype), copy=True)
    return jax.device_put(arr)
