"""Priors: custom Equinox priors, numpyro priors in the MAP fit, score priors, the learned prior."""

from __future__ import annotations

import equinox as eqx
import galsim
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import scarlet_xr as sx
from scarlet_xr.core import AbstractPrior, FreeFormMorphology, Parameter, ScorePrior, score_line_integral, score_surrogate
from scarlet_xr.infer import fit, partition_free
from scarlet_xr.nn import LearnedMorphologyPrior, learned_prior, with_morphology_prior


class _Values(eqx.Module):
    """A model whose 'cube' is just its parameter values."""

    a: Parameter

    def __call__(self):
        return self.a.value


class _GaussLik(eqx.Module):
    data: jax.Array
    sigma: float

    def __call__(self, cube):
        return -0.5 * jnp.sum((cube - self.data) ** 2) / self.sigma**2


class Smoothness(AbstractPrior):
    """Custom prior example: Gaussian penalty on neighbour differences."""

    strength: float

    def log_prob(self, x):
        return -0.5 * self.strength * jnp.sum(jnp.diff(x) ** 2)


def _map(prior, data, sigma=0.5, start=None):
    start = np.zeros_like(data) if start is None else start
    model = _Values(Parameter(start, prior=prior, step=0.05))
    fitted, hist = fit(model, [_GaussLik(jnp.asarray(data), sigma)], max_steps=3000, e_rel=1e-9)
    return np.asarray(fitted.a.value), fitted, hist


def test_numpyro_prior_gives_analytic_map():
    data = np.array([2.0, -1.0, 0.5], np.float32)
    mu0, tau, sigma = np.array([0.0, 1.0, 3.0], np.float32), 0.5, 0.5
    prior = dist.Normal(jnp.asarray(mu0), tau)
    got, fitted, _ = _map(prior, data, sigma)
    expect = (data / sigma**2 + mu0 / tau**2) / (1 / sigma**2 + 1 / tau**2)
    np.testing.assert_allclose(got, expect, atol=2e-3)
    # without the prior the MAP is the data: the prior moved it by a lot
    assert np.max(np.abs(expect - data)) > 1.0
    # the prior's own arrays are not fitted
    np.testing.assert_array_equal(np.asarray(fitted.a.prior.loc), mu0)
    free, _ = partition_free(fitted)
    assert len(jax.tree_util.tree_leaves(free)) == 1


def test_custom_prior_in_fit_matches_linear_solve():
    data = np.array([0.0, 3.0, 0.0, 1.0], np.float32)
    lam, sigma = 4.0, 0.5
    got, _, _ = _map(Smoothness(lam), data, sigma)
    # MAP of a Gaussian model: (I / s^2 + lam D^T D) x = d / s^2
    d = np.diff(np.eye(4), axis=0)
    expect = np.linalg.solve(np.eye(4) / sigma**2 + lam * d.T @ d, data / sigma**2)
    np.testing.assert_allclose(got, expect, atol=2e-3)
    assert np.max(np.abs(expect - data)) > 0.5


def test_score_prior_gradient_is_the_score_and_fit_uses_it():
    x = jnp.array([0.3, -2.0, 1.0])
    prior = ScorePrior(lambda v: -(v - 1.0) / 0.25)  # N(1, 0.5^2) by its score
    np.testing.assert_allclose(np.asarray(jax.grad(prior.log_prob)(x)), -(np.asarray(x) - 1) / 0.25,
                               rtol=1e-6)
    assert float(prior.log_prob(x)) == 0.0
    data = np.array([2.0, -1.0, 0.0], np.float32)
    got, _, _ = _map(prior, data, 0.5)
    np.testing.assert_allclose(got, (data / 0.25 + 1 / 0.25) / (2 / 0.25), atol=2e-3)
    with pytest.raises(ValueError, match="shape of x"):
        score_surrogate(x, jnp.zeros(2))


# -- learned prior ---------------------------------------------------------------


def _galaxy(size=31, hlr=3.0, e=0.3, n=1.0):
    prof = galsim.Sersic(n=n, half_light_radius=hlr).shear(e=e, beta=0.5 * galsim.radians)
    img = galsim.Convolve(prof, galsim.Gaussian(sigma=0.8)).drawImage(nx=size, ny=size, scale=1.0).array
    return img / img.max()


@pytest.fixture(scope="module")
def prior():
    return learned_prior()


def test_learned_prior_loads_finite_gradients_and_prefers_galaxies(prior):
    assert isinstance(prior, LearnedMorphologyPrior)
    rng = np.random.default_rng(0)
    for size in (15, 31, 45):  # pad, exact, rescale
        gal = jnp.asarray(_galaxy(size, hlr=size / 10))
        noise = jnp.asarray(np.abs(rng.normal(0, 0.3, (size, size))))
        noise = noise.at[size // 2, size // 2].set(1.0)
        lg, ln = float(prior.log_prob(gal)), float(prior.log_prob(noise))
        assert np.isfinite(lg) and np.isfinite(ln)
        assert lg > ln + 100, (size, lg, ln)
        g = np.asarray(jax.grad(prior.log_prob)(gal))
        assert g.shape == (size, size) and np.all(np.isfinite(g)) and np.any(g != 0)
    with pytest.raises(ValueError, match="odd sizes"):
        prior.log_prob(jnp.ones((4, 5)))


def test_learned_score_denoises_a_galaxy(prior):
    """A step along the learned score moves a noisy galaxy towards the clean one."""
    clean = _galaxy(31, hlr=2.5, e=0.4)
    noisy = clean + np.random.default_rng(1).normal(0, 0.05, clean.shape)
    p05 = LearnedMorphologyPrior(prior.net, sigma=0.05)
    m = noisy.max()  # the prior sees peak-normalised stamps
    noisy, clean = noisy / m, clean / m
    s = np.asarray(p05.score(jnp.asarray(noisy)))
    stepped = noisy + 0.05**2 * s  # Tweedie: x + sigma^2 score = E[clean | x]
    err0 = np.linalg.norm(noisy - clean)
    err1 = np.linalg.norm(stepped - clean)
    assert err1 < 0.7 * err0, (err0, err1)


def test_with_morphology_prior_sets_free_form_images_only(prior):
    frame = sx.Frame(["r"], (21, 21))
    with sx.Scene(frame) as scene:
        sx.Source([10, 10], sx.Spectrum([1.0]), FreeFormMorphology(np.ones((11, 11))))
        sx.Source([5, 5], sx.Spectrum([1.0]), sx.GaussianMorphology(1.0))
    new = with_morphology_prior(scene, prior)
    assert new is not scene and len(new) == 2
    assert isinstance(new.sources[0].components[0].morphology.image.prior, LearnedMorphologyPrior)
    assert scene.sources[0].components[0].morphology.image.prior is None
    assert new.sources[1].components[0].morphology.sigma.prior is None


def _faint_next_to_bright(seed=4, sep=5.0, snr_bright=150.0, snr_faint=15.0):
    """Bright Sersic galaxy and a faint exponential 5 px away (< 2 PSF FWHM of 2.8 px), 3 bands."""
    rng = np.random.default_rng(seed)
    size = 41
    psf = galsim.Moffat(beta=3.0, fwhm=2.8)
    c0 = size // 2
    centers = np.array([[c0, c0], [c0 + 0.3 * sep, c0 + 0.95 * sep]])
    profs = [galsim.Sersic(n=1.5, half_light_radius=3.0).shear(e=0.3, beta=0.3 * galsim.radians),
             galsim.Exponential(half_light_radius=1.5).shear(e=0.2, beta=2.0 * galsim.radians)]
    seds = [np.array([0.6, 1.0, 1.3]), np.array([1.0, 1.0, 0.9])]
    imgs = np.zeros((2, 3, size, size))
    for k, (p, sed, snr) in enumerate(zip(profs, seds, (snr_bright, snr_faint), strict=True)):
        for b in range(3):
            im = galsim.ImageD(size, size, scale=1.0)
            galsim.Convolve(p.withFlux(float(sed[b])), psf).drawImage(
                im, offset=galsim.PositionD(centers[k, 1] - c0, centers[k, 0] - c0))
            imgs[k, b] = im.array
        imgs[k] *= snr / np.sqrt((imgs[k] ** 2).sum())
    data = imgs.sum(0) + rng.normal(0, 1.0, imgs.shape[1:])
    psf_img = psf.drawImage(nx=25, ny=25, scale=1.0).array
    obs = sx.make_observation(data, psf=np.broadcast_to(psf_img, (3, 25, 25)), variance=np.ones(data.shape),
                              bands=["g", "r", "i"], name="sim")
    return obs, centers, imgs.sum(axis=(2, 3)).sum(1)


def test_faint_neighbour_flux_with_and_without_learned_prior(prior):
    obs, centers, true_flux = _faint_next_to_bright()
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds="free")
    plain = scene.fit(obs, max_steps=1500, e_rel=1e-7)
    with_prior = with_morphology_prior(scene, prior).fit(obs, max_steps=1500, e_rel=1e-7)
    r0 = plain.fluxes().sum(1) / true_flux
    r1 = with_prior.fluxes().sum(1) / true_flux
    # without a prior the free-form models trade flux: here the faint source's box swallows
    # the bright galaxy's wing (measured: faint 3.5x its true flux)
    assert r0[1] > 2.0, r0
    # with the learned prior the faint source keeps most of its own flux (measured 1.29; 1.12
    # before the box's pixels outside the network's 31 px stamp got the prior too, which on 16
    # low-S/N make_scenes scenes lowered the galaxies' median error from 0.357 to 0.222)
    assert abs(r1[1] - 1.0) < 0.35, r1
    assert abs(r1[0] - 1.0) < 0.1, r1


def test_default_path_with_learned_prior_keeps_points_and_starts_pixels_from_the_fit(prior):
    """``fit_sources(prior=learned_prior())``: model choice first, then galaxies as pixels with the prior."""
    obs, centers, true_flux = _faint_next_to_bright()
    psf = galsim.Moffat(beta=3.0, fwhm=2.8).drawImage(nx=41, ny=41, scale=1.0).array
    star_at = np.array([8.0, 31.0])
    star = 60.0 * psf / np.sqrt((psf**2).sum())  # S/N 60 per band, far from the pair
    data = obs["data"].values.copy()
    shifted = np.roll(np.roll(star, int(star_at[0]) - 20, axis=0), int(star_at[1]) - 20, axis=1)
    data += shifted[None]
    obs = sx.make_observation(data, psf=obs["psf"].values, variance=np.ones(data.shape),
                              bands=["g", "r", "i"], name="sim")
    frame = sx.frame_from_observations(obs)
    centers = np.vstack([centers, star_at])
    plain = sx.fit_sources(frame, obs, centers)
    fitted = sx.fit_sources(frame, obs, centers, prior=prior)
    kinds = [c["kind"] for c in fitted.choices]
    assert kinds == ["free", "free", "point"], fitted.choices
    assert "morphology prior" in fitted.choices[0]["reason"]
    assert [c["kind"] for c in plain.choices][2] == "point"
    for k in (0, 1):
        morph = fitted.sources[k].components[0].morphology
        assert isinstance(morph, FreeFormMorphology) and isinstance(morph.image.prior, LearnedMorphologyPrior)
    ratio = fitted.measured_flux.sum(1)[:2] / true_flux
    plain_ratio = plain.measured_flux.sum(1)[:2] / true_flux
    # measured: with the prior 1.04 and 1.35, without 1.00 and 1.16 (the faint neighbour takes
    # more of the bright galaxy's wing as pixels: the limit docs/default_path.md describes)
    assert abs(ratio[0] - 1.0) < 0.06 and abs(ratio[1] - 1.0) < 0.45, ratio
    assert abs(plain_ratio[0] - 1.0) < 0.03 and abs(plain_ratio[1] - 1.0) < 0.25, plain_ratio
    with pytest.raises(ValueError, match="prior must be a prior object"):
        sx.fit_sources(frame, obs, centers, prior="learned")


# -- priors in the sampler: consistent potentials -----------------------------


def test_score_line_integral_is_exact_for_gaussians_and_checks_input():
    rng = np.random.default_rng(3)
    cov_inv = np.array([[2.0, 0.5], [0.5, 1.0]])
    mu = np.array([0.3, -0.7])
    score = lambda v: -jnp.asarray(cov_inv, v.dtype) @ (v - jnp.asarray(mu, v.dtype))  # noqa: E731
    logp = lambda v: -0.5 * (v - mu) @ cov_inv @ (v - mu)  # noqa: E731
    for _ in range(3):
        x, x0 = rng.normal(size=2), rng.normal(size=2)
        for order in (1, 2):
            got = float(score_line_integral(score, jnp.asarray(x), jnp.asarray(x0), order))
            assert got == pytest.approx(logp(x) - logp(x0), rel=1e-5, abs=1e-6)
    # a non-linear score: order 2 is exact for a quadratic score (cubic log-density)
    cubic_score = lambda v: -(v**2)  # log p = -x^3 / 3  # noqa: E731
    got = float(score_line_integral(cubic_score, jnp.array([1.5]), jnp.array([0.5]), 2))
    assert got == pytest.approx(-(1.5**3 - 0.5**3) / 3, rel=1e-5)
    assert float(score_line_integral(cubic_score, jnp.array([1.5]), jnp.array([0.5]), 1)) != pytest.approx(got)
    with pytest.raises(ValueError, match="same shape"):
        score_line_integral(score, jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(ValueError, match="order must be >= 1"):
        score_line_integral(score, jnp.zeros(2), jnp.zeros(2), 0)


def test_score_prior_sampling_form_is_consistent():
    prior = ScorePrior(lambda v: -(v - 1.0) / 0.25)
    x0 = jnp.array([0.2, 0.4])
    anchored = prior.for_sampling(x0)
    assert prior.reference is None and anchored.reference is not None
    x = jnp.array([1.3, -0.5])
    expect = -0.5 * (np.sum((np.asarray(x) - 1) ** 2) - np.sum((np.asarray(x0) - 1) ** 2)) / 0.25
    assert float(anchored.log_prob(x)) == pytest.approx(expect, rel=1e-5)
    np.testing.assert_allclose(np.asarray(jax.grad(anchored.log_prob)(x)), -(np.asarray(x) - 1) / 0.25,
                               rtol=1e-5)


def test_sampler_with_score_prior_gives_the_analytic_posterior():
    """NUTS sees the anchored (consistent) form: posterior N(mean, sd) of a Gaussian pair."""
    from scarlet_xr.infer import sample

    data = np.array([2.0, -1.0], np.float32)
    sigma, tau = 0.5, 0.5  # likelihood and prior widths; prior N(1, tau^2) given by its score
    model = _Values(Parameter(data, prior=ScorePrior(lambda v: -(v - 1.0) / tau**2)))
    res = sample(model, [_GaussLik(jnp.asarray(data), sigma)], key=1, num_warmup=300, num_samples=1500,
                 num_chains=2, progress=False)
    draws = res.params["a"].reshape(-1, 2)
    post_var = 1 / (1 / sigma**2 + 1 / tau**2)
    post_mean = post_var * (data / sigma**2 + 1.0 / tau**2)
    np.testing.assert_allclose(draws.mean(0), post_mean, atol=0.06)
    np.testing.assert_allclose(draws.std(0), np.sqrt(post_var), rtol=0.1)


def test_learned_prior_sampling_form_is_consistent_and_sees_every_pixel(prior):
    gal = jnp.asarray(_galaxy(45, hlr=4.0)) * 2.0
    anchored = prior.for_sampling(gal)
    assert anchored.reference.shape == (31, 31)
    # at the reference only the unseen part's Gaussian term remains
    peak = float(anchored.reference.max())
    expect = -0.5 * float(jnp.sum(anchored.unseen(gal) ** 2)) / (anchored.sigma * peak) ** 2
    assert float(anchored.log_prob(gal)) == pytest.approx(expect, rel=1e-4, abs=1e-4)
    # value and gradient agree (finite differences along a random direction)
    v = jnp.asarray(np.random.default_rng(4).normal(size=gal.shape)) * 1e-3
    x = gal + 20 * v
    g = jax.grad(anchored.log_prob)(x)
    fd = float(anchored.log_prob(x + v) - anchored.log_prob(x - v))
    assert fd == pytest.approx(2 * float(jnp.sum(g * v)), rel=0.05)
    # a pattern the 45 -> 31 resampling cannot see: the surrogate ignores it, the sampling form not
    unseen = anchored.unseen(x)
    assert unseen is not None and float(jnp.max(jnp.abs(unseen))) > 0
    null = jnp.asarray(anchored.unseen(jnp.asarray(np.random.default_rng(5).normal(size=gal.shape))))
    null = 0.02 * null / jnp.max(jnp.abs(null))
    # both forms give it the score's width: the fit form too (unconstrained, those pixels fitted
    # noise: low-S/N galaxies 0.357 -> 0.222 median flux error in the prior stage, seed 555)
    assert float(prior.log_prob(gal + null)) < float(prior.log_prob(gal)) - 10.0
    assert float(anchored.log_prob(gal + null)) < -10.0
    assert prior.unseen(jnp.ones((31, 31))) is None


def test_pixel_prior_stage_sets_the_prior_of_given_free_form_sources(prior):
    """Sources given as free-form pixels keep their image and get the stage's prior."""
    from scarlet_xr.scene._auto import _with_pixel_prior

    frame = sx.Frame(["r"], (21, 21))
    image = _galaxy(11, hlr=1.5)
    with sx.Scene(frame) as scene:
        sx.Source([10, 10], sx.Spectrum([1.0]), FreeFormMorphology(image))
    model = scene.model()
    out = _with_pixel_prior(model, frame, [], [{"kind": "free"}], np.array([[10.0, 10.0]]), prior)
    morph = out.sources[0].components[0].morphology
    assert isinstance(morph.image.prior, LearnedMorphologyPrior)
    np.testing.assert_allclose(np.asarray(morph.image.value), image, rtol=1e-5, atol=1e-6)
    assert model.sources[0].components[0].morphology.image.prior is None
