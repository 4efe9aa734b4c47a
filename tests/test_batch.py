"""Batched fitting: padding to canonical shapes, vmap, same answer as fitting alone."""

import numpy as np
import pytest

from scarlet_xr.core import GaussianMorphology, SceneModel, Source
from scarlet_xr.infer import fit, fit_batch, stack_trees
from scarlet_xr.survey import bucket_key, prepare_blend, read_blend, simulate_blends
from scarlet_xr.xr import observation_wcs

pytest.importorskip("galsim")


@pytest.fixture(scope="module")
def blends(tmp_path_factory):
    d = tmp_path_factory.mktemp("blends")
    _, table = simulate_blends(d, 4, seed=11, sizes=(29, 31), sources=(1, 2))
    out = []
    for b in range(4):
        rows = table[table["blend"] == b]
        ds = read_blend(d / rows["file"][0])
        x, y = observation_wcs(ds).world_to_pixel_values(rows["ra"], rows["dec"])
        key = bucket_key(ds["data"].shape[1:], 2, ds["psf"].shape[1:], ds["band"].values)
        model, lik, _ = prepare_blend(ds, np.c_[y, x], key)
        out.append((model, lik, len(rows), np.asarray(rows["true_flux"]), key))
    return out


def test_all_blends_share_one_bucket(blends):
    keys = {b[4] for b in blends}
    assert len(keys) == 1
    key = keys.pop()
    assert key.stamp == 32 and key.slots == 2
    # padded models really have identical structure (so one compiled program serves all)
    stack_trees([b[0] for b in blends])


def test_batch_equals_alone(blends):
    models = [b[0] for b in blends]
    liks = [(b[1],) for b in blends]
    batched, hists = fit_batch(models, liks, max_steps=150)
    refill, hists2 = fit_batch(models, liks, max_steps=150, batch_size=3)
    errors = []
    for (model, lik, n, truth, _), fb, hb, fr, hr in zip(blends, batched, hists, refill, hists2, strict=True):
        alone, ha = fit(model, (lik,), max_steps=150)
        fa = np.asarray(alone.fluxes())[:n]
        assert hb.status == ha.status and hb.num_steps == ha.num_steps
        assert hr.num_steps == ha.num_steps
        # float32 reduction order differs between batched and single kernels (the first loss and
        # gradient agree to 1e-8); over a fit it moves fluxes along a blend's flat direction
        # (two sources sharing light; blend 0 stops after 22 steps): up to 0.74 % in one band
        np.testing.assert_allclose(np.asarray(fb.fluxes())[:n], fa, rtol=1e-2)
        np.testing.assert_allclose(np.asarray(fr.fluxes())[:n], fa, rtol=1e-2)
        # padded slots stay switched off
        assert np.all(np.asarray(fb.fluxes())[n:] == 0)
        errors.append(np.abs(fa / truth - 1).ravel())
    # and the answer is a real deblend: fluxes close to the truth
    assert np.median(np.concatenate(errors)) < 0.25


def test_active_model_matches_scene_model():
    srcs = [Source((10.2, 9.7), np.array([1.0, 3.0]), GaussianMorphology(1.5, shape=11)),
            Source((5.0, 14.0), np.array([2.0, 1.0]), GaussianMorphology(2.0, shape=11))]
    full = np.asarray(SceneModel(srcs[:1], (2, 21, 21))())
    act = SceneModel(srcs, (2, 21, 21), active=[1.0, 0.0])
    np.testing.assert_allclose(np.asarray(act()), full, atol=1e-6)
    assert np.asarray(act.fluxes())[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        SceneModel(srcs, (2, 21, 21), active=[1.0])


def test_mismatched_structures_raise(blends):
    other = Source((10, 10), np.ones(5), GaussianMorphology(1.5, shape=11))
    odd = SceneModel([other, other], blends[0][0].shape)
    with pytest.raises(ValueError, match="different structure"):
        fit_batch([blends[0][0], odd], [(blends[0][1],), (blends[0][1],)])
    with pytest.raises(ValueError, match="one sequence of likelihoods per model"):
        fit_batch([blends[0][0]], [])
