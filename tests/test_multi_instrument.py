"""Joint fits of several instruments: a GalSim scene with truth and the real HST + HSC pair."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS

import scarlet_xr as sx
from scarlet_xr.scene import detect_sources

sys.path.insert(0, str(Path(__file__).parent))
from _sim_multi import simulate  # noqa: E402

DATA = Path(__file__).parent / "data"


def _fit(obs, truth, *, max_box):
    frame = sx.frame_from_observations(obs)
    centers = frame.to_pixel(np.stack([truth["ra"], truth["dec"]], axis=1))
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds="monotonic", max_box=max_box)
    fitted = scene.fit(obs, max_steps=400)
    return frame, fitted


def test_joint_fit_beats_ground_only_on_blends():
    ground, space, truth = simulate(seed=3)
    g_frame, g_fit = _fit([ground], truth, max_box=15)
    j_frame, j_fit = _fit([ground, space], truth, max_box=59)
    assert j_frame.pixel_scale == pytest.approx(0.05, rel=1e-6)
    assert g_frame.pixel_scale == pytest.approx(0.2, rel=1e-6)
    assert j_frame.bands == ("g", "r", "i", "z", "y", "F814W")
    blended = truth["blended"]
    err_g = np.abs(g_fit.fluxes()[blended] / truth["flux_ground"][blended] - 1)
    err_j = np.abs(j_fit.fluxes()[blended, :5] / truth["flux_ground"][blended] - 1)
    assert np.median(err_j) < 0.75 * np.median(err_g)
    tree = j_fit.to_datatree([ground, space])
    assert set(tree["observations"].children) == {"ground", "space"}
    for node in tree["observations"].children.values():
        assert node.attrs["chi2_reduced"] < 1.2


def test_default_path_with_a_sharp_space_psf():
    # an Airy of lambda/D = 0.08" on 0.05" pixels (as make_scenes.py --multires draws it): its core
    # (0.78 px) is narrower than the default model PSF (sigma 0.8 px, core 0.85 px), which used to
    # refuse the joint fit; the default frame now takes a narrower model PSF
    ground, space, truth = simulate(seed=3, space_lam_over_diam=0.08)
    assert sx.frame_from_observations([ground]).psf_sigma == pytest.approx(0.8)
    frame = sx.frame_from_observations([ground, space])
    assert 0.4 < frame.psf_sigma < 0.7
    radec = np.stack([truth["ra"], truth["dec"]], axis=1)
    joint = sx.fit_observations([ground, space], frame.to_pixel(radec) + np.asarray(frame.origin))
    g_frame = sx.frame_from_observations([ground])
    alone = sx.fit_observations([ground], g_frame.to_pixel(radec) + np.asarray(g_frame.origin))
    blended = truth["blended"]
    err_j = np.abs(joint["sources"]["flux"].values[blended, :5] / truth["flux_ground"][blended] - 1)
    err_g = np.abs(alone["sources"]["flux"].values[blended] / truth["flux_ground"][blended] - 1)
    # measured: joint 0.043; ground alone 0.023 since blended positions are no longer moved onto
    # the blend's peak (0.135 before). That joint beats ground-only on blends is checked by
    # test_joint_fit_beats_ground_only_on_blends; here the joint fit with the sharp PSF must be
    # accurate and not far behind ground alone.
    assert np.median(err_j) < 0.08, np.median(err_j)
    assert np.median(err_j) < 3 * np.median(err_g), (np.median(err_j), np.median(err_g))
    for node in joint["observations"].children.values():
        assert node.attrs["chi2_reduced"] < 1.2


def _real(name, bands):
    hdu = fits.open(DATA / f"Cut_{name}.fits")[0]
    data = hdu.data.astype(float)
    data = data if data.ndim == 3 else data[None]
    psf = fits.getdata(DATA / f"PSF_{name}.fits").astype(float)
    psf = psf if psf.ndim == 3 else psf[None]
    pk = np.unravel_index(np.argmax(psf.sum(0)), psf.shape[1:])  # HST: peak 1 px off-centre
    r = min(pk[0], psf.shape[1] - 1 - pk[0], pk[1], psf.shape[2] - 1 - pk[1])
    psf = psf[:, pk[0] - r : pk[0] + r + 1, pk[1] - r : pk[1] + r + 1]
    std = np.array([sigma_clipped_stats(d, sigma=3)[2] for d in data])
    var = np.broadcast_to(std[:, None, None] ** 2, data.shape)
    return sx.make_observation(
        data, psf=psf, variance=var, bands=bands, wcs=WCS(hdu.header), name=name.lower(),
        noise_estimated=True,
    )


def test_real_hst_hsc_joint_fit():
    hsc = _real("HSC", list("grizy"))
    hst = _real("HST", ["F814W"])
    obs = [hsc, hst]
    frame = sx.frame_from_observations(obs)
    centers = detect_sources(obs, frame)
    assert len(centers) >= 4
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds="free")
    fitted = scene.fit(obs, max_steps=250)
    assert fitted.history.loss[-1] < 0.6 * fitted.history.loss[0]
    tree = fitted.to_datatree(obs)
    assert set(tree["observations"].children) == {"hsc", "hst"}
    for name in ("hsc", "hst"):
        node = tree["observations"][name]
        assert node["model"].shape == node["data"].shape
        assert node.attrs["chi2_reduced"] < 1.5, name
    src = tree["sources"]
    assert src["flux"].shape == (len(centers), 6)
    assert np.all(np.isfinite(src["ra"].values)) and np.all(np.isfinite(src["dec"].values))
