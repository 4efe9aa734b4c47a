"""A background fitted with the sources (issue 17, item 4): ``sky="constant"|"plane"``, ``--sky``.

GalSim blends (an independent renderer) with a known pedestal or gradient added
per band, of either sign: with the sky fitted, the fluxes and the sky come back;
without it, the pedestal biases the fluxes.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _sim import galsim_blend

import scarlet_xr as sx
from scarlet_xr.core import AbstractRenderer, GaussianLikelihood

SIMS = Path(__file__).resolve().parents[2] / "shared" / "sims"

NOISE = np.array([0.02, 0.02, 0.025, 0.03, 0.04])
LEVEL = np.array([0.5, -0.3, 0.8, -0.6, 0.4]) * NOISE  # half a sigma, either sign


@pytest.fixture(scope="module")
def blend():
    obs, centers, fluxes, _ = galsim_blend(seed=11, n_sources=3, size=61)
    return obs, centers, fluxes


class _Same(AbstractRenderer):
    """The model cube is the observation (for a likelihood unit test)."""

    def __call__(self, cube):
        return cube


def _with(obs, sky):
    return obs.assign(data=obs["data"] + sky.astype(obs["data"].dtype))


def test_profiled_sky_is_the_weighted_mean_of_the_residual():
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (2, 9, 9)) + np.array([3.0, -2.0])[:, None, None]
    weights = rng.uniform(0.5, 2.0, data.shape)
    weights[1, :2] = 0.0  # masked pixels do not count
    lik = GaussianLikelihood(data, weights, _Same(), sky="constant")
    model = np.zeros_like(data)
    expect = (weights * data).sum((1, 2)) / weights.sum((1, 2))
    np.testing.assert_allclose(np.asarray(lik.sky_coefficients(model))[:, 0], expect, rtol=1e-5)
    r = data - expect[:, None, None]
    np.testing.assert_allclose(float(lik.chi2(model)), float((weights * r**2).sum()), rtol=1e-5)
    with pytest.raises(ValueError, match="sky must be None or one of"):
        GaussianLikelihood(data, weights, _Same(), sky="flat")


@pytest.mark.parametrize("kind", ["constant", "plane"])
def test_fitted_sky_recovers_fluxes_and_the_sky(blend, kind):
    obs, centers, fluxes = blend
    ny, nx = obs.sizes["y"], obs.sizes["x"]
    sky = np.broadcast_to(LEVEL[:, None, None], (5, ny, nx)).copy()
    if kind == "plane":
        y = (np.arange(ny) - (ny - 1) / 2) / ny
        sky = sky + (1.5 * NOISE)[:, None, None] * y[None, :, None]  # 1.5 sigma across the image
    tree = sx.fit_observations(_with(obs, sky), centers, sky=kind)
    node = tree["observations"].children[obs.attrs["name"]].to_dataset()
    src = tree["sources"].to_dataset()
    # the sky comes back within a small fraction of the noise (per band, in units of its sigma)
    dev = np.abs(node["sky"].values - sky).max(axis=(1, 2)) / NOISE
    # measured: at most 0.027 sigma (constant), 0.085 sigma (plane)
    assert np.all(dev < 0.2), dev
    # the stored model includes the sky: the residual is noise
    chi2 = float((((node["data"] - node["model"]) ** 2) * node["weight"]).sum() / node["weight"].size)
    assert 0.85 < chi2 < 1.15, chi2
    pulls = (src["flux"].values - fluxes) / src["flux_err"].values
    assert tree.attrs["sky"] == kind
    # measured: median 0.025 (constant), 0.034 (plane); the same blend without a sky, fitted
    # without one: 0.058 (flux errors are conditional on the shapes: pulls of 1-4)
    rel = np.abs(src["flux"].values / fluxes - 1)
    assert np.median(rel) < 0.05, (rel, pulls)


def test_without_the_sky_a_pedestal_biases_the_fluxes(blend):
    obs, centers, fluxes = blend
    sky = np.broadcast_to(LEVEL[:, None, None], (5, obs.sizes["y"], obs.sizes["x"]))
    with_sky = sx.fit_observations(_with(obs, sky), centers, sky="constant")["sources"]["flux"].values
    without = sx.fit_observations(_with(obs, sky), centers)["sources"]["flux"].values
    err_with = np.median(np.abs(with_sky / fluxes - 1))
    err_without = np.median(np.abs(without / fluxes - 1))
    # measured 0.378 without, 0.025 with
    assert err_without > 2 * err_with, (err_without, err_with)


def test_cli_sky_flag_and_refusals(tmp_path, capsys):
    """``scarlet-xr fit --sky constant`` on a make_scenes.py scene with a pedestal added."""
    import xarray as xr
    from astropy.io import fits
    from astropy.table import Table

    from scarlet_xr.cli import main

    if not (SIMS / "make_scenes.py").exists():
        pytest.skip(f"the scene simulator is not at {SIMS}")
    subprocess.run([sys.executable, str(SIMS / "make_scenes.py"), str(tmp_path), "31", "1"], check=True,
                   capture_output=True)
    d = tmp_path / "scene_000"
    with fits.open(d / "ground.fits") as h:
        sigma = np.sqrt(np.median(h["VARIANCE"].data, axis=(1, 2)))
        level = np.array([0.5, -0.3, 0.8, -0.6, 0.4]) * sigma
        h[0].data = (h[0].data + level[:, None, None]).astype(np.float32)
        h.writeto(d / "sky.fits")
    Table.read(d / "truth.ecsv")["ra", "dec"].write(d / "positions.ecsv")
    out = tmp_path / "res.nc"
    assert main(["fit", str(d / "sky.fits"), "--sources", str(d / "positions.ecsv"), "--sky", "constant",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    tree = xr.open_datatree(out)
    assert tree.attrs["sky"] == "constant"
    name = next(iter(tree["observations"].children))
    got = tree[f"observations/{name}"]["sky_coefficients"].values[:, 0]
    # measured: within 0.04 sigma of the added level in every band
    assert np.all(np.abs(got - level) < 0.15 * sigma), (got - level) / sigma
    assert main(["fit", str(d / "sky.fits"), "--sources", str(d / "positions.ecsv"), "--sky", "constant",
                 "--sample", "10", "--out", str(tmp_path / "b.nc")]) == 2
    assert "--sky is not supported with --sample" in capsys.readouterr().err


def test_refit_from_the_tree_keeps_the_sky_model(blend):
    obs, centers, _ = blend
    sky = np.broadcast_to(LEVEL[:, None, None], (5, obs.sizes["y"], obs.sizes["x"]))
    tree = _with(obs, sky).scarlet.fit(centers, sky="constant", max_steps=200)
    again = tree.scarlet.fit(max_steps=200)
    assert again.attrs["sky"] == "constant"
    name = obs.attrs["name"]
    np.testing.assert_allclose(again[f"observations/{name}"]["sky_coefficients"].values[:, 0], LEVEL,
                               atol=0.2 * NOISE.max())
