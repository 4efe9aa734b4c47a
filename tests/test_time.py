"""Time: observations with epochs, variable sources with light curves (issue 17 item 2).

A supernova on a static exponential host, drawn with GalSim in 6 epochs x 2 bands, each epoch
with its own seeing (tests/_sim_transient.py); fitted with a LightCurve point source and a Sersic
host, then sampled.
"""

from __future__ import annotations

import numpy as np
import pytest
from _sim_transient import MJD, SN_FLUX, supernova_epochs

import scarlet_xr as sx


def _scene(obs, truth, *, variable=True):
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.Source(truth["host_center"] + 0.3, sx.Spectrum(truth["host_flux"] * 0.7),
                  sx.SersicMorphology(1.5, 4.0, (0.0, 0.0), shape=41), name="host")
        spectrum = (sx.LightCurve(np.full((len(frame.epochs), 2), 100.0)) if variable
                    else sx.Spectrum([100.0, 100.0]))
        sx.Source(truth["sn_center"] - 0.3, spectrum, sx.PointSourceMorphology(frame.psf), name="sn")
    return scene


@pytest.fixture(scope="module")
def supernova():
    obs, truth = supernova_epochs(1)
    fitted = _scene(obs, truth).fit(obs)
    return obs, truth, fitted, fitted.to_datatree(obs)


def test_light_curve_recovered_within_errors(supernova):
    obs, truth, fitted, tree = supernova
    src = tree["sources"]
    assert src["light_curve"].dims == ("source", "epoch", "band")
    np.testing.assert_allclose(src["epoch"].values, MJD)
    assert src["variable"].values.tolist() == [False, True]
    lc, err = src["light_curve"].values[1], src["light_curve_err"].values[1]
    pull = (lc - truth["sn_flux"]) / err
    # 12 fluxes from before the explosion (0) to the peak (900): all within their errors
    # (measured: |pull| <= 2.3, rms 1.1)
    assert np.all(np.abs(pull) < 3.0), pull
    assert np.sqrt(np.mean(pull**2)) < 1.6, pull
    assert np.all((err > 5) & (err < 25)), err  # 1-sigma of a PSF flux at noise 1-1.2
    # the flux of a variable source is its mean over epochs
    np.testing.assert_allclose(src["flux"].values[1], lc.mean(axis=0), rtol=1e-5)
    # the host: one flux for all epochs, the light inside the image (measured -0.3%, -0.6%)
    np.testing.assert_allclose(src["flux"].values[0], truth["host_flux"], rtol=0.015)
    # and static sources' light curves are their flux
    np.testing.assert_allclose(src["light_curve"].values[0], np.broadcast_to(src["flux"].values[0], (6, 2)))
    assert len(tree["observations"].children) == len(obs)
    for name in tree["observations"].children:
        node = tree["observations"][name]
        r = (node["data"] - node["model"]) * np.sqrt(node["weight"])
        assert 0.9 < float((r**2).mean()) < 1.1, name  # each epoch's model is its own


def test_host_flux_unchanged_by_the_transient(supernova):
    obs, truth, _, tree = supernova
    # the same noise without the supernova: the host's flux must not take the transient's light
    quiet, _ = supernova_epochs(1, sn_flux=np.zeros_like(SN_FLUX))
    host_only = _scene(quiet, truth).fit(quiet).to_datatree(quiet)["sources"]
    with_sn = tree["sources"]
    diff = with_sn["flux"].values[0] - host_only["flux"].values[0]
    # measured 0.1 and 0.9 sigma (g, r); a host that took the supernova's light would move by
    # ~ its mean flux, 20-30 sigma
    assert np.all(np.abs(diff) < 1.5 * with_sn["flux_err"].values[0]), (diff, with_sn["flux_err"].values[0])
    # and the quiet light curve is zero within its errors
    lc, err = host_only["light_curve"].values[1], host_only["light_curve_err"].values[1]
    assert np.all(np.abs(lc / err) < 3.0), lc / err


def test_a_static_model_cannot_follow_the_transient(supernova):
    obs, truth, _, _ = supernova
    static = _scene(obs, truth, variable=False).fit(obs).to_datatree(obs)
    node = static["observations"]["e2"]  # the peak
    r = (node["data"] - node["model"]) * np.sqrt(node["weight"])
    assert float((r**2).mean()) > 1.2  # the one flux of a static point source misses the peak
    assert "light_curve" not in static["sources"] or static["sources"]["variable"].values.sum() == 0


def test_light_curve_sampled(supernova):
    obs, truth, fitted, tree = supernova
    post = fitted.sample(obs, num_warmup=150, num_samples=200, num_chains=1, progress=False)
    lc = post["posterior"]["light_curve"]
    assert lc.dims == ("chain", "draw", "source", "epoch", "band")
    np.testing.assert_allclose(lc["epoch"].values, MJD)
    mean = lc.mean(("chain", "draw")).values[1]
    sd = lc.std(("chain", "draw")).values[1]
    err = tree["sources"]["light_curve_err"].values[1]
    fit = tree["sources"]["light_curve"].values[1]
    assert np.all(np.abs(mean - fit) < 0.6 * err), (mean - fit) / err
    assert np.all((sd > 0.7 * err) & (sd < 1.3 * err)), sd / err


def test_frozen_sampler_keeps_the_model_psf():
    # regression: the frozen templates of intrinsic (Sersic) profiles lacked the model PSF, so
    # sampled host fluxes were 2% (6 sigma) below the fit
    obs, truth = supernova_epochs(1, sn_flux=np.zeros_like(SN_FLUX))
    obs = [o.drop_vars("epoch") for o in obs[:2]]
    frame = sx.frame_from_observations(obs)
    assert frame.epochs == ()
    with sx.Scene(frame) as scene:
        sx.Source(truth["host_center"], sx.Spectrum(truth["host_flux"] * 0.8),
                  sx.SersicMorphology(1.5, 4.0, (0.0, 0.0), shape=41))
    fitted = scene.fit(obs, e_rel=1e-6)
    post = fitted.sample(obs, num_warmup=150, num_samples=200, num_chains=1, progress=False)
    mean = post["posterior"]["flux"].mean(("chain", "draw")).values[0]
    sd = post["posterior"]["flux"].std(("chain", "draw")).values[0]
    # measured 0.4 sigma (the bug: 6 sigma)
    assert np.all(np.abs(mean - fitted.fluxes()[0]) < 0.8 * sd), (mean - fitted.fluxes()[0]) / sd


def test_scene_with_epochs_saves_and_loads(supernova, tmp_path):
    _, _, fitted, _ = supernova
    path = sx.save_scene(fitted, tmp_path / "sn.npz")
    back = sx.load_scene(path)
    assert back.frame.epochs == fitted.frame.epochs
    assert back.sources[1].num_epochs == 6
    np.testing.assert_allclose(back.render(), fitted.render(), rtol=1e-6, atol=1e-6)
    assert back.render().shape == (6, 2, 41, 41)


def test_epochs_bad_input():
    obs, truth = supernova_epochs(2)
    # some observations with an epoch, some without
    mixed = [obs[0], obs[1].drop_vars("epoch")]
    with pytest.raises(ValueError, match="no epoch coordinate but others do"):
        sx.frame_from_observations(mixed)
    # an epoch that is not one value
    with pytest.raises(ValueError, match="epoch is one value"):
        sx.frame_from_observations([obs[0].assign_coords(epoch=("t", [1.0, 2.0]))])
    with pytest.raises(ValueError, match="bad epoch"):
        sx.make_observation(np.zeros((1, 9, 9)), epoch=[1.0, 2.0],
                            psf=np.pad(np.ones((1, 1, 1)), ((0, 0), (2, 2), (2, 2))))
    frame = sx.frame_from_observations(obs)
    # a light curve of another length than the frame's epochs
    wrong = "light curve has 3 epochs; the frame has 6"
    with sx.Scene(frame) as scene, pytest.raises(ValueError, match=wrong):
        sx.Source((20, 20), sx.LightCurve(np.ones((3, 2))), sx.PointSourceMorphology(frame.psf))
    assert len(scene) == 0
    with pytest.raises(ValueError, match=r"2-D \(epoch, band\)"):
        sx.LightCurve(np.ones(4))
    # a source mixing a static and a variable component
    point = sx.PointSourceMorphology(frame.psf)
    with pytest.raises(ValueError, match="all be static or all have light curves"):
        sx.Source((20, 20), components=[(sx.Spectrum([1.0, 1.0]), point),
                                        (sx.LightCurve(np.ones((6, 2))), point)])
    # an observation whose epoch the frame does not have
    from scarlet_xr.xr import likelihood_for

    with pytest.raises(ValueError, match="not one of the frame's epochs"):
        likelihood_for(obs[0].assign_coords(epoch=1.0), frame)
    # a model with an epoch axis needs observations with epochs
    with pytest.raises(ValueError, match="has no epoch"):
        likelihood_for(obs[0].drop_vars("epoch"), frame)
