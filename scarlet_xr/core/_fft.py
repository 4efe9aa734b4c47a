"""Fourier-space helpers: fast sizes, centred kernels, shifts, convolution."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, Shaped

__all__ = ["fast_size", "kernel_to_origin", "fourier_shift", "convolve_fft"]


def fast_size(n: int) -> int:
    """Return the smallest integer >= n whose prime factors are 2, 3 and 5."""
    n = int(n)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def kernel_to_origin(kernel: Shaped[ArrayLike, "*batch h w"], shape) -> Shaped[np.ndarray, "*batch H W"]:
    """Embed a centred odd-sized kernel in ``shape`` with its centre at index (0, 0).

    Parameters
    ----------
    kernel : array (..., h, w)
        Kernel whose centre is pixel ``(h // 2, w // 2)``; ``h`` and ``w`` odd.
    shape : tuple of int
        Target 2-D shape (each at least the kernel size).

    Returns
    -------
    numpy.ndarray
        Array of shape ``kernel.shape[:-2] + shape`` ready for an FFT.
    """
    kernel = np.asarray(kernel)
    h, w = kernel.shape[-2:]
    out = np.zeros(kernel.shape[:-2] + tuple(shape), dtype=kernel.dtype)
    out[..., :h, :w] = kernel
    return np.roll(out, (-(h // 2), -(w // 2)), axis=(-2, -1))


def fourier_shift(image: Float[ArrayLike, "*batch h w"],
                  shift: Float[ArrayLike, " 2"]) -> Float[Array, "*batch h w"]:
    """Shift an image by a sub-pixel amount using the Fourier phase theorem.

    Parameters
    ----------
    image : array (..., h, w)
        Image to shift (treated as periodic; pad it if its edges are not ~0).
    shift : array (2,)
        ``(dy, dx)`` in pixels; positive values move the content up/right
        (towards larger indices).

    Returns
    -------
    jax.Array
        The shifted image, same shape and dtype.
    """
    h, w = image.shape[-2:]
    ky = jnp.fft.fftfreq(h)[:, None]
    kx = jnp.fft.rfftfreq(w)[None, :]
    phase = jnp.exp(-2j * jnp.pi * (ky * shift[0] + kx * shift[1]))
    out = jnp.fft.irfft2(jnp.fft.rfft2(image) * phase, s=(h, w))
    return out.astype(image.dtype)


def convolve_fft(image: Float[ArrayLike, "*batch h w"], kernel_fft: Complex[ArrayLike, "*kbatch fh fw"],
                 fft_shape) -> Float[Array, "*batch h w"]:
    """Convolve ``image`` (..., h, w) with a kernel given by its rfft2 on ``fft_shape``.

    The image is zero-padded to ``fft_shape`` (which must exceed the image by at
    least the kernel half-width on each axis to avoid wrap-around) and cropped
    back to its own shape.
    """
    h, w = image.shape[-2:]
    spec = jnp.fft.rfft2(image, s=fft_shape)
    out = jnp.fft.irfft2(spec * kernel_fft, s=fft_shape)
    return out[..., :h, :w].astype(image.dtype)
