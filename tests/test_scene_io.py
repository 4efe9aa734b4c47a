"""save_scene / load_scene: full structure and parameters, no pickle, bit-identical."""

import json

import equinox as eqx
import numpy as np
import pytest

import scarlet_xr as sx
from scarlet_xr.scene import load_scene, save_scene


@eqx.filter_jit
def _render(model):
    """Compiled render (one compile instead of many eager ops); same function for both scenes."""
    return model()


@pytest.fixture(scope="module")
def fitted_scene(hsc_fits_obs):
    obs = hsc_fits_obs
    frame = sx.frame_from_observations(obs)
    centers = sx.scene.detect_sources(obs, frame)
    kinds = ["point"] + ["free"] * (len(centers) - 1)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=kinds)
    return scene.fit(obs, max_steps=60)


def test_saved_scene_renders_bit_identically(fitted_scene, tmp_path):
    path = save_scene(fitted_scene, tmp_path / "scene")
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as f:  # plain arrays + a JSON string, no pickle
        desc = json.loads(str(f["__scene__"]))
        assert all(f[k].dtype != object for k in f.files)
    assert desc["frame"]["bands"] == ["g", "r", "i", "z", "y"]
    loaded = load_scene(path)
    assert np.array_equal(loaded.render(), fitted_scene.render())
    assert np.array_equal(np.asarray(loaded.model().render_sources()),
                          np.asarray(fitted_scene.model().render_sources()))
    assert [s.kind for s in loaded.sources] == [s.kind for s in fitted_scene.sources]
    assert [s.name for s in loaded.sources] == [s.name for s in fitted_scene.sources]
    assert loaded.frame.origin == fitted_scene.frame.origin and loaded.frame.shape == fitted_scene.frame.shape
    assert loaded.frame.wcs.to_header_string() == fitted_scene.frame.wcs.to_header_string()
    # fixed/free flags and steps survive
    for a, b in zip(loaded.sources, fitted_scene.sources, strict=True):
        assert a.center.fixed == b.center.fixed and a.center.step == b.center.step


def test_loaded_scene_fits_again_identically(fitted_scene, hsc_fits_obs, tmp_path):
    loaded = load_scene(save_scene(fitted_scene, tmp_path / "s.npz"))
    a = fitted_scene.fit(hsc_fits_obs, max_steps=40)
    b = loaded.fit(hsc_fits_obs, max_steps=40)
    assert b.history.num_steps == a.history.num_steps == 40
    np.testing.assert_array_equal(b.history.loss, a.history.loss)
    assert b.history.loss[-1] < b.history.loss[0]
    assert np.array_equal(b.render(), a.render())


def test_parametric_sources_and_constraints_round_trip(tmp_path):
    frame = sx.Frame(["g", "r"], (41, 41), psf_sigma=0.9)
    with sx.Scene(frame) as scene:
        sx.Source((12.3, 14.8), np.array([3.0, 5.0]), sx.SersicMorphology(2.5, 3.2, (0.15, -0.1)))
        sx.Source((28.6, 25.1), np.array([1.0, 0.5]), sx.GaussianMorphology(1.7, (0.0, 0.3)))
        sx.Source((30.2, 8.9), np.array([2.0, 2.0]), sx.PointSourceMorphology(frame.psf))
    loaded = load_scene(save_scene(scene, tmp_path / "p.npz"))
    assert np.array_equal(np.asarray(_render(loaded.model())), np.asarray(_render(scene.model())))
    m = loaded.sources[0].components[0].morphology
    assert isinstance(m, sx.SersicMorphology) and m.shape == scene.sources[0].components[0].morphology.shape
    assert (m.n.constraint.lower, m.n.constraint.upper) == (0.3, 6.5)
    assert loaded.frame.wcs is None and loaded.frame.psf_sigma == 0.9


def test_unsavable_content_and_bad_files(tmp_path):
    frame = sx.Frame(["g"], (15, 15))
    with sx.Scene(frame) as scene:
        sx.Source((7.0, 7.0), sx.Spectrum(np.array([1.0]), prior=lambda v: -v), sx.GaussianMorphology(1.5))
    with pytest.raises(ValueError, match="cannot save source 0.*values of type function are not supported"):
        save_scene(scene, tmp_path / "x.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a scarlet_xr scene file"):
        load_scene(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable scene file"):
        load_scene(tmp_path / "junk.npz")
    desc = {"format": "scarlet_xr.scene", "version": 1,
            "frame": {"bands": ["g"], "shape": [5, 5], "origin": [0, 0], "psf_sigma": "0.8", "wcs_header": None},
            "sources": [{"class": "os.system", "fields": {}}]}
    np.savez(tmp_path / "evil.npz", __scene__=np.array(json.dumps(desc)))
    with pytest.raises(ValueError, match="names a class outside scarlet_xr: 'os.system'"):
        load_scene(tmp_path / "evil.npz")
