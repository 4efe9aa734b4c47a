"""Sky positions (astropy SkyCoord, any celestial frame) wherever a position is taken."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import FK4, FK5, AltAz, BarycentricMeanEcliptic, Galactic, SkyCoord
from astropy.wcs import WCS

import scarlet_xr as sx

SHAPE = (41, 41)
TRUE_PIXELS = np.array([[20.3, 18.7], [12.0, 27.5]])  # (y, x) of the two galaxies


def _wcs(ctype=("RA---TAN", "DEC--TAN"), crval=(150.1, 2.2)):
    w = WCS(naxis=2)
    w.wcs.ctype = list(ctype)
    w.wcs.crval = list(crval)
    w.wcs.crpix = [21.0, 21.0]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


def _observation(wcs):
    galsim = pytest.importorskip("galsim")
    psf = galsim.Gaussian(fwhm=0.7)
    images = []
    for f in (30.0, 50.0):
        img = galsim.ImageF(SHAPE[1], SHAPE[0], scale=0.2)
        for (y, x), hlr in zip(TRUE_PIXELS, (0.4, 0.3), strict=True):
            # GalSim's true centre of a 41-pixel image is pixel 20 (0-based)
            gal = galsim.Convolve(galsim.Exponential(half_light_radius=hlr, flux=f), psf)
            gal.drawImage(img, offset=(x - 20.0, y - 20.0), add_to_image=True)
        images.append(img.array)
    data = np.stack(images) + np.random.default_rng(1).normal(0, 0.01, (2,) + SHAPE)
    psf_img = psf.drawImage(nx=21, ny=21, scale=0.2).array
    return sx.make_observation(data, variance=np.full(data.shape, 1e-4), psf=np.stack([psf_img] * 2),
                               bands=["g", "r"], wcs=wcs, name="sky")


def _truth_sky(frame, pixels):
    """Sky positions of frame pixels with astropy's own high-level WCS API (independent of Frame)."""
    pixels = np.atleast_2d(pixels)
    return frame.wcs.pixel_to_world(pixels[:, 1], pixels[:, 0])


@pytest.fixture(scope="module")
def frame():
    return sx.Frame(["g", "r"], SHAPE, wcs=_wcs())


@pytest.mark.parametrize(
    "sky_frame",
    [None, Galactic(), FK5(equinox="J1975"), FK4(), BarycentricMeanEcliptic()],
    ids=["icrs", "galactic", "fk5-j1975", "fk4", "ecliptic"],
)
def test_source_takes_a_skycoord_in_any_celestial_frame(frame, sky_frame):
    truth = np.array([20.3, 18.7])
    coord = _truth_sky(frame, truth)[0]
    if sky_frame is not None:
        coord = coord.transform_to(sky_frame)
        assert coord.frame.name != "icrs"
    with sx.Scene(frame) as scene:
        src = sx.Source(coord, [1.0, 2.0], sx.GaussianMorphology(1.5))
    assert scene.sources == (src,)
    # 1e-3 pixel = 0.2 mas: the round trip through astropy's frame transformations
    np.testing.assert_allclose(np.asarray(src.center.value), truth, atol=1e-3)


def test_a_galactic_wcs_frame_takes_icrs_positions():
    frame = sx.Frame(["g"], SHAPE, wcs=_wcs(("GLON-TAN", "GLAT-TAN"), (96.3, 60.2)))
    truth = np.array([7.25, 30.5])
    coord = _truth_sky(frame, truth)[0].icrs
    with sx.Scene(frame):
        src = sx.Source(coord, [1.0], sx.GaussianMorphology(1.5))
    np.testing.assert_allclose(np.asarray(src.center.value), truth, atol=1e-3)


def test_skycoord_without_a_wcs_scene_is_a_clear_error(frame):
    coord = _truth_sky(frame, [20.0, 20.0])[0]
    with pytest.raises(ValueError, match="needs a Scene with a WCS frame"):
        sx.Source(coord, [1.0, 2.0], sx.GaussianMorphology(1.5))
    with pytest.raises(ValueError, match="no WCS|celestial WCS"), sx.Scene(sx.Frame(["g", "r"], SHAPE)):
        sx.Source(coord, [1.0, 2.0], sx.GaussianMorphology(1.5))
    with pytest.raises(ValueError, match="one position"), sx.Scene(frame):
        sx.Source(_truth_sky(frame, TRUE_PIXELS), [1.0, 2.0], sx.GaussianMorphology(1.5))
    with pytest.raises(ValueError, match="pixels or a SkyCoord"), sx.Scene(frame):
        sx.Source("somewhere", [1.0, 2.0], sx.GaussianMorphology(1.5))
    # a frame astropy cannot reach from ICRS without more information (no obstime, no location)
    with pytest.raises(ValueError, match="cannot convert"), sx.Scene(frame):
        altaz = SkyCoord(az=10 * u.deg, alt=40 * u.deg, frame=AltAz())
        sx.Source(altaz, [1.0, 2.0], sx.GaussianMorphology(1.5))
    # pixel centres still work outside any scene
    assert sx.Source((3.0, 4.0), [1.0], sx.GaussianMorphology(1.0)).center.shape == (2,)


def test_initialize_sources_takes_skycoords():
    obs = _observation(_wcs())
    frame = sx.frame_from_observations(obs)
    by_pixel = sx.initialize_sources(frame, obs, TRUE_PIXELS, kinds="sersic")
    coords = _truth_sky(frame, TRUE_PIXELS)
    mixed = [coords[0].transform_to(Galactic()), coords[1].fk4]
    for positions in (coords.transform_to(Galactic()), list(coords), mixed, coords.fk4):
        by_sky = sx.initialize_sources(frame, obs, positions, kinds="sersic")
        got = np.stack([np.asarray(s.center.value) for s in by_sky])
        np.testing.assert_allclose(got, TRUE_PIXELS, atol=1e-3)
        for a, b in zip(by_sky, by_pixel, strict=True):
            np.testing.assert_allclose(np.asarray(a.flux()), np.asarray(b.flux()), rtol=1e-3)
    # inside a scene, sources initialised at sky positions join it and fit like any others
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, coords.galactic, kinds="sersic")
    assert len(scene) == 2
    with pytest.raises(ValueError, match="celestial WCS"):
        sx.initialize_sources(sx.Frame(["g", "r"], SHAPE), obs, coords)


def test_cli_catalog_in_galactic_coordinates(tmp_path):
    from astropy.table import Table

    from scarlet_xr.cli._fit import read_catalog

    obs = _observation(_wcs())
    frame = sx.frame_from_observations(obs)
    gal = _truth_sky(frame, TRUE_PIXELS).galactic
    Table({"l": gal.l.deg, "b": gal.b.deg}).write(tmp_path / "cat.csv")
    centers, kinds = read_catalog(tmp_path / "cat.csv", frame)
    np.testing.assert_allclose(centers, TRUE_PIXELS, atol=1e-3)
    assert kinds is None
    Table({"l": gal.l.deg}).write(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="'l' and 'b'"):
        read_catalog(tmp_path / "bad.csv", frame)


def test_fit_sources_takes_skycoords():
    obs = _observation(_wcs())
    frame = sx.frame_from_observations(obs)
    coords = _truth_sky(frame, TRUE_PIXELS).transform_to(Galactic())
    by_sky = sx.scene.fit_sources(frame, obs, coords, max_steps=50)
    by_pixel = sx.scene.fit_sources(frame, obs, TRUE_PIXELS, max_steps=50)
    np.testing.assert_allclose(by_sky.measured_flux, by_pixel.measured_flux, rtol=1e-4)
    assert len(by_sky.sources) == 2
