"""Flux accuracy of the default path on GalSim blend scenes with truth (issue 12).

Scenes come from ``../shared/sims/make_scenes.py`` (bulge+disk galaxies with
colour gradients, stars, ground seeing; an independent renderer). The CLI is
run exactly as a new user would: positions only, everything else default.
The noise floor of the same scenes (a linear fit with the true noiseless
templates) is computed here; the default path must stay within a fixed factor
of it, and stars must come out as point sources without being told.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _sim_isolated import colour_gradient_galaxy
from astropy.io import fits
from astropy.table import Table

import scarlet_xr as sx
from scarlet_xr.cli import main
from scarlet_xr.scene._auto import CENTER_LIMIT

SIMS = Path(__file__).resolve().parents[2] / "shared" / "sims"
SEED, NSCENES = 99, 4
BANDS = ["g", "r", "i", "z", "y"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    if not (SIMS / "make_scenes.py").exists():
        pytest.skip(f"the scene simulator is not at {SIMS}")
    root = tmp_path_factory.mktemp("scenes")
    subprocess.run([sys.executable, str(SIMS / "make_scenes.py"), str(root), str(SEED), str(NSCENES)],
                   check=True, capture_output=True)
    out = []
    for d in sorted(root.glob("scene_*")):
        truth = Table.read(d / "truth.ecsv")
        Table({"ra": truth["ra"], "dec": truth["dec"]}).write(d / "positions.ecsv")
        res = d / "result.nc"
        assert main(["fit", str(d / "ground.fits"), "--sources", str(d / "positions.ecsv"),
                     "--out", str(res)]) == 0
        out.append((d, truth, xr.open_datatree(res)["sources"].to_dataset().load()))
    return out


def _oracle_errors(d, truth):
    """|x - 1| of a weighted linear fit with the true templates (the noise floor)."""
    h = fits.open(d / "ground.fits")
    img, var = h[0].data.astype(float), h["VARIANCE"].data.astype(float)
    templates = np.load(d / "templates.npz")["templates"].astype(float)
    errs = []
    for b in range(len(BANDS)):
        a = templates[:, b].reshape(len(truth), -1).T
        w = 1 / var[b].ravel()
        x = np.linalg.solve(a.T @ (a * w[:, None]), a.T @ (w * img[b].ravel()))
        errs.extend(np.abs(x - 1))
    return errs


def test_default_path_near_the_noise_floor(scenes):
    ours, floor, star_err = [], [], []
    for d, truth, src in scenes:
        # forced positions come back in catalog order, one row per source
        assert src.sizes["source"] == len(truth)
        flux = src["flux"].transpose("source", "band").sel(band=BANDS).values
        assert np.all(np.isfinite(flux)) and np.all(np.isfinite(src["flux_err"].values))
        true = np.stack([np.asarray(truth[f"flux_{b}"], float) for b in BANDS], axis=1)
        err = np.abs(flux / true - 1)
        ours.extend(err.ravel())
        floor.extend(_oracle_errors(d, truth))
        for i, kind in enumerate(truth["kind"]):
            if kind == "star":
                star_err.extend(err[i])
                # stars are point sources without being told, and say why
                assert src["kind"].values[i] == "point", (d.name, i, src["kind_reason"].values[i])
                assert str(src["kind_reason"].values[i]).startswith("point:")
            else:
                assert src["kind"].values[i] != "point", (d.name, i, src["kind_reason"].values[i])
        # fitted positions held near the given ones by the centre prior's wall (CENTER_LIMIT px)
        dist = np.hypot(src["y"].values - truth["y"], src["x"].values - truth["x"])
        assert np.all(dist < CENTER_LIMIT + 0.05), dist
    ours_med, floor_med = float(np.median(ours)), float(np.median(floor))
    assert len(star_err) >= 10
    # measured at seed 99: ours 0.061, floor 0.037; stars 0.017
    assert ours_med < 2.2 * floor_med, (ours_med, floor_med)
    assert float(np.median(star_err)) < 0.04
    # measured 0.067 (the old free-form default: about 0.3); the target is 0.02
    assert np.mean(np.asarray(ours) > 0.5) < 0.10


def test_only_galaxies_become_bulge_plus_disk_and_say_why(scenes):
    """Bulge + disk is chosen for bright extended sources only: never for a star.

    (Their fluxes in these crowded scenes are entangled with the neighbours': at
    seed 99 the three bulge + disk galaxies, in one group of six, have median error
    0.069, as one Sersic 0.04; the colour-gradient gain is tested on isolated
    galaxies below and measured on 5 x 16-20 scenes in ``bench_accuracy.py``.)
    """
    n = 0
    for _, truth, src in scenes:
        for i, kind in enumerate(truth["kind"]):
            if src["kind"].values[i] == "bulge+disk":
                assert kind == "galaxy", (i, src["kind_reason"].values[i])
                assert "bulge+disk: S/N" in str(src["kind_reason"].values[i])
                n += 1
    assert n >= 2


@pytest.mark.parametrize("seed", [1, 2])
def test_a_colour_gradient_is_measured_by_bulge_plus_disk_not_one_profile(seed):
    """A bright galaxy with a red bulge and a blue disk: one Sersic is off by 10% at the ends of
    the band range (measured -0.10..-0.11 and +0.12..+0.13); the default bulge + disk is within 2.4%."""
    obs, center, flux = colour_gradient_galaxy(seed)
    default = sx.fit_observations(obs, centers=[center])["sources"]
    assert str(default["kind"].values[0]) == "bulge+disk", default["kind_reason"].values[0]
    assert np.max(np.abs(default["flux"].values[0] / flux - 1)) < 0.035
    one = sx.fit_observations(obs, centers=[center], kinds="sersic")["sources"]
    assert np.max(np.abs(one["flux"].values[0] / flux - 1)) > 0.08


def _one_profile(seed: int, prof, flux_scale: float):
    """One GalSim galaxy of profile ``prof`` (5 bands, Moffat seeing, unit noise) and its true fluxes."""
    import galsim

    rng = np.random.default_rng(seed)
    size, scale = 101, 0.2
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in (0.9, 0.85, 0.8, 0.75, 0.7)]
    flux = np.array([2827.0, 5655.0, 8482.0, 11310.0, 14137.0]) * flux_scale
    data = rng.normal(0, 1.0, (5, size, size))
    for b in range(5):
        im = galsim.ImageD(size, size, scale=scale)
        galsim.Convolve(prof.withFlux(flux[b]), psfs[b]).drawImage(im, offset=galsim.PositionD(0.3, -0.2))
        data[b] += im.array
    psf = np.stack([p.drawImage(nx=31, ny=31, scale=scale).array for p in psfs])
    obs = sx.make_observation(data, variance=np.ones_like(data), psf=psf, bands=BANDS, name="one")
    return obs, np.array([49.8, 50.3]), flux


def test_profiles_a_bulge_plus_disk_cannot_make_stay_one_sersic():
    """Galaxies flatter than a bulge + disk can be (a Gaussian, n = 0.5) or that the bulge only
    spoils (a pure exponential disk) come out as one Sersic, with unbiased fluxes.

    Before: the Gaussian at S/N 157 became bulge + disk with fluxes 6-15 % high (pulls up to 6.5;
    now at most 1.2); the disk at S/N 1500 became bulge + disk, +2.4-3.1 % (now within 0.2 %)."""
    import galsim

    obs, center, flux = _one_profile(3, galsim.Gaussian(sigma=0.6), 0.1)
    src = sx.fit_observations(obs, centers=[center])["sources"]
    reason = str(src["kind_reason"].values[0])
    assert str(src["kind"].values[0]) == "sersic" and "flatter than an exponential disk" in reason, reason
    assert np.max(np.abs(src["flux"].values[0] - flux) / src["flux_err"].values[0]) < 3.0

    obs, center, flux = _one_profile(2, galsim.Sersic(n=1.0, half_light_radius=0.7), 1.0)
    src = sx.fit_observations(obs, centers=[center])["sources"]
    reason = str(src["kind_reason"].values[0])
    assert str(src["kind"].values[0]) == "sersic" and "back to one Sersic" in reason, reason
    assert np.max(np.abs(src["flux"].values[0] / flux - 1)) < 0.01


def test_auto_sersic_index_has_the_weak_prior_and_a_faint_disk_stays_unbiased():
    """The default path's Sersic sources carry the documented normal prior on their index
    (``SERSIC_INDEX_PRIOR``), which enters the fit's objective; a faint exponential disk (S/N ~40)
    keeps its fluxes within their errors (the prior's mean is not the disk's index)."""
    import galsim

    from scarlet_xr.core import NormalPrior
    from scarlet_xr.scene._auto import SERSIC_INDEX_PRIOR

    obs, center, flux = _one_profile(4, galsim.Sersic(n=1.0, half_light_radius=0.7), 0.03)
    frame = sx.frame_from_observations([obs])
    scene = sx.fit_sources(frame, [obs], np.array([center]))
    assert scene.choices[0]["kind"] == "sersic", scene.choices[0]["reason"]
    n = scene.sources[0].components[0].morphology.n
    assert isinstance(n.prior, NormalPrior) and not n.fixed
    assert (float(n.prior.mean), float(n.prior.sigma)) == SERSIC_INDEX_PRIOR
    mean, sigma = SERSIC_INDEX_PRIOR
    assert float(n.log_prior()) == pytest.approx(-0.5 * ((float(n.value) - mean) / sigma) ** 2, rel=1e-4)
    src = scene.to_datatree([obs])["sources"]
    assert np.max(np.abs(src["flux"].values[0] - flux) / src["flux_err"].values[0]) < 3.0


def test_bulge_plus_disk_can_be_asked_for():
    obs, center, flux = colour_gradient_galaxy(1)
    src = sx.fit_observations(obs, centers=[center], kinds="bd")["sources"]
    assert str(src["kind"].values[0]) == "bulge+disk" and str(src["kind_reason"].values[0]) == "given"
    # measured -0.012, -0.011, -0.027
    assert np.max(np.abs(src["flux"].values[0] / flux - 1)) < 0.035


def test_flux_errors_are_calibrated_on_bright_sources(scenes):
    """Flux errors (conditional on the shapes) are not wildly off: pulls of stars within reason."""
    pulls = []
    for _, truth, src in scenes:
        flux = src["flux"].transpose("source", "band").sel(band=BANDS).values
        ferr = src["flux_err"].transpose("source", "band").sel(band=BANDS).values
        true = np.stack([np.asarray(truth[f"flux_{b}"], float) for b in BANDS], axis=1)
        for i, kind in enumerate(truth["kind"]):
            if kind == "star":
                pulls.extend((flux[i] - true[i]) / ferr[i])
    pulls = np.asarray(pulls)
    assert len(pulls) >= 10
    assert 0.3 < np.std(pulls) < 3.0, np.std(pulls)


def test_catalog_kind_column_overrides_and_bad_kinds_are_refused(scenes, tmp_path, capsys):
    """A truth-style catalog (kind = star/galaxy) overrides the choice; unknown kinds are refused."""
    d, truth, _ = scenes[1]
    out = tmp_path / "given.nc"
    assert main(["fit", str(d / "ground.fits"), "--sources", str(d / "truth.ecsv"), "--out", str(out)]) == 0
    src = xr.open_datatree(out)["sources"].to_dataset()
    expect = ["point" if k == "star" else "sersic" for k in truth["kind"]]
    assert list(src["kind"].values) == expect
    assert set(src["kind_reason"].values) == {"given"}
    bad = Table({"ra": truth["ra"], "dec": truth["dec"], "kind": ["blob"] * len(truth)})
    bad.write(tmp_path / "bad.ecsv")
    capsys.readouterr()
    assert main(["fit", str(d / "ground.fits"), "--sources", str(tmp_path / "bad.ecsv"),
                 "--out", str(tmp_path / "bad.nc")]) == 2
    assert "unknown source kind(s) ['blob']" in capsys.readouterr().err


def test_a_fully_masked_band_gives_no_measurement_not_nan(scenes):
    """A band with no unmasked pixel: flux 0 with infinite error; the other bands unaffected."""
    import scarlet_xr as sx

    d, truth, ref = scenes[2]
    obs = sx.open_observation(d / "ground.fits")
    obs["weight"][0] = 0.0
    frame = sx.frame_from_observations([obs])
    y, x = frame.sky_to_pixel(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    fitted = sx.fit_sources(frame, [obs], np.stack([y, x], 1))
    src = fitted.to_datatree([obs])["sources"].to_dataset()
    assert fitted.history.status != "diverged"
    flux, err = src["flux"].values, src["flux_err"].values
    assert np.all(np.isfinite(flux)) and np.all(flux >= 0)
    assert np.all(flux[:, 0] == 0) and np.all(np.isinf(err[:, 0]))
    assert np.all(np.isfinite(err[:, 1:]))
    # the unmasked bands agree with the full fit within a few sigma of the errors
    full = ref["flux"].transpose("source", "band").values
    assert np.all(np.abs(flux[:, 1:] - full[:, 1:]) < 5 * err[:, 1:] + 0.02 * full[:, 1:])


def test_a_blended_position_is_not_moved_onto_the_blends_peak():
    """Two GalSim galaxies 3.9 px apart at their true positions: the fainter one's position is
    not moved onto the peak of the blended light (which took its neighbour's light: -50 % / +110 %
    before), and both fluxes come out within 25 % (measured -8 % / +21 %)."""
    import galsim

    from scarlet_xr.scene import fit_sources
    from scarlet_xr.scene._auto import refine_centers

    scale, size, c0 = 0.2, 61, 30.0
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in (0.85, 0.75, 0.7)]
    gals = [((c0 + 0.3, c0 + 2.1), 1.0, 0.6, 0.4, np.array([2000.0, 2400.0, 2600.0])),
            ((c0 - 0.5, c0 - 1.8), 0.8, 0.8, 1.6, np.array([900.0, 1000.0, 1100.0]))]
    noise = np.array([0.6, 0.5, 0.7])
    data = np.zeros((3, size, size))
    for (cy, cx), hlr, q, beta, flux in gals:
        prof = galsim.Exponential(half_light_radius=hlr).shear(q=q, beta=beta * galsim.radians)
        for b, psf in enumerate(psfs):
            im = galsim.ImageD(size, size, scale=scale)
            galsim.Convolve(prof.withFlux(flux[b]), psf).drawImage(
                im, offset=galsim.PositionD(cx - c0, cy - c0))
            data[b] += im.array
    data += np.random.default_rng(0).normal(size=data.shape) * noise[:, None, None]
    psf_img = np.stack([p.drawImage(nx=31, ny=31, scale=scale).array for p in psfs])
    obs = sx.make_observation(data, variance=np.broadcast_to(noise[:, None, None] ** 2, data.shape),
                              psf=psf_img, bands=["g", "r", "i"], name="pair")
    frame = sx.frame_from_observations(obs)
    centers = np.array([g[0] for g in gals])
    # the guard is what keeps the position: without it the fainter galaxy moves > 2 px
    assert 1 in refine_centers(frame, obs, centers, blend_guard=0.0)[1]
    assert refine_centers(frame, obs, centers)[1] == {}
    fit = fit_sources(frame, obs, centers)
    err = fit.measured_flux / np.array([g[4] for g in gals]) - 1
    assert np.all(np.abs(err) < 0.25), err
    assert not any("position moved" in c["reason"] for c in fit.choices)


def test_a_blended_star_is_refitted_as_a_point_and_stops_taking_the_galaxys_light(tmp_path):
    """``make_scenes.py`` seed 4242 scene 8: a star (S/N 30-50 per band) on the wing of a galaxy.
    The first fit's point-or-extended test keeps the galaxy's shape from beside a Sersic star, so
    the star looked extended (chi^2 26.5 better than a point, r_e 0.7 px) and took 27-40 % of the
    galaxy's light. Refitted as a point with the whole scene, chi^2 is lower (by 5.0): the star is
    a point (measured within 9 % in g-z) and the galaxy within 23 % (was 22-64 % low)."""
    from scarlet_xr.scene import fit_sources

    if not (SIMS / "make_scenes.py").exists():
        pytest.skip(f"the scene simulator is not at {SIMS}")
    subprocess.run([sys.executable, str(SIMS / "make_scenes.py"), str(tmp_path), "4242", "9"],
                   check=True, capture_output=True)
    d = tmp_path / "scene_008"
    truth = Table.read(d / "truth.ecsv")
    assert list(truth["kind"]) == ["galaxy", "star"]
    obs = sx.open_observation(d / "ground.fits")
    frame = sx.frame_from_observations(obs)
    from astropy.coordinates import SkyCoord

    centers = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    true_flux = np.array([[t[f"flux_{b}"] for b in BANDS] for t in truth])
    first = fit_sources(frame, obs, centers, point_refit=False)
    fit = fit_sources(frame, obs, centers)
    assert first.choices[1]["kind"] == "sersic"  # what the first test alone chooses
    assert fit.choices[1]["kind"] == "point" and "refitted as a point" in fit.choices[1]["reason"]
    err_first = np.abs(first.measured_flux / true_flux - 1)
    err = np.abs(fit.measured_flux / true_flux - 1)
    assert np.all(err_first[1, :4] > 0.2), err_first  # measured 0.27 - 0.37
    assert np.all(err[1, :4] < 0.15), err             # measured 0.03 - 0.09
    assert np.max(err[0]) < 0.3 < np.max(err_first[0]), (err, err_first)
