"""The ``.scarlet`` accessor and the results DataTree on the real HSC cutout."""

import warnings

import numpy as np
import pytest
import xarray as xr

import scarlet_xr as sx  # noqa: F401  (registers the accessor)


@pytest.fixture(scope="module")
def fitted(hsc_fits_obs):
    before = hsc_fits_obs.copy(deep=True)
    tree = hsc_fits_obs.scarlet.fit()
    return before, tree


def test_accessor_is_registered_and_thin(hsc_fits_obs):
    obs = hsc_fits_obs
    assert obs.scarlet.psf.dims == ("band", "psf_y", "psf_x")
    assert obs.scarlet.weights is not None and obs.scarlet.weights.dims == ("band", "y", "x")
    np.testing.assert_array_equal(obs.scarlet.weights.values, obs["weight"].values)
    assert obs.scarlet.wcs.has_celestial
    sub = obs.isel(y=slice(10, 20), x=slice(5, 15))
    assert tuple(sub.scarlet.wcs.wcs.crpix) == tuple(obs.scarlet.wcs.wcs.crpix - [5, 10])
    da = obs["data"].assign_coords(weight=obs["weight"])
    np.testing.assert_array_equal(da.scarlet.weights.values, obs["weight"].values)
    with pytest.raises(ValueError, match="fit the observation Dataset"):
        obs["data"].scarlet.fit()


def test_fit_detects_fits_and_leaves_input_untouched(fitted, hsc_fits_obs):
    before, tree = fitted
    xr.testing.assert_identical(hsc_fits_obs, before)
    assert isinstance(tree, xr.DataTree)
    node = tree["observations/hsc"]
    chi2 = node.attrs["chi2_reduced"]
    assert 0.5 < chi2 < 1.5, chi2
    assert set(node.to_dataset().data_vars) >= {"data", "model", "residual", "weight", "chi2_reduced"}
    np.testing.assert_allclose(node["residual"].values, node["data"].values - node["model"].values, rtol=0,
                               atol=1e-4)
    src = tree["sources"].to_dataset()
    assert src.sizes["source"] >= 4
    # fluxes are the non-negative linear solution, each with a finite 1-sigma error
    assert np.all(src["flux"].values >= 0) and np.all(src["flux"].values.sum(axis=1) > 0)
    assert np.all(np.isfinite(src["flux_err"].values)) and np.all(src["flux_err"].values > 0)
    # sky positions of the sources agree with the WCS of the input file
    ra, dec = hsc_fits_obs.scarlet.pixel_to_sky(src["y"].values, src["x"].values)
    np.testing.assert_allclose(src["ra"].values, ra, rtol=0, atol=1e-9)
    np.testing.assert_allclose(src["dec"].values, dec, rtol=0, atol=1e-9)
    assert tree.attrs["scarlet_xr_version"] == sx.__version__ and "wcs_header" in tree.attrs
    # the brightest detections: the two galaxies at the centre (known positions in the cutout)
    # (sep's barycentres: the centre parameters, on the peak of the data, within 1.5 px;
    # the light-weighted centroids of these asymmetric galaxies within 2)
    anchor = np.stack([src["anchor_y"].values, src["anchor_x"].values], 1)
    pos = np.stack([src["y"].values, src["x"].values], 1)
    for y, x in [(24.1, 23.0), (27.0, 39.3)]:
        assert np.min(np.hypot(anchor[:, 0] - y, anchor[:, 1] - x)) < 1.5
        assert np.min(np.hypot(pos[:, 0] - y, pos[:, 1] - x)) < 2.0


def test_tree_accessor(fitted, hsc_fits_obs):
    _, tree = fitted
    obs = tree.scarlet.observations()["hsc"]
    np.testing.assert_array_equal(obs["data"].values, hsc_fits_obs["data"].values)
    ra, dec = tree.scarlet.wcs.pixel_to_world_values([3.0], [7.0])
    ra0, dec0 = hsc_fits_obs.scarlet.wcs.pixel_to_world_values([3.0], [7.0])
    assert abs(ra[0] - ra0[0]) < 1e-9 and abs(dec[0] - dec0[0]) < 1e-9
    assert set(tree.scarlet.psf) == {"hsc"} and tree.scarlet.weights["hsc"].shape == (5, 50, 50)
    refit = tree.scarlet.fit()
    assert refit["sources"].sizes["source"] == tree["sources"].sizes["source"]
    assert refit["observations/hsc"].attrs["chi2_reduced"] < 1.5


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_results_round_trip_exact(fitted, tmp_path, fmt):
    _, tree = fitted
    if fmt == "netcdf":
        tree.to_netcdf(tmp_path / "r.nc", engine="h5netcdf")
        back = xr.open_datatree(tmp_path / "r.nc", engine="h5netcdf").load()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tree.to_zarr(tmp_path / "r.zarr", mode="w", zarr_format=2, consolidated=False)
        back = xr.open_datatree(tmp_path / "r.zarr", engine="zarr", consolidated=False).load()
    xr.testing.assert_identical(back, tree)
    for path in ("observations/hsc", "model", "sources"):
        for name, var in tree[path].to_dataset().data_vars.items():
            assert back[path][name].dtype == var.dtype, (path, name)
            if var.dtype.kind == "f":
                assert np.array_equal(back[path][name].values, var.values, equal_nan=True)
