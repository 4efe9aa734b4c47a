"""Observations are bound to the frame once and kept by the fitted Scene (issue 13)."""

import numpy as np
import pytest

import scarlet_xr as sx
from scarlet_xr.datasets import hsc_cosmos_35
from scarlet_xr.xr import BoundObservation, bind_observations


@pytest.fixture(scope="module")
def fitted():
    obs, centers = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=["point"] + ["sersic"] * (len(centers) - 1))
    return obs, scene, scene.fit(obs, max_steps=60)


def test_fitted_scene_keeps_its_bound_observations_and_results_reuse_them(fitted):
    obs, scene, fit = fitted
    assert scene.observations is None  # the input scene is left unchanged
    (bound,) = fit.observations
    assert isinstance(bound, BoundObservation) and bound.name == "hsc" and bound.dataset is obs
    assert bound.frame is fit.frame
    # handing the same observation back reuses the bound likelihood (built once)
    assert fit.bound_observations(obs)[0] is bound
    assert bind_observations(fit.observations, fit.frame)[0] is bound
    # results without observations are those with them
    a, b = fit.to_datatree(measure=False), fit.to_datatree(obs, measure=False)
    np.testing.assert_array_equal(a["sources"]["flux"].values, b["sources"]["flux"].values)
    np.testing.assert_array_equal(a["observations/hsc"]["model"].values,
                                  b["observations/hsc"]["model"].values)


def test_results_refuse_other_observations(fitted):
    obs, scene, fit = fitted
    with pytest.raises(ValueError, match=r"not the ones the scene was fitted to: expected .*58, 48.*got"):
        fit.to_datatree(obs.isel(y=slice(0, 40)))
    with pytest.raises(ValueError, match="not fitted to observations"):
        scene.to_datatree()


def test_same_shape_other_data_is_bound_anew(fitted):
    obs, _, fit = fitted
    other = obs.assign(data=obs["data"] * 2.0)
    (rebound,) = fit.bound_observations(other)
    assert rebound is not fit.observations[0] and rebound.dataset is other
    tree = fit.to_datatree(other, measure=False)
    np.testing.assert_allclose(tree["observations/hsc"]["data"].values, 2.0 * obs["data"].values, rtol=1e-6)


def test_sampling_defaults_to_the_fitted_observations(fitted):
    obs, _, fit = fitted
    kw = dict(num_warmup=30, num_samples=30, num_chains=1, seed=3, progress=False, sources=[0])
    a = fit.sample(**kw)
    b = fit.sample(obs, **kw)
    np.testing.assert_array_equal(a["posterior"]["flux"].values, b["posterior"]["flux"].values)
    assert np.all(np.isfinite(a["posterior"]["flux"].values))


def test_the_default_path_checks_binds_and_detects_once(monkeypatch):
    """fit_observations on the HSC cutout: every observation is checked, given a likelihood and
    enters a detection image once (normalised observations are handed on, not re-checked)."""
    import copy

    import scarlet_xr.scene._auto as auto
    import scarlet_xr.scene._init as init
    import scarlet_xr.xr._bridge as bridge
    from scarlet_xr.xr import normalize_observations

    obs, centers = hsc_cosmos_35()
    norm = normalize_observations(obs)
    assert normalize_observations(norm) is norm
    assert normalize_observations(copy.deepcopy(norm)) is not norm
    changed = dict(norm)
    changed["other"] = obs
    assert list(normalize_observations(changed)) == ["hsc", "other"]

    counts = {"check": 0, "likelihood": 0, "detection": 0}

    def counting(name, fun):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fun(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(bridge, "check_observation", counting("check", bridge.check_observation))
    for mod in (bridge, init):  # bind_observations imports it from _bridge when called
        monkeypatch.setattr(mod, "likelihood_for", counting("likelihood", bridge.likelihood_for))
    monkeypatch.setattr(auto, "detection_image", counting("detection", auto.detection_image))
    tree = sx.fit_observations(obs, centers, max_steps=50)
    assert np.isfinite(tree["sources"]["flux"].values).all()
    # checked when normalised and when its likelihood is built (likelihood_for checks its input)
    assert counts == {"check": 2, "likelihood": 1, "detection": 1}
