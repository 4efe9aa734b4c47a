"""Every bad input gets a clear error naming expected vs got, or a documented handling."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import scarlet_xr as sx
from scarlet_xr.xr import open_observation


@pytest.fixture(scope="module")
def hsc(data_dir):
    data = fits.getdata(data_dir / "Cut_HSC.fits").astype(np.float64)
    psf = fits.getdata(data_dir / "PSF_HSC.fits").astype(np.float64)
    wcs = WCS(fits.getheader(data_dir / "Cut_HSC.fits"), naxis=2)
    return data, psf, wcs


def _write(path, data, header=None):
    fits.PrimaryHDU(data, header=header).writeto(path)
    return path


def test_nonfinite_pixels_are_masked_counted_and_reported(hsc, tmp_path, caplog, data_dir):
    data, psf, wcs = hsc
    bad = data.copy()
    bad[0, 3, 4] = np.nan
    bad[2, 10, 11] = np.inf
    bad[4, 0, 0] = -np.inf
    path = _write(tmp_path / "nan.fits", bad, wcs.to_header())
    with caplog.at_level(logging.WARNING):
        obs = open_observation(path, psf=psf)
    assert obs.attrs["n_nonfinite_masked"] == 3
    assert "3 non-finite" in caplog.text
    w = obs["weight"].values
    assert w[0, 3, 4] == 0 and w[2, 10, 11] == 0 and w[4, 0, 0] == 0
    assert np.sum(w == 0) == 3
    assert np.all(np.isfinite(obs["data"].values))
    # the background noise estimate ignores them
    ref = open_observation(data_dir / "Cut_HSC.fits", psf=psf)
    np.testing.assert_allclose(obs["background_rms"].values, ref["background_rms"].values, rtol=0.02)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_zero_or_negative_variance(hsc, value):
    data, psf, _ = hsc
    var = np.ones_like(data)
    var[1, 5, 5] = value
    with pytest.raises(ValueError, match=r"variance must be > 0 on unmasked pixels; got 1 pixels"):
        sx.make_observation(data, psf=psf, variance=var)
    # a masked pixel may carry any variance
    mask = np.zeros(data.shape, bool)
    mask[1, 5, 5] = True
    obs = sx.make_observation(data, psf=psf, variance=var, mask=mask)
    assert obs["weight"].values[1, 5, 5] == 0


def test_negative_weight(hsc):
    data, psf, _ = hsc
    w = np.ones_like(data)
    w[0, 0, 0] = -2
    with pytest.raises(ValueError, match="weights must be >= 0; got minimum -2"):
        sx.make_observation(data, psf=psf, weights=w)


def test_data_weight_shape_mismatch(hsc, tmp_path):
    data, psf, wcs = hsc
    with pytest.raises(ValueError, match=r"weights must match data shape \(5, 50, 50\); got \(5, 49, 50\)"):
        sx.make_observation(data, psf=psf, weights=np.ones((5, 49, 50)))
    path = _write(tmp_path / "img.fits", data, wcs.to_header())
    _write(tmp_path / "var.fits", np.ones((4, 50, 50)))
    with pytest.raises(ValueError, match=r"variance must match data shape \(5, 50, 50\); got \(4, 50, 50\)"):
        open_observation(path, psf=psf, variance=tmp_path / "var.fits")


def test_missing_wcs(hsc, tmp_path):
    data, psf, _ = hsc
    path = _write(tmp_path / "nowcs.fits", data)
    with pytest.raises(ValueError, match="'nowcs.fits' has no WCS: expected celestial CTYPE1/CTYPE2"):
        open_observation(path, psf=psf)
    obs = open_observation(path, psf=psf, allow_missing_wcs=True)
    assert "wcs_header" not in obs.attrs
    with pytest.raises(ValueError, match="this observation has no WCS"):
        obs.scarlet.wcs


def test_non_celestial_wcs(hsc, tmp_path):
    data, psf, _ = hsc
    w = WCS(naxis=2)
    w.wcs.ctype = ["LINEAR", "LINEAR"]
    w.wcs.cdelt = [0.1, 0.1]
    path = _write(tmp_path / "linear.fits", data, w.to_header())
    with pytest.raises(ValueError, match=r"WCS must be celestial \(RA/Dec axes\); got axes \['LINEAR', 'LINEAR'\]"):
        open_observation(path, psf=psf)
    with pytest.raises(ValueError, match="must be celestial"):
        sx.make_observation(data, psf=psf, wcs=w)


def test_psf_not_normalized_is_normalized(hsc):
    """Documented handling: each PSF band is divided by its sum (cut-out PSFs miss wing flux)."""
    data, psf, _ = hsc
    assert np.all(np.abs(psf.sum(axis=(1, 2)) - 1) > 1e-3)  # the real PSFs do not sum to 1
    a = sx.make_observation(data, psf=psf * 7.5)
    b = sx.make_observation(data, psf=psf / psf.sum(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(a["psf"].sum(("psf_y", "psf_x")).values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(a["psf"].values, b["psf"].values, rtol=1e-12, atol=1e-18)
    with pytest.raises(ValueError, match="psf must have a positive sum in every band"):
        sx.make_observation(data, psf=-psf)


def test_psf_not_centered(hsc, tmp_path):
    data, psf, wcs = hsc
    shifted = np.roll(psf, (3, -2), axis=(1, 2))
    with pytest.raises(ValueError, match=r"psf must be centred on its central pixel \(centroid within 1 px\)"):
        sx.make_observation(data, psf=shifted)
    path = _write(tmp_path / "img.fits", data, wcs.to_header())
    with pytest.raises(ValueError, match="pass recenter_psf=True"):
        open_observation(path, psf=shifted)
    obs = open_observation(path, psf=shifted, recenter_psf=True)
    np.testing.assert_array_equal(obs.attrs["psf_shift"], [-3, 2] * 5)


def test_psf_even_size(hsc):
    data, psf, _ = hsc
    with pytest.raises(ValueError, match="psf must have odd size so that it has a central pixel; got 30x31"):
        sx.make_observation(data, psf=psf[:, :30, :])


def test_band_count_mismatch_image_vs_psf(hsc, tmp_path):
    data, psf, wcs = hsc
    with pytest.raises(ValueError, match=r"PSF must have one image per band: expected \(5, h, w\); got shape \(3, 31, 31\)"):
        sx.make_observation(data, psf=psf[:3])
    path = _write(tmp_path / "img.fits", data, wcs.to_header())
    with pytest.raises(ValueError, match="expected 5 band names"):
        open_observation(path, psf=psf, bands=["g", "r"])


def test_all_masked_image(hsc, tmp_path):
    data, psf, wcs = hsc
    with pytest.raises(ValueError, match="all pixels are masked"):
        sx.make_observation(data, psf=psf, mask=np.ones(data.shape, bool))
    path = _write(tmp_path / "nan.fits", np.full(data.shape, np.nan), wcs.to_header())
    with pytest.raises(ValueError, match="all pixels are masked or non-finite"):
        open_observation(path, psf=psf)
    path = _write(tmp_path / "img.fits", data, wcs.to_header())
    _write(tmp_path / "mask.fits", np.ones(data.shape, np.int16))
    with pytest.raises(ValueError, match="all pixels are masked"):
        open_observation(path, psf=psf, mask=tmp_path / "mask.fits", variance=np.ones(data.shape))


def test_catalog_position_outside_image(hsc_fits_obs):
    frame = sx.frame_from_observations(hsc_fits_obs)
    with pytest.raises(ValueError, match=r"source 1: centre \(y=55.00, x=10.00\) lies outside the frame"):
        sx.initialize_sources(frame, hsc_fits_obs, [[24.1, 23.0], [55.0, 10.0]])
    # a catalog with sky positions outside the image: see test_cli_fit.py


def test_corrupt_fits(tmp_path, data_dir):
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not a FITS file at all" * 100)
    with pytest.raises(ValueError, match="'garbage.fits' is not a readable FITS file"):
        open_observation(garbage, psf=np.ones((3, 3)))
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes((data_dir / "Cut_HSC.fits").read_bytes()[:60000])
    with pytest.raises(ValueError, match="'truncated.fits' is not a readable FITS file: .*truncated"):
        open_observation(truncated, psf=np.ones((3, 3)))
    with pytest.raises(FileNotFoundError, match="no such FITS file"):
        open_observation(tmp_path / "missing.fits", psf=np.ones((3, 3)))
    good = _write(tmp_path / "img.fits", np.ones((9, 9)))
    with pytest.raises(ValueError, match="'garbage.fits' is not a readable FITS file"):
        open_observation(good, psf=garbage, allow_missing_wcs=True)


def test_no_sources_detected_in_pure_noise():
    rng = np.random.default_rng(0)
    obs = sx.make_observation(rng.normal(size=(2, 40, 40)), psf=np.ones((3, 3)), bands=["g", "r"])
    with pytest.raises(ValueError, match="no sources detected above 3.0 sigma"):
        obs.scarlet.fit()


def test_accessor_on_non_observation():
    import xarray as xr

    with pytest.raises(ValueError, match="observation is missing the variable 'data'"):
        xr.Dataset({"foo": ("x", [1, 2])}).scarlet.wcs
    obs = sx.make_observation(np.ones((1, 5, 5)), psf=np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="a DataArray cannot carry its PSF"):
        obs["data"].scarlet.psf
