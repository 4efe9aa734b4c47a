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
from scarlet_xr.core import AbstractPrior, FreeFormMorphology, Parameter, ScorePrior, score_surrogate
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
    s = np.asarray(prior.score(jnp.asarray(noisy)))
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
    assert new.sources[0].components[0].morphology.image.prior is prior
    assert scene.sources[0].components[0].morphology.image.prior is None
    assert new.sources[1].components[0].morphology.sigma.prior is None
