"""Posterior sampling: known-truth posteriors, calibration, tree layout, errors."""

from __future__ import annotations

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import scarlet_xr as sx
from scarlet_xr.core import (
    GaussianLikelihood,
    GaussianMorphology,
    Interval,
    LogPositive,
    Parameter,
    PointSourceMorphology,
    SceneModel,
    Source,
    Spectrum,
    gaussian_psf_image,
)
from scarlet_xr.infer import sample
from scarlet_xr.scene import attach_posterior, sample_scene, summarize
from scarlet_xr.xr import likelihood_for

BANDS = ["g", "r"]
SHAPE = (25, 25)


def _fixed_gauss(sigma):
    return GaussianMorphology(Parameter(sigma, LogPositive(), fixed=True),
                              Parameter([0.0, 0.0], Interval(-0.7, 0.7), fixed=True), shape=15)


def _psf():
    return np.stack([gaussian_psf_image(1.4, 15), gaussian_psf_image(1.7, 15)])


def _simulate(rng, *, star_flux, gal_flux, noise=0.05):
    """Star + round Gaussian galaxy rendered by our own renderer, plus white noise."""
    frame = sx.Frame(BANDS, SHAPE)
    psf = _psf()
    star_c = np.array([10.3, 9.6]) + rng.uniform(-0.5, 0.5, 2)
    gal_c = np.array([14.6, 15.2]) + rng.uniform(-0.5, 0.5, 2)
    w = np.full((2,) + SHAPE, 1 / noise**2)
    empty = sx.make_observation(np.zeros((2,) + SHAPE), psf=psf, weights=w, bands=BANDS, name="sim")
    lik = likelihood_for(empty, frame)
    with sx.core.collecting(lambda s: None):
        truth = SceneModel(
            [Source(star_c, Spectrum(star_flux), PointSourceMorphology(frame.psf)),
             Source(gal_c, Spectrum(gal_flux), GaussianMorphology(1.6, shape=15))],
            frame.cube_shape,
        )
    clean = np.asarray(lik.renderer(truth()))
    data = clean + noise * rng.standard_normal(clean.shape)
    obs = sx.make_observation(data, psf=psf, weights=w, bands=BANDS, name="sim")
    return frame, obs, star_c, gal_c


def _scene(frame, star_c, gal_c, rng):
    """Scene at perturbed starting values, galaxy shape fixed at the truth."""
    with sx.Scene(frame) as scene:
        Source(star_c + rng.normal(0, 0.2, 2), Spectrum([1.0, 1.0]), PointSourceMorphology(frame.psf))
        Source(gal_c + rng.normal(0, 0.2, 2), Spectrum([1.0, 1.0]),
               _fixed_gauss(1.6))
    return scene


def test_linear_flux_posterior_matches_analytic():
    """Flat-in-flux default prior + Jacobian: the posterior is the Gaussian of weighted least squares."""
    rng = np.random.default_rng(3)
    psf = gaussian_psf_image(1.5, 15)[None]
    frame = sx.Frame(["i"], (21, 21))
    with sx.core.collecting(lambda s: None):
        src = Source((10.0, 10.0), Spectrum([2.0]), _fixed_gauss(1.2),
                     fix_center=True)
        model = SceneModel([src], frame.cube_shape)
    sigma = 0.05
    w = np.full((1, 21, 21), 1 / sigma**2)
    obs = sx.make_observation(np.zeros((1, 21, 21)), psf=psf, weights=w, bands=["i"])
    lik0 = likelihood_for(obs, frame)
    t = np.asarray(lik0.renderer(model()))[0] / 2.0  # template of unit flux
    data = 1.2 * t + sigma * rng.standard_normal(t.shape)  # low S/N: prior/Jacobian matter
    lik = GaussianLikelihood(data[None], w, lik0.renderer)
    a = np.sum(w[0] * t * t)
    mean, sd = np.sum(w[0] * t * data) / a, 1 / np.sqrt(a)
    assert 2.0 < mean / sd < 8.0
    res = sample(model, [lik], key=1, num_warmup=300, num_samples=1000, num_chains=2, progress=False)
    (draws,) = res.params.values()
    f = draws.reshape(-1)
    # truncation at 0 is > 2 sd away: moments of the truncated normal
    from scipy.stats import truncnorm

    tn = truncnorm(-mean / sd, np.inf, loc=mean, scale=sd)
    # without the Jacobian term (flat in log-flux) the mean would sit ~0.25 sd lower
    assert abs(f.mean() - tn.mean()) < 0.1 * sd
    assert abs(f.std() / tn.std() - 1) < 0.1
    assert not res.sample_stats["diverging"].any()


def test_prior_from_parameter_is_used():
    """A Normal prior on the flux gives the conjugate Gaussian posterior."""
    rng = np.random.default_rng(4)
    psf = gaussian_psf_image(1.5, 15)[None]
    frame = sx.Frame(["i"], (21, 21))
    mu0, s0 = 1.0, 0.02
    with sx.core.collecting(lambda s: None):
        src = Source((10.0, 10.0), Spectrum([1.0], prior=dist.Normal(mu0, s0)),
                     _fixed_gauss(1.2), fix_center=True)
        model = SceneModel([src], frame.cube_shape)
    sigma = 0.05
    w = np.full((1, 21, 21), 1 / sigma**2)
    lik0 = likelihood_for(sx.make_observation(np.zeros((1, 21, 21)), psf=psf, weights=w, bands=["i"]), frame)
    t = np.asarray(lik0.renderer(model()))[0]
    data = 1.3 * t + sigma * rng.standard_normal(t.shape)
    lik = GaussianLikelihood(data[None], w, lik0.renderer)
    a = np.sum(w[0] * t * t)
    prec = a + 1 / s0**2
    mean = (np.sum(w[0] * t * data) + mu0 / s0**2) / prec
    sd = 1 / np.sqrt(prec)
    res = sample(model, [lik], key=2, num_warmup=150, num_samples=600, num_chains=2, progress=False)
    f = next(iter(res.params.values())).reshape(-1)
    assert abs(f.mean() - mean) < 0.1 * sd
    assert abs(f.std() / sd - 1) < 0.1


def test_calibration_of_flux_intervals():
    """68% intervals of star and galaxy fluxes cover the truth 68% +- 3 binomial sigma."""
    rng = np.random.default_rng(11)
    hits = []
    n_scenes = 20
    for _ in range(n_scenes):
        star = rng.uniform(2.0, 6.0, 2)
        gal = rng.uniform(2.0, 6.0, 2)
        frame, obs, sc, gc = _simulate(rng, star_flux=star, gal_flux=gal)
        fitted = _scene(frame, sc, gc, rng).fit(obs, max_steps=300)
        post = sample_scene(fitted, obs, num_warmup=100, num_samples=100, num_chains=2,
                            seed=int(rng.integers(1 << 30)), progress=False)
        flux = post["posterior"]["flux"].values.reshape(-1, 2, 2)
        lo, hi = np.percentile(flux, [16, 84], axis=0)
        truth = np.stack([star, gal])
        hits.extend(((lo <= truth) & (truth <= hi)).ravel().tolist())
    n = len(hits)
    k = int(np.sum(hits))
    half = 3 * np.sqrt(n * 0.68 * 0.32)
    assert abs(k - 0.68 * n) <= half, f"coverage {k}/{n} outside 68% +- {half:.1f}"


@pytest.fixture(scope="module")
def small_fit():
    rng = np.random.default_rng(5)
    frame, obs, sc, gc = _simulate(rng, star_flux=[4.0, 5.0], gal_flux=[3.0, 6.0])
    return _scene(frame, sc, gc, rng).fit(obs, max_steps=300), obs


def test_tree_layout_attach_and_summary(small_fit):
    fitted, obs = small_fit
    post = fitted.sample(obs, num_warmup=100, num_samples=100, num_chains=2, seed=0, progress=False)
    p = post["posterior"]
    assert p["flux"].dims == ("chain", "draw", "source", "band")
    assert p["y"].dims == ("chain", "draw", "source")
    assert p.sizes["chain"] == 2 and p.sizes["draw"] == 100
    assert list(p["band"].values) == BANDS
    assert "ra" not in p  # the frame has no WCS
    ss = post["sample_stats"]
    for v in ("lp", "diverging", "energy", "step_size", "n_steps", "acceptance_rate"):
        assert ss[v].dims == ("chain", "draw")
    # draws move and stay near the fitted values
    fit_flux = fitted.fluxes()
    mean = p["flux"].mean(("chain", "draw")).values
    sd = p["flux"].std(("chain", "draw")).values
    assert np.all(sd > 0)
    assert np.all(np.abs(mean - fit_flux) < 5 * sd)
    tree = attach_posterior(fitted.to_datatree(obs), post)
    assert {"posterior", "sample_stats", "sources", "model"} <= set(tree.children)
    table = summarize(tree, var_names=["flux"])
    assert len(table) == 4
    assert {"mean", "sd", "ess_bulk", "ess_tail", "r_hat"} <= set(table.columns)
    assert any(c.startswith("eti68") for c in table.columns)
    assert not jax.config.jax_enable_x64  # 64-bit was switched on only inside the call


def test_subset_and_fixed_centers(small_fit):
    fitted, obs = small_fit
    post = sample_scene(fitted, obs, num_warmup=100, num_samples=100, num_chains=2, sources=[1],
                        fix_centers=True, progress=False, precision="float32")
    p = post["posterior"]
    assert list(p["source"].values) == [1]
    assert "y" not in p and "x" not in p
    assert p["flux"].std().item() > 0


def test_errors(small_fit):
    fitted, obs = small_fit
    with pytest.raises(ValueError, match="without a prior"):
        sample_scene(fitted, obs, num_warmup=5, num_samples=5, missing_prior="error", progress=False)
    with pytest.raises(ValueError, match="distinct indices"):
        sample_scene(fitted, obs, sources=[5], progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        sample_scene(fitted, obs, num_samples=0, progress=False)
    with pytest.raises(ValueError, match="precision"):
        sample_scene(fitted, obs, precision="float16", progress=False)
    post = sample_scene(fitted, obs, num_warmup=100, num_samples=100, num_chains=2, progress=False)
    with pytest.raises(ValueError, match="sample_stats"):
        attach_posterior(fitted.to_datatree(obs), post.copy().drop_nodes("sample_stats"))


def test_free_form_sampling_needs_prior():
    from scarlet_xr.datasets import hsc_cosmos_35

    obs, centers = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers[:2], kinds=["point", "free"])
    with pytest.raises(ValueError, match="free-form morphology"):
        sample_scene(scene, obs, fix_morphology=False, progress=False)


def test_hsc_star_posterior():
    """Real data: the HSC star's flux and centre, other sources frozen."""
    from scarlet_xr.datasets import hsc_cosmos_35

    obs, centers = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=["point"] + ["free"] * 6)
    fitted = scene.fit(obs, max_steps=150)
    post = sample_scene(fitted, obs, sources=[0], num_warmup=100, num_samples=150, num_chains=2,
                        progress=False)
    p = post["posterior"]
    flux = p["flux"].sel(source=0)
    assert np.all(np.abs(flux.mean(("chain", "draw")) - fitted.fluxes()[0]) < 0.05 * fitted.fluxes()[0])
    sd_y = float(p["y"].std())
    assert 1e-4 < sd_y < 0.2  # a bright star is located to a small fraction of a pixel
    table = summarize(post)
    assert table["r_hat"].max() < 1.05


def test_a_frozen_scene_renders_as_the_scene_and_moves_with_its_centres():
    """SceneModel.frozen: the same cube at the current centres, the same cube after shifts of
    more than a pixel (a frozen image moves like the profile), free-form centres freed, and
    every parameter of an unselected source fixed."""
    import equinox as eqx

    from scarlet_xr.core import FreeFormMorphology, SersicMorphology

    psf = gaussian_psf_image(1.2, 11)
    yy, xx = np.mgrid[-7:8, -7:8]
    blob = np.exp(-(yy**2 + xx**2) / 8.0)
    srcs = [Source((20.3, 18.6), np.array([1.0, 2.0]), GaussianMorphology(2.0, shape=21)),
            Source((12.0, 25.2), np.array([3.0, 1.0]), SersicMorphology(1.5, 2.5, shape=25)),
            Source((28.4, 10.5), np.array([2.0, 2.0]), PointSourceMorphology(psf)),
            Source((30.0, 30.0), np.array([1.0, 1.0]), FreeFormMorphology(blob))]
    model = SceneModel(srcs, (2, 44, 44), psf=psf)
    frozen = model.frozen(selected=[0, 1, 3])
    ref = np.asarray(model())
    np.testing.assert_allclose(np.asarray(frozen()), ref, atol=1e-5 * ref.max())
    np.testing.assert_allclose(np.asarray(frozen.fluxes()), np.asarray(model.fluxes()), rtol=1e-4)
    # a Gaussian moves exactly; a pixelised Sersic cusp is not band-limited: measured 7.7e-4 of the peak
    for d in (0.3, 0.7, 1.4, -2.6):
        for i, tol in ((0, 1e-5), (1, 2e-3)):
            moved = eqx.tree_at(lambda m, i=i: m.sources[i].center.raw, model,
                                model.sources[i].center.raw + d)
            fmoved = eqx.tree_at(lambda m, i=i: m.sources[i].center.raw, frozen,
                                 frozen.sources[i].center.raw + d)
            want = np.asarray(moved())
            np.testing.assert_allclose(np.asarray(fmoved()), want, atol=tol * want.max())
    assert srcs[3].center.fixed and not frozen.sources[3].center.fixed  # frozen pixels: centre freed
    assert frozen.sources[2].center.fixed
    leaves = jax.tree_util.tree_leaves(frozen.sources[2], is_leaf=lambda x: isinstance(x, Parameter))
    assert all(p.fixed for p in leaves if isinstance(p, Parameter))
    assert all(frozen.frozen(fix_centers=True).sources[i].center.fixed for i in range(4))


def _zero_band_fit():
    """Star + galaxy where the galaxy has no light in the first band: the fit leaves that amplitude at
    the positivity floor."""
    rng = np.random.default_rng(11)
    frame, obs, sc, gc = _simulate(rng, star_flux=[4.0, 5.0], gal_flux=[1e-9, 6.0])
    fitted = _scene(frame, sc, gc, rng).fit(obs, max_steps=300)
    from scarlet_xr.scene._linear import set_spectra

    model = SceneModel(list(fitted.sources), frame.cube_shape, psf=frame.psf)
    amps = np.array([np.asarray(s.components[0].spectrum(), float) for s in model.sources])
    amps[1, 0] = 1e-6 * amps[:, 0].max()  # what set_spectra's floor leaves where the data say 0
    floored = set_spectra(model, amps)
    return fitted._replace(floored), obs, frame


def test_an_amplitude_at_the_positivity_floor_starts_the_sampler_at_its_noise():
    """The sampler starts a free amplitude far below its noise at its noise; nothing else moves. At the
    floor the log-amplitude's posterior is flat, the whitening's scale there enormous, and NUTS crawled:
    on a five-source blend two of four chains ran at the tree-depth cap on every draw and two had step
    sizes below 1e-4 (140 s for 20 + 20 draws; 27 s, step sizes 0.3-1.3, once lifted)."""
    from scarlet_xr.scene._sample import _lifted

    fitted, obs, frame = _zero_band_fit()
    model = SceneModel(list(fitted.sources), frame.cube_shape, psf=frame.psf)
    lik = likelihood_for(obs, frame)
    before = np.array([np.asarray(s.components[0].spectrum(), float) for s in model.sources])
    lifted = _lifted(model, [lik], frame.psf, {0, 1})
    after = np.array([np.asarray(s.components[0].spectrum(), float) for s in lifted.sources])
    assert after[1, 0] > 1e3 * before[1, 0]  # raised from the floor ...
    np.testing.assert_allclose(np.delete(after.ravel(), 2), np.delete(before.ravel(), 2), rtol=1e-6)
    # ... to the linear solve's error of that amplitude (the galaxy's g flux error / its box sum)
    from scarlet_xr.scene._linear import _box_sums, solve_linear

    sol = solve_linear(model, [lik], frame.psf)
    noise = np.sqrt(sol.flux_variance[1, 0]) / _box_sums(model)[1]
    np.testing.assert_allclose(after[1, 0], noise, rtol=1e-5)
    # an unselected source is left alone
    same = _lifted(model, [lik], frame.psf, {0})
    np.testing.assert_array_equal(
        np.asarray(same.sources[1].components[0].spectrum()), before[1])


def test_sampling_a_scene_with_an_amplitude_at_the_floor_takes_normal_steps():
    """With the start lifted, the chains adapt step sizes near 1 (whitened) and short trees."""
    fitted, obs, _ = _zero_band_fit()
    post = fitted.sample(obs, num_warmup=100, num_samples=100, num_chains=2, seed=0, progress=False)
    stats = post["sample_stats"]
    assert float(stats["step_size"].min()) > 0.05, stats["step_size"].values.min(axis=1)
    assert float(stats["n_steps"].median()) < 31, np.median(stats["n_steps"].values, axis=1)
    g = post["posterior"]["flux"].sel(band="g").values[..., 1]
    assert np.all(g >= 0) and g.mean() < 3 * g.std()  # no light: the posterior hugs zero
