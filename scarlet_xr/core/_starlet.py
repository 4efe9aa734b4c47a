"""Starlet (isotropic undecimated B3-spline à-trous wavelet) morphologies.

The starlet transform (Starck, Fadili & Murtagh 2007) of an image ``c_0``
smooths it repeatedly with the separable B3-spline kernel
``[1, 4, 6, 4, 1] / 16``, dilated by ``2^j`` at scale ``j`` (holes between
the taps), and keeps the differences:

    c_(j+1) = h_j * c_j,    w_(j+1) = c_j - c_(j+1),    j = 0 .. J - 1.

The coefficients are ``(w_1, ..., w_J, c_J)`` and the inverse transform is
their sum, so the reconstruction is exact whatever the boundary condition
(zero padding here: morphologies vanish at their box edges).
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._morphology import AbstractMorphology
from ._parameter import Parameter, default_float
from ._prior import AbstractPrior

__all__ = ["StarletMorphology", "StarletSparsity", "starlet_transform", "starlet_reconstruct"]

_B3 = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


def _smooth_axis(image, axis: int, step: int):
    """Convolve along ``axis`` with the B3 kernel dilated by ``step`` (zero padding)."""
    n = image.shape[axis]
    pad = [(0, 0)] * image.ndim
    pad[axis] = (2 * step, 2 * step)
    padded = jnp.pad(image, pad)
    out = 0.0
    for t, c in enumerate(_B3):
        out = out + c * jax.lax.slice_in_dim(padded, t * step, t * step + n, axis=axis)
    return out


def default_scales(shape) -> int:
    """Number of wavelet scales for a box: ``floor(log2(min(h, w))) - 1``, at least 1."""
    return max(1, int(math.floor(math.log2(min(shape)))) - 1)


def starlet_transform(image: Float[ArrayLike, "h w"], scales: int | None = None) -> Float[Array, "s h w"]:
    """Starlet coefficients ``(scales + 1, h, w)`` of an image: details, then the coarse scale.

    Parameters
    ----------
    image : array (h, w)
    scales : int, optional
        Number of detail scales ``J``; default ``floor(log2(min(h, w))) - 1``.

    Returns
    -------
    jax.Array
        ``(w_1, ..., w_J, c_J)``; their sum is the image.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``scales < 1``.

    Examples
    --------
    A delta function: the finest detail at its pixel is ``1 - (6/16)^2``.

    >>> import jax.numpy as jnp
    >>> img = jnp.zeros((9, 9)).at[4, 4].set(1.0)
    >>> c = starlet_transform(img, 2)
    >>> round(float(c[0, 4, 4]), 6), round(float(c.sum(0)[4, 4]), 6)
    (0.859375, 1.0)
    """
    image = jnp.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"starlet_transform needs a 2-D image (y, x); got shape {image.shape}")
    scales = default_scales(image.shape) if scales is None else int(scales)
    if scales < 1:
        raise ValueError(f"scales must be >= 1; got {scales}")
    coeffs = []
    c = image
    for j in range(scales):
        smooth = _smooth_axis(_smooth_axis(c, 0, 2**j), 1, 2**j)
        coeffs.append(c - smooth)
        c = smooth
    coeffs.append(c)
    return jnp.stack(coeffs)


def starlet_reconstruct(coefficients: Float[ArrayLike, "s h w"]) -> Float[Array, "h w"]:
    """Inverse starlet transform: the sum of all scales, ``(J + 1, h, w) -> (h, w)``."""
    return jnp.sum(jnp.asarray(coefficients), axis=0)


class StarletSparsity(AbstractPrior):
    """Weighted L1 sparsity prior on the detail scales of starlet coefficients.

    ``log p(c) = -weight * sum_j sum_pixels |w_j| / F``: the L1 norm of
    the detail coefficients ``w_1 .. w_J`` (the coarse scale is free) measured
    in units of the flux ``F = sum(max(sum_j c_j, 0))`` of the (clipped)
    image that :class:`StarletMorphology` renders, so the penalty does not
    change when the coefficients are rescaled (the spectrum carries the
    flux, and an unnormalised L1 would drive the coefficients to zero).

    Parameters
    ----------
    weight : float or array (J,)
        Strength per detail scale (a scalar applies to all), in units of the
        log-likelihood (``chi^2 / 2``): detail coefficients whose absolute
        values add up to a fraction ``f`` of the total flux cost
        ``weight * f``. The default 1 of :class:`StarletMorphology` is mild
        (a bright source's ``chi^2`` changes by far more when its shape
        changes); raise it to the order of the source's ``(S/N)^2 / 100`` to
        smooth away faint structure. 0 turns the prior off.
    """

    weight: jax.Array

    def __init__(self, weight=1.0):
        w = np.asarray(weight, float)
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"sparsity weight must be finite and >= 0; got {weight}")
        self.weight = jnp.asarray(w, dtype=default_float())

    def log_prob(self, x):
        """Return ``-sum_j weight_j ||w_j||_1 / F`` (``F`` the flux of the clipped image)."""
        details = jnp.sum(jnp.abs(x[:-1]), axis=(-2, -1))
        flux = jnp.maximum(jnp.sum(jnp.maximum(starlet_reconstruct(x), 0.0)), 1e-30)
        return -jnp.sum(self.weight * details) / flux


class StarletMorphology(AbstractMorphology):
    """A free-form image parameterised by its starlet coefficients, sparse by prior.

    The image is ``max(sum of coefficients, 0)`` normalised to unit sum (the
    flux is carried by the spectrum). Positivity is by clipping with a
    straight-through gradient: the value is clipped, but the gradient is that
    of the unclipped reconstruction, so a pixel that went negative during a
    fit is pulled back by the data rather than frozen at zero (a projected
    gradient step, as in scarlet's proximal fits). Gradient-based samplers see
    the same surrogate gradient; sample starlet morphologies with care.
    The coefficients carry a :class:`StarletSparsity` prior. Like
    :class:`FreeFormMorphology` the box is anchored on a pixel of the model
    frame and sub-pixel offsets are absorbed by the coefficients.

    Parameters
    ----------
    image : array (h, w) or Parameter
        Initial image (odd sizes, >= 0), or a coefficient Parameter of shape
        ``(scales + 1, h, w)``. The coefficients are stored for an image of
        peak 1, so ``step`` is a fraction of the peak.
    scales : int, optional
        Number of detail scales; default ``floor(log2(min(h, w))) - 1``.
    sparsity : float or array (scales,)
        Weight of the :class:`StarletSparsity` prior (see there); 0 for none.
    step : float
        Natural step of the coefficients.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> y, x = np.mgrid[:15, :15] - 7
    >>> m = StarletMorphology(np.exp(-(y**2 + x**2) / 8.0))
    >>> img = m(jnp.zeros(2))
    >>> m.coefficients.shape, round(float(img.sum()), 5)
    ((3, 15, 15), 1.0)
    """

    coefficients: Parameter
    shape: tuple[int, int] = eqx.field(static=True)
    pixel_anchored: ClassVar[bool] = True

    def __init__(self, image, *, scales: int | None = None, sparsity=1.0, step: float = 0.03):
        if isinstance(image, Parameter):
            if len(image.shape) != 3:
                raise ValueError(f"starlet coefficients must be (scales + 1, h, w); got shape {image.shape}")
            self.coefficients = image
        else:
            arr = np.asarray(image, dtype=float)
            if arr.ndim != 2:
                raise ValueError(f"starlet image must be 2-D (y, x); got shape {arr.shape}")
            if arr.shape[0] % 2 == 0 or arr.shape[1] % 2 == 0:
                raise ValueError(f"starlet image must have odd sizes; got {arr.shape}")
            if not np.all(np.isfinite(arr)) or np.any(arr < 0) or not arr.max() > 0:
                raise ValueError("starlet image must be finite, >= 0 and not all zero")
            coeffs = np.asarray(starlet_transform(jnp.asarray(arr / arr.max()), scales), float)
            prior = StarletSparsity(sparsity) if np.any(np.asarray(sparsity) > 0) else None
            self.coefficients = Parameter(coeffs, prior=prior, step=step)
        self.shape = tuple(int(s) for s in self.coefficients.shape[1:])

    @property
    def scales(self) -> int:
        """Number of detail scales."""
        return self.coefficients.shape[0] - 1

    def __call__(self, offset):
        """Return the clipped reconstruction normalised to unit sum (the offset is ignored)."""
        raw = starlet_reconstruct(self.coefficients.value)
        img = raw + jax.lax.stop_gradient(jnp.maximum(raw, 0.0) - raw)
        return img / jnp.maximum(jnp.sum(img), 1e-30)
