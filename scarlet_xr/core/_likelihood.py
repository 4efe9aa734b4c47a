"""Gaussian log-likelihood with per-pixel inverse-variance weights."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._device import to_device
from ._model import SceneModel
from ._parameter import default_float
from ._render import AbstractRenderer, ConvolutionRenderer

__all__ = [
    "GaussianLikelihood", "CorrelatedGaussianLikelihood", "noise_power_spectrum", "render_observations",
    "log_likelihood", "SKY_MODELS",
]

SKY_MODELS = ("constant", "plane")
"""Fitted backgrounds a likelihood can profile out: a level per band, or a level and a
gradient (a plane) per band."""


class GaussianLikelihood(eqx.Module):
    """``log L = -1/2 sum w (d - R(m))^2`` for one observation.

    Pixels with weight 0 are masked. Weights must be finite and >= 0; data
    must be finite where the weight is positive (non-finite data at weight 0
    is replaced by 0).

    Parameters
    ----------
    data : array (band, y, x)
    weights : array (band, y, x)
        Inverse variance; 0 masks a pixel.
    renderer : AbstractRenderer
        Maps the model cube into this observation.
    sky : {None, "constant", "plane"}
        A background per band fitted with the model, of either sign: for any
        model the weighted least-squares sky of the residual (a level, or a
        level and a gradient in y and x) is subtracted before chi^2 (the sky
        is profiled out: exact for a Gaussian likelihood, no extra
        parameters). Default None: no sky (the data are background-subtracted).
    epoch : int, optional
        Index of this observation's epoch in the model's epochs: a model with
        variable sources is ``(epoch, band, y, x)`` and this likelihood uses
        ``model[epoch]``. None: the observation has no epoch (a model with
        an epoch axis is then refused).
    """

    data: jax.Array
    weights: jax.Array
    renderer: AbstractRenderer
    sky: str | None = eqx.field(static=True)
    epoch: int | None = eqx.field(static=True)

    def __init__(self, data, weights, renderer, sky: str | None = None, epoch: int | None = None):
        data = np.asarray(data, dtype=float)
        weights = np.asarray(weights, dtype=float)
        if data.ndim != 3:
            raise ValueError(f"data must have dims (band, y, x); got shape {data.shape}")
        if weights.shape != data.shape:
            raise ValueError(f"weights must match data shape {data.shape}; got {weights.shape}")
        if not np.all(np.isfinite(weights)):
            raise ValueError("weights must be finite (use 0 to mask pixels)")
        if np.any(weights < 0):
            raise ValueError(f"weights must be >= 0; got minimum {weights.min():.4g}")
        bad = ~np.isfinite(data)
        if np.any(bad & (weights > 0)):
            raise ValueError(
                f"data has {int(np.sum(bad & (weights > 0)))} non-finite pixels with positive weight"
            )
        dt = default_float()
        self.data = to_device(np.where(bad, 0.0, data), dtype=dt)
        self.weights = to_device(weights, dtype=dt)
        self.renderer = renderer
        if sky is not None and sky not in SKY_MODELS:
            raise ValueError(f"sky must be None or one of {SKY_MODELS}; got {sky!r}")
        self.sky = sky
        if epoch is not None and (int(epoch) != epoch or epoch < 0):
            raise ValueError(f"epoch must be a non-negative index; got {epoch!r}")
        self.epoch = None if epoch is None else int(epoch)

    def render(self, model_cube):
        """The model in this observation: ``R(model)`` (of this epoch's model for a time-resolved model)."""
        if model_cube.ndim == 4:
            if self.epoch is None:
                raise ValueError(
                    "the model has an epoch axis (variable sources) but this observation has no epoch; "
                    "give every observation an `epoch` coordinate"
                )
            if self.epoch >= model_cube.shape[0]:
                raise ValueError(f"observation epoch index {self.epoch} is outside the model's "
                                 f"{model_cube.shape[0]} epochs")
            model_cube = model_cube[self.epoch]
        return self.renderer(model_cube)

    def _sky_basis(self):
        """Sky basis images ``(k, y, x)``: ones (and centred y, x in units of the image size)."""
        ny, nx = self.data.shape[-2:]
        dt = self.data.dtype
        ones = jnp.ones((ny, nx), dt)
        if self.sky == "constant":
            return ones[None]
        y = (jnp.arange(ny, dtype=dt) - (ny - 1) / 2) / max(ny, 1)
        x = (jnp.arange(nx, dtype=dt) - (nx - 1) / 2) / max(nx, 1)
        return jnp.stack([ones, jnp.broadcast_to(y[:, None], (ny, nx)),
                          jnp.broadcast_to(x[None, :], (ny, nx))])

    def _fit_sky(self, r):
        """Weighted least-squares sky of the residual ``r``: coefficients ``(band, k)``, image."""
        basis = self._sky_basis()
        w = self.weights
        a = jnp.einsum("byx,iyx,jyx->bij", w, basis, basis)
        rhs = jnp.einsum("byx,iyx,byx->bi", w, basis, r)
        # a fully masked band has no sky (a tiny ridge keeps the solve finite)
        ridge = 1e-9 * (jnp.max(jnp.diagonal(a, axis1=1, axis2=2), axis=1) + 1e-30)
        a = a + ridge[:, None, None] * jnp.eye(basis.shape[0], dtype=a.dtype)
        coef = jnp.linalg.solve(a, rhs[..., None])[..., 0]
        return coef, jnp.einsum("bi,iyx->byx", coef, basis)

    def sky_coefficients(self, model_cube):
        """The fitted sky per band for ``model_cube``: ``(band, k)``.

        ``k`` = 1 (level) for ``sky="constant"``; 3 (level, then the change
        across the image height and width) for ``"plane"``. Zeros without a sky.
        """
        if self.sky is None:
            return jnp.zeros((self.data.shape[0], 1), self.data.dtype)
        return self._fit_sky(self.data - self.render(model_cube))[0]

    def sky_image(self, model_cube):
        """The fitted sky for ``model_cube`` on the observation grid ``(band, y, x)``."""
        if self.sky is None:
            return jnp.zeros_like(self.data)
        return self._fit_sky(self.data - self.render(model_cube))[1]

    def sky_from(self, rendered):
        """The fitted sky ``(coefficients (band, k), image (band, y, x))`` for a model already in
        this observation (zeros without a sky; see :meth:`sky_coefficients`)."""
        if self.sky is None:
            return jnp.zeros((self.data.shape[0], 1), self.data.dtype), jnp.zeros_like(self.data)
        return self._fit_sky(self.data - rendered)

    def residual(self, model_cube):
        """Return ``data - R(model)`` (less the fitted sky, when there is one) on the observation grid."""
        return self.residual_from(self.render(model_cube))

    def residual_from(self, rendered):
        """:meth:`residual` of a model already in this observation (``rendered``, e.g. from
        :func:`render_observations`)."""
        r = self.data - rendered
        if self.sky is None:
            return r
        return r - self._fit_sky(r)[1]

    def chi2(self, model_cube):
        """Return ``sum w (d - R(m))^2``."""
        return self.chi2_from(self.render(model_cube))

    def chi2_from(self, rendered):
        """:meth:`chi2` of a model already in this observation."""
        r = self.residual_from(rendered)
        return jnp.sum(self.weights * r * r)

    def __call__(self, model_cube):
        """Return the log-likelihood (up to a constant)."""
        return -0.5 * self.chi2(model_cube)

    def log_likelihood_from(self, rendered):
        """The log-likelihood (up to a constant) of a model already in this observation."""
        return -0.5 * self.chi2_from(rendered)

    @property
    def num_valid(self) -> jax.Array:
        """Number of unmasked pixels."""
        return jnp.sum(self.weights > 0)


def noise_power_spectrum(kernel, shape, floor: float = 1e-3) -> np.ndarray:
    """Power spectrum ``P(k)`` of stationary noise with autocovariance ``kernel`` on a periodic grid.

    Parameters
    ----------
    kernel : array (band, kh, kw) or (kh, kw)
        Autocovariance ``xi(dy, dx)`` of the *whitened* noise ``sqrt(w) n``
        (odd sizes, lag 0 at the centre; ``xi(0) = 1`` when the weights are
        the inverse pixel variance). It is symmetrised.
    shape : (ny, nx)
        Image shape (each at least the kernel's).
    floor : float
        ``P`` is clipped below at ``floor * max(P)`` (an estimated kernel
        can have small negative power; modes with almost no noise would
        otherwise get unbounded weight).

    Returns
    -------
    numpy.ndarray (band, ny, nx)
        Real, positive; 1 everywhere for white noise (``kernel`` a unit delta).

    Raises
    ------
    ValueError
        If the kernel is not 2-D/3-D with odd sizes no larger than ``shape``,
        not finite, or its centre is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> delta = np.zeros((3, 3)); delta[1, 1] = 1.0
    >>> bool(np.allclose(noise_power_spectrum(delta, (8, 8)), 1.0))
    True
    """
    k = np.asarray(kernel, dtype=float)
    if k.ndim == 2:
        k = k[None]
    ny, nx = (int(s) for s in shape)
    if k.ndim != 3 or k.shape[1] % 2 == 0 or k.shape[2] % 2 == 0:
        raise ValueError(
            f"noise correlation kernel must be (band, kh, kw) with odd kh, kw; got shape {k.shape}"
        )
    if k.shape[1] > ny or k.shape[2] > nx:
        raise ValueError(f"noise correlation kernel {k.shape[1:]} is larger than the image {(ny, nx)}")
    if not np.all(np.isfinite(k)):
        raise ValueError("noise correlation kernel must be finite")
    hy, hx = k.shape[1] // 2, k.shape[2] // 2
    if not np.all(k[:, hy, hx] > 0):
        raise ValueError(f"noise correlation kernel must have a positive centre (lag 0); got {k[:, hy, hx]}")
    k = 0.5 * (k + k[:, ::-1, ::-1])
    grid = np.zeros((k.shape[0], ny, nx))
    grid[:, : k.shape[1], : k.shape[2]] = k
    grid = np.roll(grid, (-hy, -hx), axis=(1, 2))  # lag 0 at pixel (0, 0)
    power = np.real(np.fft.fft2(grid))
    return np.maximum(power, floor * power.max(axis=(1, 2), keepdims=True))


class CorrelatedGaussianLikelihood(GaussianLikelihood):
    """Gaussian log-likelihood for stationary correlated noise, evaluated in Fourier space.

    The residual is whitened by the per-pixel weights, ``z = sqrt(w) (d - R(m))``
    (masked pixels, ``w = 0``, contribute 0), and

    ``chi2 = sum_k |FFT(z)(k)|^2 / P(k) / (ny nx)``

    with ``P`` the power spectrum of the whitened noise (the FFT of its
    autocovariance ``kernel``; see :func:`noise_power_spectrum`). This is
    ``z^T C^-1 z`` for the circulant covariance ``C`` of that kernel, exact
    for stationary noise away from the image edges and masks; for white
    noise (``kernel`` a unit delta) it equals ``sum w r^2`` (Parseval).

    Parameters
    ----------
    data, weights, renderer
        As :class:`GaussianLikelihood`.
    kernel : array (band, kh, kw)
        Autocovariance of the whitened noise per band (odd sizes, lag 0 at
        the centre).

    Raises
    ------
    ValueError
        As :class:`GaussianLikelihood`, or a kernel of the wrong shape.

    Examples
    --------
    With a unit-delta kernel the likelihood is the white one:

    >>> import numpy as np
    >>> from scarlet_xr.core import ConvolutionRenderer, GaussianLikelihood
    >>> psf = np.zeros((1, 3, 3)); psf[0, 1, 1] = 1.0
    >>> r = ConvolutionRenderer((1, 8, 8), (1, 8, 8), (0,), psf, psf[0])
    >>> d = np.random.default_rng(0).normal(size=(1, 8, 8)); w = np.ones_like(d)
    >>> k = np.zeros((1, 3, 3)); k[0, 1, 1] = 1.0
    >>> m = np.zeros((1, 8, 8))
    >>> lik = CorrelatedGaussianLikelihood(d, w, r, k)
    >>> bool(np.isclose(lik.chi2(m), GaussianLikelihood(d, w, r).chi2(m), rtol=1e-5))
    True
    """

    kernel: jax.Array
    inverse_power: jax.Array

    def __init__(self, data, weights, renderer, kernel, sky: str | None = None, epoch: int | None = None):
        super().__init__(data, weights, renderer, sky=sky, epoch=epoch)
        k = np.asarray(kernel, dtype=float)
        nb = self.data.shape[0]
        if k.ndim != 3 or k.shape[0] != nb:
            raise ValueError(
                f"noise correlation kernel must have shape ({nb}, kh, kw) (one per band); got {k.shape}"
            )
        power = noise_power_spectrum(k, self.data.shape[1:])
        dt = self.data.dtype
        self.kernel = to_device(k, dtype=dt)
        self.inverse_power = to_device(1.0 / power, dtype=dt)

    def chi2_from(self, rendered):
        """Return ``sum_k |FFT(sqrt(w) r)|^2 / P(k) / N`` for a model already in this observation."""
        z = jnp.sqrt(self.weights) * self.residual_from(rendered)
        zk = jnp.fft.fft2(z)
        n = z.shape[-1] * z.shape[-2]
        return jnp.sum((zk.real**2 + zk.imag**2) * self.inverse_power) / n


def _fusable(model, lik) -> bool:
    """Whether ``lik`` can render ``model``'s layers (see :func:`render_observations`)."""
    r = getattr(lik, "renderer", None)
    return (isinstance(model, SceneModel) and isinstance(r, ConvolutionRenderer)
            and getattr(lik, "epoch", None) is None and not model.num_epochs and model.psf is not None
            and model.margin == r.margin and tuple(model.shape[1:]) == r.frame_shape)


def render_observations(model, likelihoods) -> list:
    """The model in each likelihood's observation, as a fit sees it.

    Observations on the model frame's grid
    (:class:`~scarlet_xr.core.ConvolutionRenderer`) of a static
    :class:`~scarlet_xr.core.SceneModel` with a model PSF get the model's
    layers (:meth:`~scarlet_xr.core.SceneModel.layers`): the intrinsic light
    is convolved with the model PSF and the difference kernel in one Fourier
    transform, and the light the model PSF spreads up to its half-width
    beyond the frame is kept (the wider observed PSF brings part of it back
    onto the frame's edge pixels). Other observations (resampled, with
    epochs) render the model cube ``model()``, computed once (from the same
    layers, :meth:`~scarlet_xr.core.SceneModel.cube_from_layers`, when
    same-grid observations made them).

    Parameters
    ----------
    model : SceneModel or callable
        Returns the model cube when called.
    likelihoods : sequence of GaussianLikelihood

    Returns
    -------
    list of jax.Array
        One ``(band, y, x)`` model per likelihood, in its observation's pixels
        (before any fitted sky).
    """
    fusable = [_fusable(model, lik) for lik in likelihoods]
    layers = model.layers() if any(fusable) else None
    cube = None
    out = []
    for lik, fused in zip(likelihoods, fusable, strict=True):
        if fused:
            out.append(lik.renderer.render_layers(*layers))
        else:
            if cube is None:  # (from the layers when there are some: the sources placed once)
                cube = model() if layers is None else model.cube_from_layers(*layers)
            out.append(lik.render(cube))
    return out


def log_likelihood(model, likelihoods) -> jax.Array:
    """``sum(log L)`` of ``model`` over ``likelihoods``, rendered as a fit sees it.

    :class:`GaussianLikelihood` terms take the model from
    :func:`render_observations`; any other likelihood (a callable of the
    model cube, e.g. a user's own) gets ``model()``, computed once.

    Parameters
    ----------
    model : SceneModel or callable
    likelihoods : sequence
        :class:`GaussianLikelihood` or callables ``lik(cube) -> log L``.

    Returns
    -------
    jax.Array
        A scalar.
    """
    likelihoods = tuple(likelihoods)
    gauss = [lik for lik in likelihoods if isinstance(lik, GaussianLikelihood)]
    total = 0.0
    for lik, rendered in zip(gauss, render_observations(model, gauss), strict=True):
        total = total + lik.log_likelihood_from(rendered)
    others = [lik for lik in likelihoods if not isinstance(lik, GaussianLikelihood)]
    if others:
        cube = model()
        for lik in others:
            total = total + lik(cube)
    return total if likelihoods else jnp.zeros(())
