"""Every bad input gets a clear error naming expected vs got, or a documented handling."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.coordinates import FK4, SkyCoord
from astropy.io import fits
from astropy.table import QTable, Table
from astropy.wcs import WCS
from astropy.wcs.utils import fit_wcs_from_points

import scarlet_xr as sx
from scarlet_xr.cli import main
from scarlet_xr.cli._common import check_output, output_kind, write_tree
from scarlet_xr.cli._fit import read_catalog
from scarlet_xr.scene import load_scene, save_scene
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
        _ = obs.scarlet.wcs


def test_non_celestial_wcs(hsc, tmp_path):
    data, psf, _ = hsc
    w = WCS(naxis=2)
    w.wcs.ctype = ["LINEAR", "LINEAR"]
    w.wcs.cdelt = [0.1, 0.1]
    path = _write(tmp_path / "linear.fits", data, w.to_header())
    with pytest.raises(ValueError, match=r"WCS must be celestial \(RA/Dec axes\); got axes \['LINEAR', 'LIN"):
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
    with pytest.raises(ValueError, match=r"psf must be centred on its central pixel \(centroid within 1"):
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
    msg = r"PSF must have one image per band: expected \(5, h, w\); got shape \(3, 31, 31\)"
    with pytest.raises(ValueError, match=msg):
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
        _ = xr.Dataset({"foo": ("x", [1, 2])}).scarlet.wcs
    obs = sx.make_observation(np.ones((1, 5, 5)), psf=np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="a DataArray cannot carry its PSF"):
        _ = obs["data"].scarlet.psf


# ---------------------------------------------------------------------------------------------
# The corpus below: real-world mistakes per input (see docs/input_contract.md). Each case asserts
# the message (expected vs got) or the handled result. Nothing here fits a model.
# ---------------------------------------------------------------------------------------------

PIX = np.array([[24.1, 23.0], [27.0, 39.3], [10.0, 12.0]])  # (y, x) of catalog test positions


def _fit_args(data_dir, out, *extra):
    return ["fit", str(data_dir / "Cut_HSC.fits"), "--psf", str(data_dir / "PSF_HSC.fits"),
            "--bands", "g,r,i,z,y", "--out", str(out), *extra]


def _fake_result(path):
    """A minimal tree carrying the root marker of a scarlet_xr result (no fit needed)."""
    tree = xr.DataTree(xr.Dataset({"flux": ("source", [1.0])}, attrs={"scarlet_xr_version": sx.__version__}))
    return write_tree(tree, path)


def _fake_survey(path):
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.attrs.update({"catalog_fingerprint": "abc", "scarlet_xr_version": sx.__version__})
    g.create_array("status", shape=(3,), dtype="i1")
    return path


# -- output path: refused before any work, never lose the user's data --------------------------


def test_out_existing_user_directory_is_refused_and_kept(tmp_path, data_dir, capsys):
    user = tmp_path / "mydata.zarr"
    user.mkdir()
    (user / "important.txt").write_text("years of work")
    t0 = time.perf_counter()
    assert main(_fit_args(data_dir, user)) == 2
    err = capsys.readouterr().err
    assert f"--out '{user}' exists and is a directory, not a scarlet_xr output" in err
    assert "pass --overwrite to replace it" in err
    assert (user / "important.txt").read_text() == "years of work"
    assert time.perf_counter() - t0 < 5  # refused before loading or fitting anything


def test_out_existing_user_file_is_refused_and_kept(tmp_path, data_dir, capsys):
    user = tmp_path / "notes.nc"
    user.write_text("not netCDF")
    assert main(_fit_args(data_dir, user)) == 2
    assert "exists and is a file, not a scarlet_xr output" in capsys.readouterr().err
    assert user.read_text() == "not netCDF"


def test_out_directory_missing_is_refused_before_fitting(tmp_path, data_dir, capsys):
    out = tmp_path / "no" / "such" / "res.nc"
    assert main(_fit_args(data_dir, out)) == 2
    err = capsys.readouterr().err
    assert f"the directory '{tmp_path / 'no' / 'such'}' does not exist; expected an existing, writable" in err


def test_out_parent_is_a_file(tmp_path, data_dir, capsys):
    (tmp_path / "f").write_text("x")
    assert main(_fit_args(data_dir, tmp_path / "f" / "res.nc")) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_out_directory_not_writable(data_dir, capsys):
    import tempfile

    try:  # root may write anywhere: find a directory this process cannot write in
        tempfile.NamedTemporaryFile(dir="/sys").close()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    assert main(_fit_args(data_dir, "/sys/res.nc")) == 2
    assert "cannot write in '/sys'" in capsys.readouterr().err


def test_out_existing_result_is_replaced_not_refused(tmp_path, data_dir, capsys):
    out = _fake_result(tmp_path / "old.nc")
    assert output_kind(out) == "result"
    assert check_output(out) == out  # the check lets it through (replaced when the fit is written)
    garbage = tmp_path / "bad.fits"
    garbage.write_bytes(b"\x00" * 100)
    assert main(["fit", str(garbage), "--psf", str(data_dir / "PSF_HSC.fits"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a readable FITS file" in err and "exists" not in err  # got past the output check
    assert output_kind(out) == "result"  # a failed run leaves the previous result alone


def test_out_survey_store_is_not_replaced_by_a_fit(tmp_path, data_dir, capsys):
    store = _fake_survey(tmp_path / "survey.zarr")
    assert output_kind(store) == "survey"
    assert main(_fit_args(data_dir, store)) == 2
    assert "exists and is a directory, a scarlet_xr survey store; expected a new path or a scarlet_xr " \
           "result to replace" in capsys.readouterr().err
    assert (store / ".zattrs").exists()


def test_overwrite_replaces_a_user_path(tmp_path, data_dir, capsys, caplog):
    user = tmp_path / "scratch.zarr"
    user.mkdir()
    (user / "old.txt").write_text("x")
    garbage = tmp_path / "bad.fits"
    garbage.write_bytes(b"\x00" * 100)
    with caplog.at_level(logging.WARNING):
        rc = main(["fit", str(garbage), "--out", str(user), "--overwrite"])
    assert rc == 2 and "not a readable FITS file" in capsys.readouterr().err
    assert not user.exists()  # --overwrite: removed before the work starts (documented)
    assert "--overwrite: removing the existing a directory" in caplog.text


def test_overwrite_never_removes_an_input(tmp_path, data_dir, capsys):
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    img = folder / "img.fits"
    img.write_bytes((data_dir / "Cut_HSC.fits").read_bytes())
    assert main(["fit", str(img), "--psf", str(data_dir / "PSF_HSC.fits"), "--out", str(folder),
                 "--overwrite"]) == 2
    assert f"would overwrite the input '{img}'" in capsys.readouterr().err
    assert img.exists()


@pytest.mark.parametrize("existing", ["user_dir", "fit_result"])
def test_survey_out_must_be_new_or_a_survey_store(tmp_path, capsys, existing):
    out = tmp_path / "store.zarr"
    if existing == "user_dir":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    else:
        _fake_result(out)
    cat = tmp_path / "cat.ecsv"
    Table({"file": ["a.fits"]}).write(cat)
    assert main(["survey", str(cat), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "expected a new path or a scarlet_xr survey store to resume" in err
    assert out.exists()


def test_survey_store_is_resumable(tmp_path):
    store = _fake_survey(tmp_path / "s.zarr")
    assert check_output(store, expect="survey") == store and (store / ".zattrs").exists()


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda p: None, None),
        (lambda p: _fake_result(p / "r.nc"), "result"),
        (lambda p: _fake_result(p / "r.zarr"), "result"),
        (lambda p: _fake_survey(p / "s.zarr"), "survey"),
        (lambda p: (p / "d.zarr").mkdir(), "other"),
        (lambda p: (p / "f.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 50), "other"),
        (lambda p: xr.Dataset({"a": ("x", [1])}).to_netcdf(p / "plain.nc", engine="h5netcdf"), "other"),
        (lambda p: _fake_result(p / "r.zarr").rename(p / "r.nc"), "other"),  # a zarr dir where a file goes
    ],
    ids=["missing", "result-nc", "result-zarr", "survey", "empty-dir", "bad-hdf5", "foreign-nc", "dir-as-nc"],
)
def test_output_kind(tmp_path, make, kind):
    make(tmp_path)
    paths = [p for p in tmp_path.iterdir()] or [tmp_path / "none.nc"]
    assert output_kind(paths[0]) == kind


def test_write_tree_is_atomic_and_refuses_non_results(tmp_path):
    out = _fake_result(tmp_path / "r.nc")

    class Broken:
        def to_netcdf(self, path, **kw):
            path.write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_tree(Broken(), out)
    assert output_kind(out) == "result" and sorted(p.name for p in tmp_path.iterdir()) == ["r.nc"]
    user = tmp_path / "mine.nc"
    user.write_text("x")
    with pytest.raises(FileExistsError, match="refusing to overwrite it"):
        write_tree(Broken(), user)
    assert user.read_text() == "x"


# -- WCS: any celestial frame in, ICRS out -------------------------------------------------------


def _rewrite_wcs(wcs, frame, shape=(50, 50)):
    """The same pixel->sky mapping expressed in another celestial frame (TAN fit, ~1e-7 arcsec)."""
    yy, xx = np.mgrid[0 : shape[0] : 5, 0 : shape[1] : 5]
    sky = wcs.pixel_to_world(xx.ravel(), yy.ravel()).transform_to(frame)
    return fit_wcs_from_points((xx.ravel(), yy.ravel()), sky, projection="TAN")


@pytest.fixture(scope="module")
def galactic_file(hsc, tmp_path_factory):
    data, psf, wcs = hsc
    path = tmp_path_factory.mktemp("gal") / "hsc_galactic.fits"
    header = _rewrite_wcs(wcs, "galactic").to_header()
    assert header["CTYPE1"] == "GLON-TAN"
    fits.HDUList([fits.PrimaryHDU(data, header=header), fits.ImageHDU(psf, name="PSF")]).writeto(path)
    return path


@pytest.mark.parametrize("frame_name", ["galactic", "fk4"])
def test_non_icrs_wcs_reports_icrs(hsc, tmp_path, caplog, frame_name):
    data, psf, wcs = hsc
    target = "galactic" if frame_name == "galactic" else FK4(equinox="B1950")
    path = _write(tmp_path / f"{frame_name}.fits", data, _rewrite_wcs(wcs, target).to_header())
    with caplog.at_level(logging.INFO):
        obs = open_observation(path, psf=psf)
    assert obs.attrs["sky_frame"] == frame_name
    assert f"the WCS is in the '{frame_name}' frame; sky positions are converted" in caplog.text
    frame = sx.frame_from_observations(obs)
    assert frame.sky_frame_name == frame_name
    ra, dec = frame.pixel_to_sky(PIX[:, 0], PIX[:, 1])
    ra0, dec0 = wcs.pixel_to_world_values(PIX[:, 1], PIX[:, 0])
    sep = SkyCoord(ra, dec, unit="deg").separation(SkyCoord(ra0, dec0, unit="deg")).arcsec
    assert np.all(sep < 0.01), sep
    y, x = frame.sky_to_pixel(ra0, dec0)  # ICRS catalog positions land on the same pixels
    np.testing.assert_allclose(np.stack([y, x], 1), PIX, atol=1e-4)
    np.testing.assert_allclose(frame.to_pixel(SkyCoord(ra0, dec0, unit="deg")), PIX, atol=1e-4)
    c = frame.to_sky(PIX)
    assert c.frame.name == "icrs" and np.all(c.separation(SkyCoord(ra0, dec0, unit="deg")).arcsec < 0.01)


def test_galactic_wcs_catalog_and_results_in_icrs(galactic_file, hsc, tmp_path):
    data, psf, wcs = hsc
    obs = open_observation(galactic_file)
    frame = sx.frame_from_observations(obs)
    ra0, dec0 = wcs.pixel_to_world_values(PIX[:2, 1], PIX[:2, 0])
    Table({"ra": ra0, "dec": dec0}).write(tmp_path / "cat.ecsv")
    centers, _ = read_catalog(tmp_path / "cat.ecsv", frame)
    np.testing.assert_allclose(centers, PIX[:2], atol=1e-4)
    with sx.Scene(frame) as scene:
        for c in centers:
            sx.Source(c, np.ones(5), sx.GaussianMorphology(1.5))
    src = scene.to_datatree(obs)["sources"].to_dataset()
    sep = SkyCoord(src["ra"].values, src["dec"].values, unit="deg").separation(
        SkyCoord(ra0, dec0, unit="deg")).arcsec
    assert np.all(sep < 0.01), sep  # the results' ra/dec are ICRS, not galactic l/b


def test_axis_swapped_wcs(hsc):
    data, psf, wcs = hsc
    h = wcs.to_header()
    swapped = WCS(naxis=2)
    swapped.wcs.ctype = [h["CTYPE2"], h["CTYPE1"]]
    swapped.wcs.crval = [h["CRVAL2"], h["CRVAL1"]]
    swapped.wcs.crpix = [h["CRPIX1"], h["CRPIX2"]]
    swapped.wcs.pc = [[0.0, h["PC2_2"]], [h["PC1_1"], 0.0]]
    swapped.wcs.cdelt = [1.0, 1.0]
    swapped.wcs.cunit = ["deg", "deg"]
    frame = sx.frame_from_observations(sx.make_observation(data, psf=psf, wcs=swapped))
    ra, dec = frame.pixel_to_sky(PIX[:, 0], PIX[:, 1])
    ra0, dec0 = wcs.pixel_to_world_values(PIX[:, 1], PIX[:, 0])
    np.testing.assert_allclose(np.stack([ra, dec]), np.stack([ra0, dec0]), atol=1e-9)
    np.testing.assert_allclose(np.stack(frame.sky_to_pixel(ra0, dec0), 1), PIX, atol=1e-6)


def test_ecliptic_wcs_is_refused(hsc, tmp_path):
    data, psf, wcs = hsc
    w = wcs.deepcopy()
    w.wcs.ctype = ["ELON-TAN", "ELAT-TAN"]
    path = _write(tmp_path / "ecl.fits", data, w.to_header())
    msg = r"'ecl.fits': unsupported celestial WCS axes \['ELON-TAN', 'ELAT-TAN'\]: expected equatorial"
    with pytest.raises(ValueError, match=msg + r" \(RA---/DEC--\), galactic"):
        open_observation(path, psf=psf)


def test_observations_in_different_frames_are_refused(hsc, galactic_file, hsc_fits_obs):
    gal = open_observation(galactic_file, name="gal")
    with pytest.raises(ValueError, match="different celestial frames: observation 0 in 'icrs', observation 1 "
                                         "in 'galactic'; expected one frame"):
        sx.frame_from_observations([hsc_fits_obs, gal])


def test_fk5_and_icrs_observations_are_one_frame(hsc_fits_obs, data_dir):
    hst = open_observation(data_dir / "Cut_HST.fits", psf=data_dir / "PSF_HST.fits", recenter_psf=True)
    assert hst.attrs["sky_frame"] == "fk5" and hsc_fits_obs.attrs["sky_frame"] == "icrs"
    frame = sx.frame_from_observations([hsc_fits_obs, hst])
    assert frame.shape[0] > 100  # the HST-resolution frame over both


def test_observations_that_do_not_overlap_are_refused_early(hsc, data_dir, hsc_fits_obs):
    hst = open_observation(data_dir / "Cut_HST.fits", psf=data_dir / "PSF_HST.fits", recenter_psf=True)
    header = fits.Header.fromstring(hst.attrs["wcs_header"])
    header["CRVAL2"] += 0.5  # half a degree north: no common sky
    far = sx.make_observation(hst["data"].values, psf=hst["psf"].values, wcs=WCS(header), name="far")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"observation 0 does not overlap any other observation on the sky \("
                                         r"centres, ICRS deg: observation 0 at ra=150\.\d+ dec=2\.0\d+, "
                                         r"observation 1 at ra=150\.\d+ dec=2\.5\d+\); expected"):
        sx.frame_from_observations([hsc_fits_obs, far])
    assert time.perf_counter() - t0 < 5
    data, psf, wcs = hsc  # same pixel grid, disjoint cutouts
    a = sx.make_observation(data, psf=psf, wcs=wcs, name="a")
    b = sx.make_observation(data, psf=psf, wcs=wcs, name="b", origin=(3000, 0))
    with pytest.raises(ValueError, match="observation 0 does not overlap any other observation"):
        sx.frame_from_observations([a, b])


# -- source catalogs: units, sexagesimal, empty, NaN, duplicates -----------------------------------


@pytest.fixture(scope="module")
def hsc_frame(hsc_fits_obs):
    return sx.frame_from_observations(hsc_fits_obs)


@pytest.fixture(scope="module")
def sky(hsc):
    ra, dec = hsc[2].pixel_to_world_values(PIX[:, 1], PIX[:, 0])
    return SkyCoord(ra, dec, unit="deg")


def _cat(tmp_path, name="cat.ecsv", **cols):
    path = tmp_path / name
    Table(cols).write(path)
    return path


@pytest.mark.parametrize("unit", ["deg", "rad", "arcsec", "hourangle"])
def test_catalog_units_from_columns(tmp_path, hsc_frame, sky, unit, caplog):
    import astropy.units as u

    ra = sky.ra.to(u.Unit(unit)) if unit != "hourangle" else sky.ra.to(u.hourangle)
    dec = sky.dec.to(u.Unit(unit)) if unit != "hourangle" else sky.dec.to(u.deg)
    path = tmp_path / "cat.ecsv"
    QTable({"ra": ra, "dec": dec}).write(path)
    with caplog.at_level(logging.INFO):
        centers, kinds = read_catalog(path, hsc_frame)
    np.testing.assert_allclose(centers, PIX, atol=1e-6)
    assert kinds is None
    if unit != "deg":
        assert f"catalog column 'ra' converted from {u.Unit(unit)} to degrees" in caplog.text


@pytest.mark.parametrize("style", [dict(sep=":"), dict(sep="hms")])
def test_catalog_sexagesimal_strings(tmp_path, hsc_frame, sky, style):
    ra = sky.ra.to_string(unit="hourangle", precision=5, pad=True, **style)
    dec = sky.dec.to_string(unit="deg", precision=4, alwayssign=True, pad=True,
                            sep=":" if style["sep"] == ":" else "dms")
    assert (":" in ra[0]) == (style["sep"] == ":")
    centers, _ = read_catalog(_cat(tmp_path, ra=ra, dec=dec), hsc_frame)
    np.testing.assert_allclose(centers, PIX, atol=2e-3)


def test_catalog_numbers_written_as_text_are_degrees(tmp_path, hsc_frame, sky):
    centers, _ = read_catalog(_cat(tmp_path, ra=[f"{v:.9f}" for v in sky.ra.deg],
                                   dec=[f"{v:.9f}" for v in sky.dec.deg]), hsc_frame)
    np.testing.assert_allclose(centers, PIX, atol=1e-4)


def test_catalog_radians_without_unit_gets_a_hint(tmp_path, hsc_frame, sky):
    path = _cat(tmp_path, ra=sky.ra.rad, dec=sky.dec.rad)
    with pytest.raises(ValueError, match=r"3 catalog position\(s\) lie outside the image.*the positions fall "
                                         r"inside the image if read as radians: give the columns a unit"):
        read_catalog(path, hsc_frame)


def test_catalog_ra_in_hours_without_unit_gets_a_hint(tmp_path, hsc_frame, sky):
    path = _cat(tmp_path, ra=sky.ra.hourangle, dec=sky.dec.deg)
    with pytest.raises(ValueError, match=r"if read as hours \(ra\)"):
        read_catalog(path, hsc_frame)


def test_catalog_with_zero_rows(tmp_path, hsc_frame, data_dir, capsys):
    path = _cat(tmp_path, ra=np.zeros(0), dec=np.zeros(0))
    with pytest.raises(ValueError, match="the source catalog 'cat.ecsv' has no rows; expected at least one"):
        read_catalog(path, hsc_frame)
    out = tmp_path / "o.nc"
    assert main(_fit_args(data_dir, out, "--sources", str(path))) == 2
    assert "has no rows" in capsys.readouterr().err and not out.exists()


def test_catalog_with_nan_positions_names_the_rows(tmp_path, hsc_frame, sky):
    ra = sky.ra.deg.copy()
    ra[[0, 2]] = np.nan
    with pytest.raises(ValueError, match=r"2 row\(s\) have no position \(NaN or empty ra/dec\): rows \[0, 2"):
        read_catalog(_cat(tmp_path, ra=ra, dec=sky.dec.deg), hsc_frame)


def test_catalog_with_empty_cells_names_the_rows(tmp_path, hsc_frame, sky):
    dec = np.ma.masked_array(sky.dec.deg, mask=[False, True, False])
    with pytest.raises(ValueError, match=r"1 row\(s\) have no position .*rows \[1\]"):
        read_catalog(_cat(tmp_path, ra=sky.ra.deg, dec=dec), hsc_frame)


def test_catalog_declination_out_of_range(tmp_path, hsc_frame, sky):
    with pytest.raises(ValueError, match=r"declination must lie in \[-90, 90\] deg; got 120 in rows \[1\]"):
        read_catalog(_cat(tmp_path, ra=sky.ra.deg, dec=[2.2, 120.0, 2.2]), hsc_frame)


def test_catalog_unparsable_string(tmp_path, hsc_frame):
    with pytest.raises(ValueError, match=r"catalog column 'ra', row 1: cannot parse .ten o.clock. as an"):
        read_catalog(_cat(tmp_path, ra=["10:00:28.6", "ten o'clock"], dec=["+02:12:21", "+02:12:22"]),
                     hsc_frame)


def test_catalog_non_angle_unit(tmp_path, hsc_frame, sky):
    import astropy.units as u

    path = tmp_path / "cat.ecsv"
    QTable({"ra": sky.ra.deg * u.mag, "dec": sky.dec}).write(path)
    with pytest.raises(ValueError, match="catalog column 'ra' has unit 'mag'; expected an angle"):
        read_catalog(path, hsc_frame)


def test_catalog_duplicate_rows_of_one_kind_are_refused(tmp_path, hsc_frame, sky):
    ra, dec = sky.ra.deg, sky.dec.deg
    path = _cat(tmp_path, ra=[ra[0], ra[1], ra[0] + 1e-7], dec=[dec[0], dec[1], dec[0]],
                kind=["sersic", "sersic", "sersic"])
    with pytest.raises(ValueError, match=r"1 pair\(s\) of rows of the same kind are at the same position .* "
                                         r"rows 0 and 2"):
        read_catalog(path, hsc_frame)


def test_catalog_colocated_rows_without_kinds_are_kept_with_a_warning(tmp_path, hsc_frame, sky, caplog):
    """A star on a galaxy (simulated survey scenes have them): both fitted, the user told."""
    ra, dec = sky.ra.deg, sky.dec.deg
    path = _cat(tmp_path, ra=[ra[0], ra[1], ra[0] + 1e-7], dec=[dec[0], dec[1], dec[0]])
    with caplog.at_level(logging.WARNING):
        centers, kinds = read_catalog(path, hsc_frame)
    assert len(centers) == 3 and kinds is None
    assert "rows 0 and 2 are 0.00 pixel apart; both are kept" in caplog.text


def test_catalog_colocated_rows_of_different_kinds_are_a_composite(tmp_path, hsc_frame, sky, caplog):
    ra, dec = sky.ra.deg, sky.dec.deg
    path = _cat(tmp_path, ra=[ra[0], ra[0]], dec=[dec[0], dec[0]], kind=["point", "sersic"])
    with caplog.at_level(logging.INFO):
        centers, kinds = read_catalog(path, hsc_frame)
    assert kinds == ["point", "sersic"] and np.allclose(centers[0], centers[1])
    assert "composite source" in caplog.text


def test_catalog_missing_columns(tmp_path, hsc_frame):
    with pytest.raises(ValueError, match=r"must have columns 'ra' and 'dec' \(or galactic 'l' and 'b', or a "
                                         r"SkyCoord column\); got \['x', 'y'\]"):
        read_catalog(_cat(tmp_path, x=[1.0], y=[2.0]), hsc_frame)


def test_catalog_galactic_columns(tmp_path, hsc_frame, sky):
    g = sky.galactic
    centers, _ = read_catalog(_cat(tmp_path, l=g.l.deg, b=g.b.deg), hsc_frame)
    np.testing.assert_allclose(centers, PIX, atol=1e-4)


def test_catalog_skycoord_column(tmp_path, hsc_frame, sky):
    path = tmp_path / "sc.ecsv"
    QTable({"position": sky.galactic, "kind": ["point", "sersic", "point"]}).write(path)
    centers, kinds = read_catalog(path, hsc_frame)
    np.testing.assert_allclose(centers, PIX, atol=1e-4)
    assert kinds == ["point", "sersic", "point"]


@pytest.mark.parametrize("names", [("RAJ2000", "DEJ2000"), ("ALPHA_J2000", "DELTA_J2000"), ("RA", "Dec")])
def test_catalog_column_aliases_and_csv(tmp_path, hsc_frame, sky, names):
    path = tmp_path / "cat.csv"
    Table({names[0]: sky.ra.deg, names[1]: sky.dec.deg}).write(path, format="ascii.csv")
    centers, _ = read_catalog(path, hsc_frame)
    np.testing.assert_allclose(centers, PIX, atol=1e-4)


def test_catalog_empty_kind_cell(tmp_path, hsc_frame, sky):
    kind = np.ma.masked_array(["point", "x", "sersic"], mask=[False, True, False])
    with pytest.raises(ValueError, match=r"the 'kind' column is empty in rows \[1\]"):
        read_catalog(_cat(tmp_path, ra=sky.ra.deg, dec=sky.dec.deg, kind=kind), hsc_frame)


def test_catalog_missing_or_unreadable_file(tmp_path, hsc_frame):
    with pytest.raises(FileNotFoundError, match="no such source catalog"):
        read_catalog(tmp_path / "nope.ecsv", hsc_frame)
    (tmp_path / "junk.fits").write_bytes(b"this is no table " * 300)
    with pytest.raises(ValueError, match="cannot read the source catalog .*junk.fits"):
        read_catalog(tmp_path / "junk.fits", hsc_frame)


# -- scene files: schema-checked, ValueError naming the entry, never unpickled ---------------------


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    frame = sx.Frame(["g", "r"], (31, 31))
    with sx.Scene(frame) as scene:
        sx.Source((12.0, 14.0), np.array([3.0, 5.0]), sx.FreeFormMorphology(np.ones((9, 9))))
        sx.Source((20.0, 8.0), np.array([1.0, 2.0]), sx.GaussianMorphology(1.5))
    return save_scene(scene, tmp_path_factory.mktemp("scene") / "scene.npz")


def _edit_scene(src, dst, *, arrays=None, desc=None, drop=()):
    with np.load(src, allow_pickle=False) as f:
        content = {k: f[k] for k in f.files}
    d = json.loads(str(content["__scene__"]))
    if desc is not None:
        desc(d)
    content["__scene__"] = np.array(json.dumps(d))
    content.update(arrays or {})
    for k in drop:
        content.pop(k)
    np.savez(dst, **content)
    return dst


def _find_array(desc, field):
    """Archive key of the first array node under a field named ``field``."""
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == field and isinstance(v, dict):
                    inner = v.get("fields", {}).get("raw", v)  # a Parameter keeps its array in 'raw'
                    if "array" in inner:
                        return inner["array"]
                got = walk(v)
                if got:
                    return got
        if isinstance(node, list):
            for v in node:
                got = walk(v)
                if got:
                    return got
        return None
    return walk(desc["sources"][0])


def test_scene_file_round_trips(scene_file):
    loaded = load_scene(scene_file)
    assert len(loaded.sources) == 2 and loaded.frame.bands == ("g", "r")


def test_scene_file_array_of_wrong_shape(scene_file, tmp_path):
    with np.load(scene_file) as f:
        desc = json.loads(str(f["__scene__"]))
    key = _find_array(desc, "image")
    bad = _edit_scene(scene_file, tmp_path / "bad.npz", arrays={key: np.ones((7, 7))})
    with pytest.raises(ValueError, match=rf"'bad.npz': scene file entry '{key}' \(for source 0\.components"
                                         rf"\[0\]\.morphology\.image.*\): expected shape \(9, 9\); got "
                                         rf"\(7, 7\)"):
        load_scene(bad)


def test_scene_file_array_and_schema_edited_together(scene_file, tmp_path):
    """A consistent hand edit (array + recorded shape): the source no longer fits the frame."""
    with np.load(scene_file) as f:
        desc = json.loads(str(f["__scene__"]))
    key = _find_array(desc, "values")  # the spectrum's Parameter

    def edit(d):
        def walk(node):
            if isinstance(node, dict):
                if node.get("array") == key:
                    node["shape"] = [3]
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(d)

    bad = _edit_scene(scene_file, tmp_path / "bad.npz", arrays={key: np.ones(3, np.float32)}, desc=edit)
    msg = r"source 0\.components\[0\] renders shape \(3, 9, 9\); expected \(2, 9, 9\)"
    with pytest.raises(ValueError, match=msg):
        load_scene(bad)


def test_scene_file_array_of_wrong_dtype(scene_file, tmp_path):
    with np.load(scene_file) as f:
        desc = json.loads(str(f["__scene__"]))
    key = _find_array(desc, "image")
    bad = _edit_scene(scene_file, tmp_path / "bad.npz", arrays={key: np.ones((9, 9), np.int16)})
    with pytest.raises(ValueError, match=rf"scene file entry '{key}' .*: expected dtype '<f\d'; got '<i2'"):
        load_scene(bad)


def test_scene_file_missing_array_entry(scene_file, tmp_path):
    with np.load(scene_file) as f:
        desc = json.loads(str(f["__scene__"]))
    key = _find_array(desc, "image")
    bad = _edit_scene(scene_file, tmp_path / "bad.npz", drop=[key])
    with pytest.raises(ValueError, match=rf"scene file entry '{key}' \(for source 0.*\) is missing from the"):
        load_scene(bad)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_scene_file_truncated(scene_file, tmp_path, cut):
    raw = scene_file.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(ValueError, match="'cut.npz' is not a readable scene file"):
        load_scene(bad)


def test_scene_file_garbage_and_wrong_containers(tmp_path):
    (tmp_path / "g.npz").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ValueError, match="'g.npz' is not a readable scene file"):
        load_scene(tmp_path / "g.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        load_scene(tmp_path / "one.npy")
    np.savez(tmp_path / "obj.npz", __scene__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="'obj.npz' is not a readable scene file: .*allow_pickle=False"):
        load_scene(tmp_path / "obj.npz")
    with pytest.raises(FileNotFoundError, match="no such scene file"):
        load_scene(tmp_path / "none.npz")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(version=99), r"expected format 'scarlet_xr.scene' version 1, 2, 3; got .* 99"),
        (lambda d: d["frame"].update(shape=[31]), r"entry 'frame.shape': expected two integers; got \[31\]"),
        (lambda d: d["frame"].pop("bands"), r"scene file entry 'frame' is missing \['bands'\]"),
        (lambda d: d["frame"].update(psf_sigma="wide"), r"'frame.psf_sigma': expected a number; got 'wide'"),
        (lambda d: d["frame"].update(wcs_header="CTYPE1  = 'RA---TAN' garbage"), r"'frame.wcs_header'|frame"),
        (lambda d: d.update(sources={"a": 1}), r"scene file entry 'sources': expected a list"),
        (lambda d: d["sources"][0].update({"class": "scarlet_xr:Nope"}),
         r"unknown class 'scarlet_xr:Nope' \(at source 0\)"),
        (lambda d: d["sources"][0].update({"class": "subprocess:Popen"}),
         r"'subprocess:Popen', which is not an Equinox module"),
        (lambda d: d["sources"][0].update({"class": "scarlet_xr.core._source.Source"}),
         r"class at source 0: expected 'module:QualName'; got 'scarlet_xr.core._source.Source'"),
        (lambda d: d["sources"][0]["fields"].pop("center"), r"do not match Source fields"),
        (lambda d: d["sources"].__setitem__(0, [1, 2]), r"unexpected value \[1, 2\] at source 0"),
    ],
    ids=["version", "frame-shape", "frame-missing", "psf-sigma", "wcs-header", "sources-type",
         "unknown-class", "foreign-class", "private-dotted-name", "missing-field", "bad-node"],
)
def test_scene_file_schema_violations(scene_file, tmp_path, edit, message):
    bad = _edit_scene(scene_file, tmp_path / "bad.npz", desc=edit)
    with pytest.raises(ValueError, match=message):
        load_scene(bad)


def test_scene_file_not_json(scene_file, tmp_path):
    bad = _edit_scene(scene_file, tmp_path / "bad.npz")
    with np.load(bad) as f:
        content = {k: f[k] for k in f.files}
    content["__scene__"] = np.array("{not json")
    np.savez(bad, **content)
    with pytest.raises(ValueError, match="scene file entry '__scene__' is corrupt"):
        load_scene(bad)


def test_scene_file_version_1_still_loads(tmp_path):
    """A version-1 file (no shapes/dtypes, private dotted class names): the version-2 fixture, stripped."""
    v2 = Path(__file__).parent / "data" / "scene_v2.npz"

    def strip(d):
        d["version"] = 1

        def walk(node):
            if isinstance(node, dict):
                node.pop("shape", None) if "array" in node else None
                node.pop("dtype", None) if "array" in node else None
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(d["sources"])

    old = _edit_scene(v2, tmp_path / "v1.npz", desc=strip)
    assert np.array_equal(load_scene(old).render(), load_scene(v2).render())


# -- image planes, dtypes, shapes ------------------------------------------------------------------


def test_err_plane_is_read_as_standard_deviation(hsc, tmp_path, caplog):
    data, psf, wcs = hsc
    err = np.full(data.shape, 0.5)
    path = tmp_path / "err.fits"
    fits.HDUList([fits.PrimaryHDU(data, header=wcs.to_header()), fits.ImageHDU(err, name="ERR"),
                  fits.ImageHDU(psf, name="PSF")]).writeto(path)
    with caplog.at_level(logging.INFO):
        obs = open_observation(path)
    assert obs.attrs["planes"] == "stddev=ERR" and obs.attrs["noise_estimated"] == 0
    np.testing.assert_allclose(obs["weight"].values, 4.0)
    assert "noise standard deviation read from HDU 'ERR'" in caplog.text


def test_unused_image_hdus_are_reported(hsc, tmp_path, caplog):
    data, psf, wcs = hsc
    path = tmp_path / "extra.fits"
    fits.HDUList([fits.PrimaryHDU(data, header=wcs.to_header()), fits.ImageHDU(psf, name="PSF"),
                  fits.ImageHDU(np.ones(data.shape, np.int16), name="EXPMAP"),
                  fits.ImageHDU(np.zeros(data.shape, np.int16), name="MASK")]).writeto(path)
    with caplog.at_level(logging.WARNING):
        obs = open_observation(path)
    assert obs.attrs["ignored_hdus"] == "EXPMAP" and obs.attrs["planes"] == "mask=MASK"
    assert "ignoring image HDU(s) ['EXPMAP']" in caplog.text


@pytest.mark.parametrize(
    "data, message",
    [
        (np.ones((5, 50, 50), complex), "data must be a real-valued numeric array; got dtype complex128"),
        (np.array([["a"]]), "data must be a real-valued numeric array; got dtype <U1"),
        (np.ones((1, 5, 50, 50)), r"data must have dims \(band, y, x\); got shape \(1, 5, 50, 50\)"),
    ],
    ids=["complex", "strings", "4-d"],
)
def test_bad_image_arrays(hsc, data, message):
    with pytest.raises(ValueError, match=message):
        sx.make_observation(data, psf=hsc[1])


def test_mask_of_wrong_shape(hsc):
    data, psf, _ = hsc
    with pytest.raises(ValueError, match=r"mask must match data shape \(5, 50, 50\); got \(5, 50, 49\)"):
        sx.make_observation(data, psf=psf, mask=np.zeros((5, 50, 49), bool))


def test_integer_and_big_endian_images_are_accepted(hsc, tmp_path):
    data, psf, wcs = hsc
    counts = np.round(data * 100).astype(">i2")
    path = _write(tmp_path / "int.fits", counts, wcs.to_header())
    obs = open_observation(path, psf=psf)
    assert obs["data"].dtype == np.float32
    np.testing.assert_array_equal(obs["data"].values, counts.astype(np.float32))


# -- memory: reading a 5 x 2000 x 2000 image stays near the size of the data ---------------------------


def test_large_image_read_memory_ceiling(tmp_path):
    """Peak RSS of reading a 5x2000x2000 float32 image (80 MB), measured in a child process."""
    n = 2000
    rng = np.random.default_rng(0)
    img = rng.normal(0, 0.05, (5, n, n)).astype(np.float32)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 2.0], [n / 2, n / 2], [-0.168 / 3600, 0.168 / 3600]
    fits.HDUList([fits.PrimaryHDU(img, header=w.to_header()),
                  fits.ImageHDU(np.ones((5, 11, 11), np.float32), name="PSF")]).writeto(tmp_path / "big.fits")
    ra, dec = w.pixel_to_world_values([500.0, 1500.0], [700.0, 1200.0])
    Table({"ra": ra, "dec": dec}).write(tmp_path / "cat.ecsv")
    del img
    script = textwrap.dedent(f"""
        import resource, sys
        import scarlet_xr as sx
        from scarlet_xr.cli._sources import read_catalog
        from scarlet_xr.xr import open_observation
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        obs = open_observation({str(tmp_path / 'big.fits')!r})
        frame = sx.frame_from_observations(obs)
        centers, _ = read_catalog({str(tmp_path / 'cat.ecsv')!r}, frame)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) / 1e6, obs["data"].nbytes / 1e6)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr
    extra_gb, data_mb = (float(v) for v in res.stdout.split()[-2:])
    assert data_mb == 80.0
    assert extra_gb < 0.6, f"reading 80 MB took {extra_gb:.2f} GB above the interpreter"


def test_fit_larger_than_memory_is_refused_before_fitting(hsc, tmp_path, monkeypatch, capsys):
    """A whole-frame fit whose memory estimate exceeds what is available stops before any work."""
    import scarlet_xr.scene._window as window

    data, psf, wcs = hsc
    path = tmp_path / "hsc.fits"
    fits.HDUList([fits.PrimaryHDU(data, header=wcs.to_header()),
                  fits.ImageHDU(psf, name="PSF")]).writeto(path)
    monkeypatch.setattr(window, "available_memory", lambda: 0.2e9)
    t0 = time.perf_counter()
    rc = main(["fit", str(path), "--out", str(tmp_path / "r.nc")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "needs about 0.5 GB; 0.2 GB is available" in err and "scarlet-xr survey" in err
    assert not (tmp_path / "r.nc").exists()
    assert time.perf_counter() - t0 < 30  # refused before the fit compiles
