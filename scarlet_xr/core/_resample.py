"""Resampling renderer: model frame -> an observation grid of another scale/orientation.

The model cube ``m`` holds samples (at model-pixel centres) of the sky convolved
with the narrow model PSF ``p_m``. An observation pixel ``i`` at model-frame
position ``x_i`` records ``|det J| (sky * p_o)(x_i)``, where ``p_o`` is the
observation's (pixel-integrated) PSF expressed as a density in model pixels and
``J`` the Jacobian of the observation -> model pixel map. In Fourier space::

    obs_i = |det J| sum_k m^(k) D^(k) exp(2 pi i k . x_i),   D^ = p_o^ / p_m^

``p_o^(k) = f^(J^T k)``: the DFT of the observation PSF image ``f`` evaluated
at the model frequencies mapped to the observation's pixel axes, and zero
outside the observation's Nyquist band (the data carry no information there).
This band is small when the observation is coarser than the model, so the
renderer

1. takes a *pruned* FFT of the model: an rfft along x of which only the
   ``|k_x| <= K_x`` columns are kept, then an FFT along y of those columns;
2. multiplies the kept block by ``D^`` (precomputed once);
3. evaluates the band-limited result at the observation pixel centres:
   exactly, by two small complex matrices (an inverse DFT at the row and
   column positions), when the observation axes are parallel to the model
   axes ("separable"; "taylor" adds a first-order correction for tiny
   rotations such as two north-up frames with different tangent points);
   otherwise ("gather") the NUFFT way: a small inverse FFT onto an
   oversampled grid, then Gaussian-kernel taps whose Fourier response is
   divided out beforehand (deapodisation, folded into ``D^``), accurate to
   ~1e-5 where a Lanczos kernel gives ~1e-3.

Everything that depends only on frames and PSFs is computed in ``__init__``
with numpy; ``__call__`` is a few FFTs, an element-wise product and a small
linear map, all differentiable.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Real

from ._fft import fast_size
from ._parameter import default_complex, default_float
from ._render import AbstractRenderer

__all__ = ["ResamplingRenderer", "psf_core_width", "psf_spectrum", "affine_from_coords"]


def psf_spectrum(psf, jacobian, freqs_y, freqs_x, *, chunk: int = 2048) -> np.ndarray:
    """DFT of PSF images mapped through ``jacobian``, on a grid of model frequencies.

    Evaluates ``f^(J^T k) = sum_u f[u] exp(-2 pi i k . J (u - c))`` for
    ``k = (freqs_y[a], freqs_x[b])`` (cycles per model pixel), with ``c`` the
    central pixel of each PSF image. For every PSF pixel the phase is an outer
    product of a y and an x factor, so the sum is a matrix product (chunked).

    Parameters
    ----------
    psf : array (band, h, w)
        PSF images on their own pixel grid (odd sizes).
    jacobian : array (2, 2)
        ``d(model y, x) / d(psf-grid y, x)``.
    freqs_y, freqs_x : 1-D arrays
        Model frequencies in cycles per model pixel.
    chunk : int
        PSF pixels per matrix product.

    Returns
    -------
    numpy.ndarray complex128 (band, len(freqs_y), len(freqs_x))
    """
    psf = np.asarray(psf, float)
    nb, h, w = psf.shape
    jac = np.asarray(jacobian, float)
    uy, ux = np.mgrid[:h, :w]
    uy = (uy - h // 2).ravel().astype(float)
    ux = (ux - w // 2).ravel().astype(float)
    a = jac[0, 0] * uy + jac[0, 1] * ux  # model-frame y offset of each PSF pixel
    b = jac[1, 0] * uy + jac[1, 1] * ux  # model-frame x offset
    vals = psf.reshape(nb, -1)
    keep = np.any(vals != 0, axis=0)
    a, b, vals = a[keep], b[keep], vals[:, keep]
    fy = np.asarray(freqs_y, float)
    fx = np.asarray(freqs_x, float)
    out = np.zeros((nb, fy.size, fx.size), complex)
    for s in range(0, a.size, chunk):
        ey = np.exp(-2j * np.pi * np.outer(fy, a[s : s + chunk]))  # (ky, u)
        ex = np.exp(-2j * np.pi * np.outer(b[s : s + chunk], fx))  # (u, kx)
        out += np.einsum("ku,bu,uq->bkq", ey, vals[:, s : s + chunk], ex, optimize=True)
    return out


def psf_core_width(psf: Real[ArrayLike, "*band h w"], jacobian: Real[ArrayLike, "2 2"] | None = None
                   ) -> Float[np.ndarray, " n"]:
    """Core width of PSF images in model pixels, from their peak value.

    For a unit-integral Gaussian the peak density is ``1 / (2 pi sigma^2)``;
    this returns ``sigma = sqrt(|det J| / (2 pi max f))`` per band, a measure
    of the core that ignores extended wings.

    Parameters
    ----------
    psf : array (band, h, w) or (h, w)
        Unit-sum PSF images.
    jacobian : array (2, 2), optional
        Model pixels per PSF pixel (default identity).

    Returns
    -------
    numpy.ndarray (band,)
    """
    psf = np.asarray(psf, float)
    if psf.ndim == 2:
        psf = psf[None]
    det = 1.0 if jacobian is None else abs(float(np.linalg.det(np.asarray(jacobian, float))))
    peak = psf.max(axis=(-2, -1)) / psf.sum(axis=(-2, -1))
    return np.sqrt(det / (2 * np.pi * peak))


def affine_from_coords(coords) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine map ``model = J @ (i, j) + offset`` from pixel-centre coordinates.

    Parameters
    ----------
    coords : array (2, h, w)
        Model-frame ``(y, x)`` of every observation pixel centre.

    Returns
    -------
    jacobian : numpy.ndarray (2, 2)
    offset : numpy.ndarray (2,)
    """
    coords = np.asarray(coords, float)
    _, h, w = coords.shape
    ii, jj = np.mgrid[:h, :w]
    design = np.stack([ii.ravel(), jj.ravel(), np.ones(h * w)], axis=1)
    sol, *_ = np.linalg.lstsq(design, coords.reshape(2, -1).T, rcond=None)
    return sol[:2].T.copy(), sol[2].copy()


def _gauss_taps(t, n, sigma, support):
    """Gaussian interpolation taps at positions ``t`` (grid units): indices (mod ``n``), weights."""
    base = np.floor(t).astype(int)
    offs = np.arange(-support + 1, support + 1)
    idx = base[:, None] + offs[None, :]
    d = t[:, None] - idx
    wts = np.exp(-0.5 * (d / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)
    return np.mod(idx, n), wts


def _band_halfwidth(jinv_t_row_abs_sum, length):
    """Largest DFT index inside the observation band along one model axis (no Nyquist bin)."""
    kmax = 0.5 * jinv_t_row_abs_sum
    return int(min(math.ceil(kmax * length), (length - 1) // 2))


class ResamplingRenderer(AbstractRenderer):
    """Render the model into an observation with another pixel scale, rotation, flip or offset.

    Parameters
    ----------
    model_shape : (band, y, x)
        Shape of the model frame.
    obs_shape : (band, y, x)
        Shape of the observation.
    band_index : sequence of int
        For each observation band, its index in the model frame.
    obs_psf : array (obs band, h, w)
        Observation PSF per band, sampled on the observation's pixel grid
        (odd sizes, centred, unit sum).
    model_psf : array (h, w)
        Model-frame PSF (odd sizes, unit sum).
    coords : array (2, obs y, obs x)
        Model-frame pixel coordinates ``(y, x)`` of every observation pixel
        centre (from the two WCSs; need not be exactly affine).
    jacobian : array (2, 2), optional
        ``d(model y, x) / d(obs y, x)`` used to map the PSF; default: the
        least-squares affine fit to ``coords``.
    oversample : float
        Oversampling of the intermediate grid relative to the band limit.
    support : int
        Interpolation taps on each side of a point (``2 * support`` per axis).
    eps : float
        Wiener regularisation of the difference kernel, relative to
        ``max |p_m^|^2``.
    separable_tol : float
        Use the separable (two-matrix) interpolation when the pixel rows and
        columns deviate from an axis-parallel grid by less than this (model
        pixels).
    taylor_tol : float
        Otherwise, when the deviations ``d`` are small enough that the
        first-order correction ``d . grad`` is accurate to this (relative
        error ``(d / w)^2 / 2`` for PSF core width ``w``), use it with three
        separable products (e.g. two north-up frames with different tangent
        points); beyond, gather ``(2 support)^2`` taps per pixel.

    Raises
    ------
    ValueError
        On inconsistent shapes, or when an observation PSF is not wider than
        the model PSF (in model pixels): the difference kernel would have to
        sharpen the model.

    Examples
    --------
    A 2x coarser observation rotated by 30 degrees:

    >>> import numpy as np
    >>> from scarlet_xr.core import ResamplingRenderer, gaussian_psf_image
    >>> ii, jj = np.mgrid[:16, :16] - 7.5
    >>> c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    >>> coords = np.stack([2 * (c * ii - s * jj) + 31.5, 2 * (s * ii + c * jj) + 31.5])
    >>> r = ResamplingRenderer((1, 64, 64), (1, 16, 16), [0], gaussian_psf_image(1.2)[None],
    ...                        gaussian_psf_image(0.8), coords)
    >>> model = np.zeros((1, 64, 64), np.float32)
    >>> model[0, 32, 30] = 1.0
    >>> round(float(r(model).sum()), 4)
    1.0
    """

    kernel: jax.Array  # (obs band, 2 Ky + 1, Kx + 1) complex
    interp: tuple[jax.Array, ...]  # interpolation operator (see ``mode``)
    mode: str = eqx.field(static=True)  # "separable", "taylor" or "gather"
    band_index: tuple[int, ...] = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)
    block: tuple[int, int] = eqx.field(static=True)
    grid_shape: tuple[int, int] = eqx.field(static=True)
    obs_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        model_shape,
        obs_shape,
        band_index,
        obs_psf,
        model_psf,
        coords,
        *,
        jacobian=None,
        oversample: float = 2.0,
        support: int = 6,
        eps: float = 1e-6,
        separable_tol: float = 1e-3,
        taylor_tol: float = 1e-5,
    ):
        _, hm, wm = (int(s) for s in model_shape)
        nb, ho, wo = (int(s) for s in obs_shape)
        obs_psf = np.asarray(obs_psf, float)
        if obs_psf.ndim == 2:
            obs_psf = obs_psf[None]
        if obs_psf.ndim != 3 or obs_psf.shape[0] != nb:
            raise ValueError(f"obs_psf must have shape ({nb}, h, w); got {obs_psf.shape}")
        if obs_psf.shape[1] % 2 == 0 or obs_psf.shape[2] % 2 == 0:
            raise ValueError(f"obs_psf must have odd sizes; got {obs_psf.shape[1:]}")
        if len(band_index) != nb:
            raise ValueError(f"band_index needs {nb} entries; got {len(band_index)}")
        if any(not 0 <= int(i) < int(model_shape[0]) for i in band_index):
            raise ValueError(f"band_index {list(band_index)} out of range for {model_shape[0]} model bands")
        coords = np.asarray(coords, float)
        if coords.shape != (2, ho, wo):
            raise ValueError(f"coords must have shape (2, {ho}, {wo}); got {coords.shape}")
        if not np.all(np.isfinite(coords)):
            raise ValueError("coords must be finite")
        model_psf = np.asarray(model_psf, float)
        obs_psf = obs_psf / obs_psf.sum(axis=(-2, -1), keepdims=True)
        model_psf = model_psf / model_psf.sum()
        jac = affine_from_coords(coords)[0] if jacobian is None else np.asarray(jacobian, float)
        if jac.shape != (2, 2) or abs(np.linalg.det(jac)) < 1e-12:
            raise ValueError(f"jacobian must be an invertible 2x2 matrix; got {jac!r}")
        w_obs = psf_core_width(obs_psf, jac)
        w_mod = float(psf_core_width(model_psf)[0])
        if np.any(w_obs <= w_mod):
            raise ValueError(
                f"the model PSF (core width {w_mod:.3g} model px) must be narrower than every "
                f"observation PSF; got observation core widths {np.round(w_obs, 3).tolist()} model px "
                "(use a finer model frame or a smaller psf_sigma)"
            )

        # -- how to evaluate at the pixel centres: separable (rows/columns of the obs
        # grid parallel to the model axes), separable + first-order correction, or gather
        ybar = coords[0].mean(axis=1)
        xbar = coords[1].mean(axis=0)
        dely = coords[0] - ybar[:, None]
        delx = coords[1] - xbar[None, :]
        dev = max(np.abs(dely).max(), np.abs(delx).max())
        # relative second-order remainder of a first-order Taylor step for a
        # Gaussian-like PSF of core width w: ~ (dev / w)^2 / 2
        if dev < separable_tol:
            self.mode = "separable"
        elif 0.5 * (dev / w_obs.min()) ** 2 < taylor_tol:
            self.mode = "taylor"
        else:
            self.mode = "gather"

        # -- periodic domain: model + kernel reach + evaluation range, no wrap-around
        ph, pw = obs_psf.shape[1:]
        corners = np.array([[sy * ph / 2, sx * pw / 2] for sy in (-1, 1) for sx in (-1, 1)])
        reach = np.abs(corners @ jac.T).max(axis=0) + np.array(model_psf.shape) / 2
        jinv_t = np.linalg.inv(jac).T  # model frequency = J^-T obs frequency
        band = np.abs(jinv_t).sum(axis=1)  # bounding box of the obs band (cycles / model px)
        spacing_est = 1.0 / (2 * oversample * np.maximum(band * 0.5, 1e-6))
        margin = (support + 1) * spacing_est if self.mode == "gather" else np.zeros(2)
        lo = np.maximum(coords.reshape(2, -1).min(axis=1) - margin, -reach)
        hi = np.minimum(coords.reshape(2, -1).max(axis=1) + margin, np.array([hm, wm]) - 1 + reach)
        need = [
            int(math.ceil(max(n - 1 + r - lo_, hi_ + r))) + 1
            for n, r, lo_, hi_ in zip((hm, wm), reach, lo, hi, strict=True)
        ]
        ly, lx = (fast_size(max(n, m)) for n, m in zip(need, (hm, wm), strict=True))
        ky = _band_halfwidth(band[0], ly)
        kx = _band_halfwidth(band[1], lx)
        fy = np.concatenate([np.arange(ky + 1), np.arange(-ky, 0)]) / ly
        fx = np.arange(kx + 1) / lx

        # -- difference kernel on the kept block, limited to the observation's band
        po = psf_spectrum(obs_psf, jac, fy, fx)
        pm = psf_spectrum(model_psf[None], np.eye(2), fy, fx)[0]
        qy = jac[0, 0] * fy[:, None] + jac[1, 0] * fx[None, :]  # J^T k, obs cycles / px
        qx = jac[0, 1] * fy[:, None] + jac[1, 1] * fx[None, :]
        inside = (np.abs(qy) <= 0.5) & (np.abs(qx) <= 0.5)
        pm2 = np.abs(pm) ** 2
        # inverse DFT normalisation 1 / (ly lx); an obs pixel covers |det J| model pixels
        diff = po * np.conj(pm) / (pm2 + eps * pm2.max()) * inside
        diff *= abs(np.linalg.det(jac)) / (ly * lx)
        dt = default_float()
        ct = default_complex()
        if self.mode != "gather":
            # exact trigonometric evaluation at the (row, column) base positions
            ey = np.exp(2j * np.pi * np.outer(ybar, fy))
            ex = np.exp(2j * np.pi * np.outer(xbar, fx)) * np.where(fx == 0, 1.0, 2.0)
            self.kernel = jnp.asarray(diff, ct)
            self.interp = (
                jnp.asarray(ey, ct),
                jnp.asarray(ex, ct),
                jnp.asarray(ey * (2j * np.pi * fy), ct),
                jnp.asarray(ex * (2j * np.pi * fx), ct),
                jnp.asarray(dely, dt),
                jnp.asarray(delx, dt),
            )
            ny = nx = 0
        else:
            # NUFFT-style: small inverse FFT on an oversampled grid, Gaussian taps,
            # the kernel's Fourier response divided out beforehand
            ny = fast_size(max(int(math.ceil(2 * oversample * ky)) + 1, 2 * ky + 2))
            nx = fast_size(max(int(math.ceil(2 * oversample * kx)) + 1, 2 * kx + 2))
            nx += nx % 2  # even, so the rfft half-plane has room beyond kx
            dy, dx = ly / ny, lx / nx  # intermediate grid spacing, model px

            def _sigma(k, n):
                kk = min(k / n, 0.45)
                return math.sqrt(support / (2 * math.pi * math.sqrt(1 - 2 * kk)))

            sy, sx = _sigma(ky, ny), _sigma(kx, nx)
            deapod = np.exp(
                2 * np.pi**2 * ((sy * fy * dy)[:, None] ** 2 + (sx * fx * dx)[None, :] ** 2)
            )
            self.kernel = jnp.asarray(diff * deapod * (ny * nx), ct)
            iy, wy = _gauss_taps(coords[0].ravel() / dy, ny, sy, support)
            ix, wx = _gauss_taps(coords[1].ravel() / dx, nx, sx, support)
            self.interp = (
                jnp.asarray(wy, dt),
                jnp.asarray(wx, dt),
                jnp.asarray(iy, jnp.int32),
                jnp.asarray(ix, jnp.int32),
            )
        self.band_index = tuple(int(i) for i in band_index)
        self.fft_shape = (ly, lx)
        self.block = (ky, kx)
        self.grid_shape = (ny, nx)
        self.obs_shape = (ho, wo)

    def __call__(self, model):
        """Return the model rendered on the observation grid, ``(obs band, y, x)``.

        Leading batch dimensions before ``(band, y, x)`` are allowed.
        """
        return self._render(jnp, model, self.kernel, self.interp).astype(model.dtype)

    def render_numpy(self, model) -> np.ndarray:
        """Numpy twin of :meth:`__call__` (float64, not differentiable, no compilation).

        The same code as :meth:`__call__` (one function, run with numpy instead
        of jax.numpy), for models rendered a few times outside the fit (e.g. to
        initialise spectra), so that no JAX program has to be compiled.
        """
        return self._render(np, np.asarray(model, float), np.asarray(self.kernel),
                            tuple(np.asarray(a) for a in self.interp))

    def _render(self, xp, model, kernel, interp):
        """Band selection, pruned FFT, PSF matching and interpolation with the array module ``xp``."""
        idx = list(self.band_index)
        if idx != list(range(model.shape[-3])):
            model = xp.take(model, xp.asarray(idx), axis=-3)
        ly, lx = self.fft_shape
        ky, kx = self.block
        # pruned forward transform: only the |kx| <= Kx columns go through the y-FFT
        spec = xp.fft.rfft(model, n=lx, axis=-1)[..., : kx + 1]
        spec = xp.fft.fft(spec, n=ly, axis=-2)
        spec = xp.concatenate([spec[..., : ky + 1, :], spec[..., ly - ky :, :]], axis=-2)
        spec = spec * kernel
        if self.mode != "gather":
            ey, ex, eyd, exd, dely, delx = interp
            rows = xp.einsum("ok,...kq->...oq", ey, spec)
            out = xp.einsum("...oq,pq->...op", rows, ex).real
            if self.mode == "taylor":
                out = out + dely * xp.einsum("ok,...kq,pq->...op", eyd, spec, ex, optimize=True).real
                out = out + delx * xp.einsum("...oq,pq->...op", rows, exd).real
            return out
        # embed in the small oversampled half-plane, back to pixels, interpolate
        ny, nx = self.grid_shape
        lead = spec.shape[:-2]
        zrows = xp.zeros(lead + (ny - 2 * ky - 1, kx + 1), spec.dtype)
        spec = xp.concatenate([spec[..., : ky + 1, :], zrows, spec[..., ky + 1 :, :]], axis=-2)
        zcols = xp.zeros(lead + (ny, nx // 2 - kx), spec.dtype)
        spec = xp.concatenate([spec, zcols], axis=-1)
        grid = xp.fft.irfft2(spec, s=(ny, nx)).astype(model.dtype)
        wy, wx, iy, ix = interp
        taps = grid[..., iy[:, :, None], ix[:, None, :]]
        out = xp.einsum("...nab,na,nb->...n", taps, wy, wx)
        return out.reshape(lead + self.obs_shape)


