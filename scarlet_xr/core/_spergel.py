"""The Spergel (2010) profile, rendered exactly in Fourier space.

The surface brightness is ``I(r) ∝ (r / r0)^nu K_nu(r / r0)`` (``K_nu`` the
modified Bessel function of the second kind). Its Fourier transform is

    I~(k) = (1 + (k r0)^2)^-(1 + nu),

normalised to unit total flux (``I~(0) = 1``). ``nu = 0.5`` is the
exponential disk; ``nu -> inf`` tends to a Gaussian; ``nu < 0`` has a cusp
(de Vaucouleurs-like profiles are ``nu ≈ -0.6``).

The half-light radius is ``r_half = x_half(nu) r0``, where ``x = x_half``
solves ``2 (x / 2)^(nu + 1) K_(nu + 1)(x) = Gamma(nu + 1) / 2`` (the enclosed
flux is ``1 - 2 (x / 2)^(nu + 1) K_(nu + 1)(x) / Gamma(nu + 1)``). It is
computed by Newton's method in ``log x`` from a polynomial first guess, with
``K`` from its integral ``∫_0^∞ exp(-x cosh t) cosh(nu t) dt`` by the
(exponentially accurate) trapezoidal rule, so it is differentiable in ``nu``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from ._constraints import Interval, LogPositive
from ._fft import fast_size
from ._morphology import AbstractMorphology, odd_box
from ._parameter import Parameter

__all__ = ["SpergelMorphology", "spergel_radius"]

NU_RANGE = (-0.85, 4.0)
"""Open interval of the index ``nu`` (as in GalSim)."""

# trapezoidal nodes of K_nu(x) = int_0^inf exp(-x cosh t) cosh(nu t) dt (relative error < 1e-12
# for 1e-3 < x < 20, nu < 5)
_T = np.arange(0.0, 12.0 + 1e-9, 0.1)
_LOG_W = np.log(np.where(_T == 0, 0.05, 0.1))
# log(x_half) as a polynomial in log(nu + 1), |error| < 0.016 on NU_RANGE (Newton polishes it)
_XHALF_POLY = (-0.01640141, 0.05393699, -0.11365638, 0.74428858, 0.22932627)
_NEWTON_STEPS = 5


def _log_kv(nu, x, xp):
    """``log K_nu(x)`` (x > 0) by the trapezoidal rule, with ``xp`` numpy or jax.numpy."""
    t = xp.asarray(_T)
    a = xp.abs(nu * t)
    log_cosh = a + xp.log1p(xp.exp(-2 * a)) - math.log(2.0)
    terms = -x[..., None] * xp.cosh(t) + log_cosh + xp.asarray(_LOG_W)
    top = xp.max(terms, axis=-1, keepdims=True)
    return top[..., 0] + xp.log(xp.sum(xp.exp(terms - top), axis=-1))


def _log_outer(nu, x, xp):
    """``log[2 (x/2)^(nu+1) K_(nu+1)(x) / Gamma(nu+1)]``: log of the flux fraction outside ``x r0``."""
    from math import lgamma

    lg = lgamma(float(nu) + 1.0) if xp is np else gammaln(nu + 1.0)
    return math.log(2.0) + (nu + 1.0) * xp.log(x / 2.0) + _log_kv(nu + 1.0, x, xp) - lg


def spergel_radius(nu, fraction=0.5):
    """Radius enclosing ``fraction`` of the flux of a Spergel profile, in units of ``r0``.

    Differentiable in ``nu`` (Newton's method in ``log x``, unrolled).

    Parameters
    ----------
    nu : float or array
        Spergel index in (-0.85, 4).
    fraction : float
        Enclosed flux fraction in (0, 1); 0.5 gives ``r_half / r0``.

    Returns
    -------
    jax.Array
        ``x`` with ``r = x r0``.

    Examples
    --------
    The exponential disk (``nu = 0.5``) has ``r_half = 1.67835 r0``:

    >>> round(float(spergel_radius(0.5)), 4)
    1.6783
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must lie in (0, 1); got {fraction}")
    nu = jnp.asarray(nu)
    target = math.log(1.0 - float(fraction))
    u = jnp.polyval(jnp.asarray(_XHALF_POLY, nu.dtype), jnp.log1p(nu))
    # the outer fraction is concave and decreasing in u = log x: Newton converges monotonically
    # after at most one overshoot; far from r_half the steps are clipped to one e-fold
    steps = _NEWTON_STEPS if fraction == 0.5 else 4 * _NEWTON_STEPS
    for _ in range(steps):
        x = jnp.exp(u)[None]
        g = _log_outer(nu, x, jnp)[0] - target
        # d/du log[(x/2)^(nu+1) K_(nu+1)(x)] = -x K_nu(x) / K_(nu+1)(x)
        dg = -x[0] * jnp.exp(_log_kv(nu, x, jnp)[0] - _log_kv(nu + 1.0, x, jnp)[0])
        u = u - jnp.clip(g / dg, -1.0, 1.0)
    return jnp.exp(u)


def _enclosing_radius_np(nu: float, fraction: float) -> float:
    """``x`` enclosing ``fraction`` of the flux (numpy bisection in log x; set-up only)."""
    lo, hi = math.log(1e-4), math.log(200.0)
    target = math.log(1.0 - fraction)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        outer = float(_log_outer(nu, np.asarray([math.exp(mid)]), np)[0])
        lo, hi = (mid, hi) if outer > target else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def _alias_weights(m: int, taper: int) -> np.ndarray:
    """Weights of alias orders ``-m..m``: 1 inside, a binomial (Euler) taper on the last ``taper``."""
    w = np.ones(2 * m + 1)
    if taper > 0:
        p = np.array([math.comb(taper, j) for j in range(taper + 1)], float) / 2.0**taper
        tail = 1.0 - np.cumsum(p)[:-1]  # inner to outer
        w[-taper:] = tail
        w[:taper] = tail[::-1]
    return w


class SpergelMorphology(AbstractMorphology):
    """Elliptical Spergel profile with unit total flux, rendered in Fourier space.

    The image is exact up to float precision and two controlled truncations:
    the pixel-integrated profile (Fourier transform times the pixel sinc, the
    sub-pixel offset a Fourier phase, the ellipticity a shear of ``k``) is
    sampled at pixel centres by summing its Fourier transform over
    ``(2 aliases + 1)^2`` alias orders (with a binomial end taper that
    accelerates the alternating sum) and transformed on a grid twice the box,
    so flux from the wings does not wrap into the box. As for
    :class:`SersicMorphology`, the normalisation is to unit *total* flux: the
    box sum is below 1 by the flux outside the box, and the spectrum is the
    total flux.

    Parameters
    ----------
    nu : float or Parameter
        Spergel index in the open interval (-0.85, 4); 0.5 is an exponential
        disk, about -0.6 a de Vaucouleurs profile, large values tend to a Gaussian.
    r_half : float or Parameter
        Half-light radius (geometric mean of the axes) in pixels, > 0.
    ellipticity : (e1, e2) or Parameter
        Reduced shear ``(g1, g2)``, each in (-0.7, 0.7) (GalSim's ``shear(g1, g2)``).
    shape : int or (int, int), optional
        Box size; default ``2 ceil(R) + 1`` (at least 11) with ``R`` the
        radius enclosing 99 % of the flux, at most ``10 r_half``.
    aliases : int, optional
        Alias orders summed per axis; default 8 for ``nu >= 0`` and 16 for
        ``nu < 0`` (cusps converge slowly). Errors against GalSim: below
        1e-4 of the peak for ``nu >= 0``, below 5e-4 for ``nu = -0.6``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m = SpergelMorphology(0.5, 2.0, (0.1, -0.2), shape=41)
    >>> img = m(jnp.array([0.25, -0.1]))
    >>> img.shape, round(float(img.sum()), 3)
    ((41, 41), 1.0)
    """

    nu: Parameter
    r_half: Parameter
    ellipticity: Parameter
    intrinsic: ClassVar[bool] = True
    shape: tuple[int, int] = eqx.field(static=True)
    aliases: int = eqx.field(static=True)

    def __init__(self, nu=0.5, r_half=2.0, ellipticity=(0.0, 0.0), *, shape=None, aliases: int | None = None):
        self.nu = nu if isinstance(nu, Parameter) else Parameter(nu, Interval(*NU_RANGE), step=0.05)
        self.r_half = r_half if isinstance(r_half, Parameter) else Parameter(r_half, LogPositive(), step=0.03)
        self.ellipticity = (
            ellipticity
            if isinstance(ellipticity, Parameter)
            else Parameter(ellipticity, Interval(-0.7, 0.7), step=0.05)
        )
        if self.ellipticity.shape != (2,):
            raise ValueError(f"ellipticity must be (e1, e2); got shape {self.ellipticity.shape}")
        nu0 = float(self.nu.value)
        if shape is None:
            ratio = _enclosing_radius_np(nu0, 0.99) / _enclosing_radius_np(nu0, 0.5)
            radius = min(ratio, 10.0) * float(self.r_half.value)
            shape = max(11, 2 * int(math.ceil(radius)) + 1)
        self.shape = odd_box(shape)
        if aliases is None:
            aliases = 8 if nu0 >= 0 else 16
        if int(aliases) < 1:
            raise ValueError(f"aliases must be >= 1; got {aliases}")
        self.aliases = int(aliases)

    def __call__(self, offset):
        """Return the pixel-integrated profile centred at ``(h // 2, w // 2) + offset``."""
        h, w = self.shape
        ny, nx = fast_size(2 * h), fast_size(2 * w)
        m = self.aliases
        dtype = self.r_half.raw.dtype
        ctype = jnp.result_type(dtype, jnp.complex64)
        weights = _alias_weights(m, min(m // 2, 6))
        orders = np.arange(-m, m + 1)
        # base frequencies (cycles / pixel) plus alias orders: (ny, my) and (nxr, mx)
        fy = (np.fft.fftfreq(ny)[:, None] + orders[None, :]).astype(dtype)
        fx = (np.fft.rfftfreq(nx)[:, None] + orders[None, :]).astype(dtype)
        nu = self.nu.value
        r0 = self.r_half.value / spergel_radius(nu)
        g1, g2 = self.ellipticity.value[0], self.ellipticity.value[1]
        scale = 2 * jnp.pi * r0 / jnp.sqrt(1.0 - g1**2 - g2**2)
        ky = jnp.asarray(fy)[:, None, :, None] * scale
        kx = jnp.asarray(fx)[None, :, None, :] * scale
        ux = (1 + g1) * kx + g2 * ky
        uy = g2 * kx + (1 - g1) * ky
        profile = jnp.exp(-(1.0 + nu) * jnp.log1p(ux**2 + uy**2))
        offset = jnp.asarray(offset, dtype)
        # pixel sinc, taper weights and the alias part of the sub-pixel phase, per axis
        ay = jnp.asarray(np.sinc(fy) * weights[None, :]) * jnp.exp(-2j * jnp.pi * orders * offset[0])[None, :]
        ax = jnp.asarray(np.sinc(fx) * weights[None, :]) * jnp.exp(-2j * jnp.pi * orders * offset[1])[None, :]
        spec = jnp.einsum("abij,ai,bj->ab", profile.astype(ctype), ay.astype(ctype), ax.astype(ctype))
        cy, cx = h // 2 + offset[0], w // 2 + offset[1]
        phase = jnp.exp(
            -2j * jnp.pi * (jnp.asarray(fy[:, m])[:, None] * cy + jnp.asarray(fx[:, m])[None, :] * cx)
        )
        img = jnp.fft.irfft2(spec * phase.astype(ctype), s=(ny, nx))
        return img[:h, :w].astype(dtype)

    @property
    def kind(self) -> str:
        """``"spergel"``."""
        return "spergel"
