"""FITS reading, WCS fidelity, noise estimation and netCDF/Zarr round-trips of observations."""

import warnings

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

import scarlet_xr as sx
from scarlet_xr.xr import observation_wcs, open_observation, shift_wcs


def _astropy_wcs(path):
    return WCS(fits.getheader(path), naxis=2)


def test_hsc_cutout_loads_with_estimated_noise(hsc_fits_obs, data_dir):
    obs = hsc_fits_obs
    raw = fits.getdata(data_dir / "Cut_HSC.fits")
    assert obs["data"].dims == ("band", "y", "x") and obs["data"].shape == (5, 50, 50)
    assert list(obs["band"].values) == ["g", "r", "i", "z", "y"]
    np.testing.assert_array_equal(obs["data"].values, raw.astype(np.float32))
    assert obs.attrs["noise_estimated"] == 1
    rms = obs["background_rms"].values
    assert np.all(rms > 0)
    # constant weight per band = 1 / rms^2 of the background
    np.testing.assert_allclose(obs["weight"].values, np.broadcast_to(1 / rms[:, None, None] ** 2, (5, 50, 50)),
                               rtol=1e-6)
    # the noise estimate agrees with a robust (MAD) estimate on source-free corners
    corner = raw[:, :12, :12].reshape(5, -1)
    mad = 1.4826 * np.median(np.abs(corner - np.median(corner, axis=1, keepdims=True)), axis=1)
    np.testing.assert_allclose(rms, mad, rtol=0.3)
    np.testing.assert_allclose(obs["psf"].sum(("psf_y", "psf_x")).values, 1.0, rtol=1e-12)


def test_noise_estimate_recovers_known_sigma(tmp_path):
    galsim = pytest.importorskip("galsim")
    sigma = 0.37
    img = galsim.ImageD(64, 64, scale=0.2)
    galsim.Sersic(n=1.5, half_light_radius=0.8, flux=400.0).drawImage(img)
    galsim.Gaussian(sigma=0.3, flux=150.0).shift(-3.0, 2.5).drawImage(img, add_to_image=True)
    img.addNoise(galsim.GaussianNoise(galsim.BaseDeviate(1234), sigma=sigma))
    path = tmp_path / "sim.fits"
    fits.PrimaryHDU(img.array).writeto(path)
    psf = galsim.Gaussian(sigma=0.25).drawImage(nx=15, ny=15, scale=0.2).array
    obs = open_observation(path, psf=psf, allow_missing_wcs=True)
    est = float(obs["background_rms"].values[0])
    assert abs(est / sigma - 1) < 0.05, est
    assert obs.attrs["noise_estimated"] == 1


def test_hst_cutout_loads_with_recentred_psf(data_dir):
    with pytest.raises(ValueError, match="centred.*recenter_psf=True"):
        open_observation(data_dir / "Cut_HST.fits", psf=data_dir / "PSF_HST.fits")
    obs = open_observation(data_dir / "Cut_HST.fits", psf=data_dir / "PSF_HST.fits", recenter_psf=True,
                           bands=["F814W"])
    assert obs["data"].shape == (1, 250, 250)
    psf = obs["psf"].values[0]
    assert np.unravel_index(np.argmax(psf), psf.shape) == (89, 89)
    np.testing.assert_array_equal(obs.attrs["psf_shift"], [-1, -1])
    raw = fits.getdata(data_dir / "PSF_HST.fits")
    np.testing.assert_allclose(psf[:-1, :-1], raw[1:, 1:] / raw[1:, 1:].sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("region", [(slice(None), slice(None)), (slice(7, 31), slice(12, 45))])
def test_sky_positions_match_astropy_within_1e9_deg(hsc_fits_obs, data_dir, region):
    ref = _astropy_wcs(data_dir / "Cut_HSC.fits")
    obs = hsc_fits_obs.isel(y=region[0], x=region[1])
    rng = np.random.default_rng(3)
    ny, nx = obs.sizes["y"], obs.sizes["x"]
    iy = rng.integers(0, ny, 100)
    ix = rng.integers(0, nx, 100)
    gy, gx = obs["y"].values[iy], obs["x"].values[ix]  # pixel indices of the original image
    ra0, dec0 = ref.pixel_to_world_values(gx.astype(float), gy.astype(float))
    w = observation_wcs(obs)
    ra1, dec1 = w.pixel_to_world_values(ix.astype(float), iy.astype(float))
    assert np.max(np.abs(ra1 - ra0)) < 1e-9 and np.max(np.abs(dec1 - dec0)) < 1e-9
    ra2, dec2 = obs.scarlet.pixel_to_sky(gy, gx)
    assert np.max(np.abs(ra2 - ra0)) < 1e-9 and np.max(np.abs(dec2 - dec0)) < 1e-9
    # the image alone (DataArray) carries the same WCS
    ra3, dec3 = obs["data"].scarlet.wcs.pixel_to_world_values(ix.astype(float), iy.astype(float))
    assert np.max(np.abs(ra3 - ra0)) < 1e-9 and np.max(np.abs(dec3 - dec0)) < 1e-9


def test_shift_wcs_negative_origin(data_dir):
    ref = _astropy_wcs(data_dir / "Cut_HSC.fits")
    w = shift_wcs(ref, -6, -9)  # a frame that starts before the image
    y = np.array([0.0, 3.5, 20.0, 70.0])
    x = np.array([0.0, 8.2, 30.0, 61.0])
    np.testing.assert_allclose(w.pixel_to_world_values(x, y), ref.pixel_to_world_values(x - 9, y - 6),
                               rtol=0, atol=1e-12)


def _pc_header(data_dir):
    h = fits.getheader(data_dir / "Cut_HSC.fits")
    return h


def test_cd_and_pc_cdelt_forms_agree(tmp_path, data_dir):
    data = fits.getdata(data_dir / "Cut_HSC.fits")[2]
    base = _pc_header(data_dir)
    theta = np.deg2rad(17.0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cdelt = np.array([-4.6666666666639e-05, 4.666666666664e-05])
    keys = ("CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "RADESYS")
    # PC + CDELT form (rotated, non-unit CDELT)
    hpc = fits.Header({k: base[k] for k in keys})
    for i in range(2):
        hpc[f"CDELT{i + 1}"] = cdelt[i]
        for j in range(2):
            hpc[f"PC{i + 1}_{j + 1}"] = rot[i, j]
    # the same WCS in CD form
    hcd = fits.Header({k: base[k] for k in keys})
    cd = cdelt[:, None] * rot
    for i in range(2):
        for j in range(2):
            hcd[f"CD{i + 1}_{j + 1}"] = cd[i, j]
    psf = fits.getdata(data_dir / "PSF_HSC.fits")[2]
    pos = (np.array([0.0, 10.0, 33.0, 49.0]), np.array([5.0, 48.0, 17.0, 0.0]))
    out = []
    for h, name in ((hpc, "pc.fits"), (hcd, "cd.fits")):
        fits.PrimaryHDU(data, header=h).writeto(tmp_path / name)
        obs = open_observation(tmp_path / name, psf=psf, bands=["i"])
        assert obs.attrs["noise_estimated"] == 1
        out.append(np.array(obs.scarlet.wcs.pixel_to_world_values(pos[1], pos[0])))
        ref = WCS(h).pixel_to_world_values(pos[1], pos[0])
        np.testing.assert_allclose(out[-1], ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-9)


def test_single_band_with_hdus_for_variance_mask_psf_and_header_band(tmp_path, data_dir):
    src = fits.open(data_dir / "Cut_HSC.fits")
    img = src[0].data[3].astype(np.float32)
    hdr = WCS(src[0].header, naxis=2).to_header()
    hdr["FILTER"] = "z"
    var = np.full(img.shape, 0.04, np.float32)
    mask = np.zeros(img.shape, np.int16)
    mask[10:12, 20:25] = 4
    psf = fits.getdata(data_dir / "PSF_HSC.fits")[3]
    hdul = fits.HDUList([
        fits.PrimaryHDU(img, header=hdr),
        fits.ImageHDU(var, name="VARIANCE"),
        fits.ImageHDU(mask, name="MASK"),
        fits.ImageHDU(psf, name="PSF"),
    ])
    path = tmp_path / "single.fits"
    hdul.writeto(path)
    obs = open_observation(path, variance="VARIANCE", mask="MASK")  # PSF HDU found by name
    assert list(obs["band"].values) == ["z"]
    assert obs.attrs["noise_estimated"] == 0 and "background_rms" not in obs
    w = obs["weight"].values[0]
    assert np.all(w[10:12, 20:25] == 0)
    np.testing.assert_allclose(w[mask == 0], 25.0, rtol=1e-6)
    np.testing.assert_allclose(obs["psf"].values[0], psf / psf.sum(), rtol=1e-12)
    # weights from a separate file, bands given by the user, HDU index for the variance
    fits.PrimaryHDU(1 / var).writeto(tmp_path / "weight.fits")
    obs2 = open_observation(path, weight=tmp_path / "weight.fits", bands=["HSC-Z"], name="z")
    # the file's MASK HDU is still read by default (and said so)
    assert obs2.attrs["planes"] == "mask=MASK"
    np.testing.assert_allclose(obs2["weight"].values[0], np.where(mask == 0, 25.0, 0.0), rtol=1e-6)
    assert list(obs2["band"].values) == ["HSC-Z"] and obs2.attrs["name"] == "z"
    obs3 = open_observation(path, variance=1, psf=3)
    np.testing.assert_array_equal(obs3["weight"].values, obs2["weight"].values)


def test_band_names_from_header_cube(tmp_path, data_dir):
    src = fits.open(data_dir / "Cut_HSC.fits")
    hdr = src[0].header.copy()
    hdr["BANDS"] = "g, r, i, z, y"
    fits.PrimaryHDU(src[0].data, header=hdr).writeto(tmp_path / "cube.fits")
    obs = open_observation(tmp_path / "cube.fits", psf=data_dir / "PSF_HSC.fits")
    assert list(obs["band"].values) == ["g", "r", "i", "z", "y"]
    # without header band names the default names carry the observation name
    obs = open_observation(data_dir / "Cut_HSC.fits", psf=data_dir / "PSF_HSC.fits")
    assert list(obs["band"].values) == [f"Cut_HSC{i}" for i in range(5)]


def test_slicing_keeps_observation_consistent(hsc_fits_obs):
    sub = hsc_fits_obs.sel(band=["r", "z"]).isel(y=slice(5, 25), x=slice(10, 40))
    assert sub["psf"].shape[0] == 2 and sub["weight"].shape == sub["data"].shape == (2, 20, 30)
    np.testing.assert_array_equal(sub["psf"].values, hsc_fits_obs["psf"].sel(band=["r", "z"]).values)
    frame = sx.frame_from_observations(sub)
    assert frame.origin == (5, 10) and frame.bands == ("r", "z")


def test_stale_wcs_is_reported_never_used(hsc_fits_obs):
    with pytest.raises(ValueError, match="stale"):
        observation_wcs(hsc_fits_obs.isel(x=slice(None, None, 2)))
    reduced = hsc_fits_obs.mean("y", keep_attrs=True)
    with pytest.raises(ValueError, match="stale: dimension 'y' is gone"):
        observation_wcs(reduced)
    with pytest.raises(ValueError, match="stale: dimension 'y' is gone"):
        hsc_fits_obs["data"].mean("y", keep_attrs=True).scarlet.wcs


@pytest.mark.parametrize("which", ["hsc", "hst"])
@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_observation_round_trip_is_exact(hsc_fits_obs, data_dir, tmp_path, fmt, which):
    if which == "hsc":
        obs = hsc_fits_obs.isel(y=slice(3, 40))
    else:
        obs = open_observation(data_dir / "Cut_HST.fits", psf=data_dir / "PSF_HST.fits", recenter_psf=True)
    if fmt == "netcdf":
        obs.to_netcdf(tmp_path / "o.nc", engine="h5netcdf")
        back = xr.open_dataset(tmp_path / "o.nc", engine="h5netcdf").load()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            obs.to_zarr(tmp_path / "o.zarr", mode="w", zarr_format=2, consolidated=False)
        back = xr.open_dataset(tmp_path / "o.zarr", engine="zarr", consolidated=False).load()
    xr.testing.assert_identical(back, obs)
    for var in ("data", "weight", "psf"):
        assert back[var].dtype == obs[var].dtype
    np.testing.assert_array_equal(
        observation_wcs(back).pixel_to_world_values([0.0, 9.0], [0.0, 30.0]),
        observation_wcs(obs).pixel_to_world_values([0.0, 9.0], [0.0, 30.0]),
    )


def test_variance_and_mask_planes_read_by_name_by_default(tmp_path, data_dir):
    """A VARIANCE (or WEIGHT) and a MASK HDU are used without being named, and recorded."""
    src = fits.open(data_dir / "Cut_HSC.fits")
    img = src[0].data[:2].astype(np.float32)
    hdr = WCS(src[0].header, naxis=2).to_header()
    hdr["BANDS"] = "g,r"
    var = np.full(img.shape, 0.04, np.float32)
    mask = np.zeros(img.shape, np.int32)
    mask[:, 5:7, 8:9] = 1
    psf = fits.getdata(data_dir / "PSF_HSC.fits")[:2]
    fits.HDUList([
        fits.PrimaryHDU(img, header=hdr),
        fits.ImageHDU(var, name="VARIANCE"),
        fits.ImageHDU(mask, name="MASK"),
        fits.ImageHDU(psf, name="PSF"),
    ]).writeto(tmp_path / "planes.fits")
    obs = open_observation(tmp_path / "planes.fits")
    assert obs.attrs["noise_estimated"] == 0
    assert obs.attrs["planes"] == "variance=VARIANCE,mask=MASK"
    np.testing.assert_allclose(obs["weight"].values, np.where(mask == 0, 25.0, 0.0), rtol=1e-6)
    # inverse variance under the name WHT
    fits.HDUList([
        fits.PrimaryHDU(img, header=hdr),
        fits.ImageHDU(1 / var, name="WHT"),
        fits.ImageHDU(psf, name="PSF"),
    ]).writeto(tmp_path / "wht.fits")
    obs = open_observation(tmp_path / "wht.fits")
    assert obs.attrs["planes"] == "weight=WHT" and obs.attrs["noise_estimated"] == 0
    np.testing.assert_allclose(obs["weight"].values, 25.0, rtol=1e-6)
    # a plane of the wrong shape is refused, naming it
    fits.HDUList([
        fits.PrimaryHDU(img, header=hdr),
        fits.ImageHDU(var[:, :10], name="VARIANCE"),
        fits.ImageHDU(psf, name="PSF"),
    ]).writeto(tmp_path / "badvar.fits")
    with pytest.raises(ValueError, match="variance"):
        open_observation(tmp_path / "badvar.fits")
