"""ResamplingRenderer invariants against analytic Gaussians, its VJP, and sky frames."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import scarlet_xr as sx
from scarlet_xr.core import ResamplingRenderer, gaussian_psf_image
from scarlet_xr.scene import detection_image

DATA = Path(__file__).parent / "data"
MODEL_SIGMA = 0.8
OBS_SIGMA = 1.6  # observation PSF, in observation pixels


def _gauss(shape, center, cov):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    d = np.stack([yy - center[0], xx - center[1]], -1)
    q = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
    return np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))


def _jacobian(scale, theta, flip):
    c, s = math.cos(theta), math.sin(theta)
    jac = scale * np.array([[c, -s], [s, c]])
    return jac @ np.diag([1.0, -1.0]) if flip else jac


def _setup(scale, theta, flip, shift, size=96, obs_size=None):
    jac = _jacobian(scale, theta, flip)
    n = obs_size or int(70 / scale)
    ii, jj = np.mgrid[:n, :n] - (n - 1) / 2
    centre = np.array([(size - 1) / 2 + shift[0], (size - 1) / 2 + shift[1]])
    coords = np.einsum("ij,jyx->iyx", jac, np.stack([ii, jj])) + centre[:, None, None]
    r = ResamplingRenderer(
        (1, size, size), (1, n, n), [0], gaussian_psf_image(OBS_SIGMA, 31)[None],
        gaussian_psf_image(MODEL_SIGMA), coords,
    )
    return r, jac, coords


def _moments(img):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]].astype(float)
    f = img.sum()
    cy, cx = (img * yy).sum() / f, (img * xx).sum() / f
    dy, dx = yy - cy, xx - cx
    cov = np.array([[(img * dy * dy).sum(), (img * dy * dx).sum()],
                    [(img * dy * dx).sum(), (img * dx * dx).sum()]]) / f
    return f, np.array([cy, cx]), cov


CASES = [
    # scale, theta, flip, shift (model px), expected mode
    (1.0, 0.0, False, (0.0, 0.0), "separable"),
    (2.5, 0.0, False, (0.3, -0.7), "separable"),
    (4.0, 2e-4, False, (0.25, 0.5), "taylor"),
    (2.0, 0.6, False, (0.2, 0.1), "gather"),
    (1.0, 1.1, True, (0.0, 0.4), "gather"),
    (3.3, 2.0, True, (0.1, 0.2), "gather"),
]


@pytest.mark.parametrize("scale,theta,flip,shift,mode", CASES)
def test_flux_centroid_moments_preserved(scale, theta, flip, shift, mode):
    r, jac, coords = _setup(scale, theta, flip, shift)
    assert r.mode == mode
    cov_model = np.array([[9.0, 3.0], [3.0, 16.0]])
    centre = np.array([45.3, 49.8])
    model = _gauss((96, 96), centre, cov_model)[None].astype(np.float32)
    out = np.asarray(r(jnp.asarray(model)))[0]
    flux, cen, cov = _moments(out)
    # sky = model deconvolved by the model PSF (pixel integration cancels);
    # observed = sky convolved by the pixel-integrated observation PSF
    jinv = np.linalg.inv(jac)
    cov_sky = cov_model - (MODEL_SIGMA**2 + 1 / 12) * np.eye(2)  # point-sampled model
    cov_exp = jinv @ cov_sky @ jinv.T + (OBS_SIGMA**2 + 1 / 12) * np.eye(2)
    cen_exp = jinv @ (centre - coords[:, 0, 0])
    np.testing.assert_allclose(flux, model.sum(), rtol=2e-5)
    np.testing.assert_allclose(cen, cen_exp, atol=2e-3)
    np.testing.assert_allclose(cov, cov_exp, rtol=2e-3, atol=2e-3 * np.trace(cov_exp))
    # pixel-by-pixel against the analytic image (the pixel box taken as Gaussian of var 1/12)
    ref = _gauss(out.shape, cen_exp, cov_exp)
    assert np.abs(out - ref).max() < 5e-4 * ref.max()


@pytest.mark.parametrize("theta", [0.0, 0.7])
def test_vjp_matches_finite_differences(theta):
    r, _, _ = _setup(2.0, theta, False, (0.1, 0.2), size=48, obs_size=20)
    key = np.random.default_rng(0)
    m = jnp.asarray(key.normal(size=(1, 48, 48)), jnp.float32)
    v = jnp.asarray(key.normal(size=(1, 20, 20)), jnp.float32)
    d = jnp.asarray(key.normal(size=(1, 48, 48)), jnp.float32)
    _, vjp = jax.vjp(r, m)
    (g,) = vjp(v)
    eps = 1e-1
    fd = (jnp.vdot(v, r(m + eps * d)) - jnp.vdot(v, r(m - eps * d))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=2e-3)
    # and the gradient of a chi^2 through jit agrees with the vjp
    g2 = jax.jit(jax.grad(lambda x: jnp.vdot(v, r(x))))(m)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("theta", [0.0, 2e-4, 0.9])
def test_numpy_twin_matches_jax(theta):
    r, _, _ = _setup(4.0 if theta == 2e-4 else 2.0, theta, False, (0.0, 0.3))
    m = np.random.default_rng(1).random((2, 1, 96, 96))
    a = np.asarray(r(jnp.asarray(m, jnp.float32)))
    b = r.render_numpy(m)
    assert a.shape == b.shape == (2, 1) + r.obs_shape
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())


def test_convolution_numpy_twin_matches_jax():
    from scarlet_xr.core import ConvolutionRenderer

    obs_psf = np.stack([gaussian_psf_image(s, 21) for s in (2.0, 2.5)])
    r = ConvolutionRenderer((3, 40, 36), (2, 30, 28), [2, 0], obs_psf, gaussian_psf_image(0.8, 11),
                            origin=(4, 5))
    m = np.random.default_rng(2).random((3, 3, 40, 36))
    a = np.stack([np.asarray(r(jnp.asarray(x, jnp.float32))) for x in m])
    b = r.render_numpy(m)
    assert a.shape == b.shape == (3, 2, 30, 28)
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    # band 0 of the observation is model band 2, cropped at the origin
    plain = np.fft.irfft2(np.fft.rfft2(m[0, 2], s=r.fft_shape) * np.asarray(r.kernel_fft[0]), s=r.fft_shape)
    np.testing.assert_allclose(b[0, 0], plain[4:34, 5:33], atol=1e-12)


def test_model_psf_must_be_narrower():
    n = 20
    coords = np.stack(np.mgrid[:n, :n].astype(float)) + 10
    with pytest.raises(ValueError, match="narrower"):
        ResamplingRenderer((1, 40, 40), (1, n, n), [0], gaussian_psf_image(0.5, 11)[None],
                           gaussian_psf_image(0.8), coords)


def test_bad_inputs_raise():
    n = 10
    coords = np.stack(np.mgrid[:n, :n].astype(float))
    psf = gaussian_psf_image(1.5, 11)[None]
    with pytest.raises(ValueError, match="coords must have shape"):
        ResamplingRenderer((1, 40, 40), (1, n, n), [0], psf, gaussian_psf_image(0.8), coords[:, :5])
    with pytest.raises(ValueError, match="band_index"):
        ResamplingRenderer((1, 40, 40), (1, n, n), [3], psf, gaussian_psf_image(0.8), coords)


# -- frames from several instruments -------------------------------------------------------


def _real(name, bands):
    hdu = fits.open(DATA / f"Cut_{name}.fits")[0]
    data = hdu.data.astype(float)
    data = data if data.ndim == 3 else data[None]
    psf = fits.getdata(DATA / f"PSF_{name}.fits").astype(float)
    psf = psf if psf.ndim == 3 else psf[None]
    pk = np.unravel_index(np.argmax(psf.sum(0)), psf.shape[1:])
    r = min(pk[0], psf.shape[1] - 1 - pk[0], pk[1], psf.shape[2] - 1 - pk[1])
    psf = psf[:, pk[0] - r : pk[0] + r + 1, pk[1] - r : pk[1] + r + 1]
    return sx.make_observation(data, psf=psf, bands=bands, wcs=WCS(hdu.header), name=name.lower())


def test_frame_from_two_instruments():
    hsc = _real("HSC", list("grizy"))
    hst = _real("HST", ["F814W"])
    frame = sx.frame_from_observations([hsc, hst])
    assert frame.bands == ("g", "r", "i", "z", "y", "F814W")
    assert frame.pixel_scale == pytest.approx(0.03, rel=1e-4)  # the finest (HST)
    m = frame.wcs.pixel_scale_matrix * 3600
    np.testing.assert_allclose(m, np.diag([-0.03, 0.03]), atol=1e-8)  # north-up
    # union covers the HSC footprint (8.4"), aligned with the HST pixels
    assert frame.shape == (281, 281)
    assert sx.xr.grid_offset(hst, frame) is not None
    assert sx.xr.grid_offset(hsc, frame) is None
    inter = sx.Frame.from_observations([hsc, hst], coverage="intersection")
    assert inter.shape == (250, 250)  # HST lies inside HSC
    coarse = sx.frame_from_observations([hsc, hst], resolution=0.1)
    assert coarse.pixel_scale == pytest.approx(0.1, rel=1e-6)
    assert coarse.shape == (85, 85)
    with pytest.raises(ValueError, match="coverage"):
        sx.frame_from_observations([hsc, hst], coverage="both")
    # sky helpers: SkyCoord and (ra, dec) degrees give the same pixels; arcsec -> px
    sky = frame.to_sky([[100.0, 120.0], [5.5, 7.25]])
    np.testing.assert_allclose(frame.to_pixel(sky), [[100.0, 120.0], [5.5, 7.25]], atol=1e-6)
    radec = np.stack([sky.ra.deg, sky.dec.deg], axis=1)
    np.testing.assert_allclose(frame.to_pixel(radec), [[100.0, 120.0], [5.5, 7.25]], atol=1e-6)
    assert float(frame.arcsec_to_pixels(0.6)) == pytest.approx(20.0, rel=1e-4)


def test_same_grid_frame_unchanged():
    from scarlet_xr.datasets import hsc_cosmos_35

    obs, _ = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    assert frame.shape == (58, 48) and frame.origin == (0, 0)
    sub = obs.isel(y=slice(10, 40), x=slice(5, 30))
    both = sx.frame_from_observations([sub, obs.isel(y=slice(0, 20))])
    assert both.origin == (0, 0) and both.shape == (40, 48)
    inter = sx.frame_from_observations([sub, obs.isel(y=slice(0, 20))], coverage="intersection")
    assert inter.origin == (10, 5) and inter.shape == (10, 25)


def test_detection_image_conserves_flux_across_grids():
    hsc = _real("HSC", list("grizy")).isel(band=[2])
    hst = _real("HST", ["F814W"])
    frame = sx.frame_from_observations([hsc, hst])
    det, sigma, valid = detection_image(hsc, frame)
    assert valid.mean() > 0.97
    # flux per model pixel: the coadd integrates to the image flux (bilinear, ~1 %)
    assert det.sum() == pytest.approx(float(hsc["data"].sum()), rel=0.02)
    assert 0 < sigma < float(hsc["data"].std())
