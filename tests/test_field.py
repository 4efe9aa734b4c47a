"""Whole fields: detection -> blends -> survey runner -> one catalog (GalSim truth), masks, resume."""

import shutil

import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.io import fits
from astropy.table import Table

from scarlet_xr.cli import main
from scarlet_xr.survey import deblend_field, read_blend, simulate_field
from scarlet_xr.xr import FLAGS

pytest.importorskip("galsim")
distributed = pytest.importorskip("distributed")

SHAPE, N_SOURCES, SEED = (256, 256), 30, 11
BANDS = ["g", "r", "i", "z", "y"]


def _match(cat, truth, radius=1.5):
    """One-to-one matches (catalog row, truth row) within ``radius`` pixels, nearest first."""
    d = np.hypot(np.asarray(cat["x"])[:, None] - np.asarray(truth["x"])[None],
                 np.asarray(cat["y"])[:, None] - np.asarray(truth["y"])[None])
    d = np.where(np.isfinite(d), d, np.inf)
    pairs, used_c, used_t = [], set(), set()
    for k in np.argsort(d, axis=None):
        i, j = np.unravel_index(k, d.shape)
        if d[i, j] > radius:
            break
        if i not in used_c and j not in used_t:
            pairs.append((i, j))
            used_c.add(i)
            used_t.add(j)
    return np.asarray(pairs, int).reshape(-1, 2)


def _flux(cat):
    return np.stack([np.asarray(cat[f"flux_{b}"], float) for b in BANDS], axis=1)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """The field twice: clean, and with a garbage column (masked) through a bright isolated galaxy."""
    d = tmp_path_factory.mktemp("field")
    truth = simulate_field(d / "clean.fits", shape=SHAPE, n_sources=N_SOURCES, seed=SEED)
    xy = np.c_[truth["x"], truth["y"]]
    nearest = np.sort(np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)), axis=1)[:, 1]
    inside = (xy > 25).all(1) & (xy < np.asarray(SHAPE)[::-1] - 25).all(1)
    ok = inside & (nearest > 20) & (np.asarray(truth["kind"]) == "galaxy")
    target = int(np.flatnonzero(ok)[np.argmax(np.asarray(truth["true_flux"]).sum(1)[ok])])
    column = int(np.rint(truth["x"][target])) + 1  # off the centre by about a pixel: the core is cut
    masked_truth = simulate_field(d / "masked.fits", shape=SHAPE, n_sources=N_SOURCES, seed=SEED,
                                  bad_columns=(column,))
    np.testing.assert_array_equal(masked_truth["true_flux"], truth["true_flux"])
    return {"dir": d, "truth": truth, "target": target, "column": column}


@pytest.fixture(scope="module")
def cli_run(field, tmp_path_factory):
    """``scarlet-xr survey masked.fits --out ... --catalog ...`` on a 2-worker in-process cluster."""
    out = tmp_path_factory.mktemp("cli") / "field.zarr"
    cat = out.parent / "field.ecsv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCARLET_XR_CACHE", str(field["dir"] / "jax_cache"))
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                      dashboard_address=None) as cluster:
            rc = main(["survey", str(field["dir"] / "masked.fits"), "--out", str(out), "--catalog", str(cat),
                       "--scheduler", cluster.scheduler_address, "--max-steps", "300"])
    return {"rc": rc, "out": out, "catalog": Table.read(cat), "blends": Table.read(
        out.parent / "field.zarr.blends" / "blends.ecsv")}


def test_field_end_to_end_through_the_cli(field, cli_run):
    assert cli_run["rc"] == 0
    cat, blends, truth = cli_run["catalog"], cli_run["blends"], field["truth"]
    # one catalog row per detected source, in the order of the generated blend catalog, then the
    # sources the fits added at residual peaks (flag ADDED, no input row, no detection)
    n_det = len(blends)
    assert cat["id"][:n_det].tolist() == list(range(n_det))
    added = (cat["flags"] & FLAGS["ADDED"]) > 0
    assert not added[:n_det].any() and added[n_det:].all() and np.all(cat["id"][n_det:] == -1)
    assert np.all(np.isnan(cat["x_det"][n_det:])) and np.all(np.isfinite(cat["x_det"][:n_det]))
    assert np.all((cat["flags"] & FLAGS["FAILED"]) == 0)
    assert len(np.unique(np.c_[cat["blend"], cat["x_det"]][:n_det], axis=0)) == n_det
    assert (cat["blend_size"] > 1).any() and (cat["blend_size"] == 1).any()  # blends and isolated sources
    assert cat["x"].unit == "pix" and cat.meta["bands"] == BANDS
    pairs = _match(cat, truth)
    # most true sources are found (the missed ones sit < 1.2" from a brighter neighbour)
    assert len(pairs) >= 0.6 * len(truth) and len(pairs) >= 0.75 * len(cat)
    # positions are field pixels: matched centroids within a fraction of a pixel of the truth
    c, t = pairs[:, 0], pairs[:, 1]
    dxy = np.hypot(cat["x"][c] - truth["x"][t], cat["y"][c] - truth["y"][t])
    assert np.median(dxy) < 0.5
    # fluxes against GalSim truth: median measured 0.064 on this field
    rel = np.abs(_flux(cat)[pairs[:, 0]] / np.asarray(truth["true_flux"])[pairs[:, 1]] - 1)
    assert np.median(rel) < 0.12, np.median(rel)
    # ra/dec agree with the field's WCS at x, y
    from astropy.wcs import WCS

    wcs = WCS(fits.getheader(field["dir"] / "masked.fits", "IMAGE")).celestial
    ra, dec = wcs.pixel_to_world_values(cat["x"], cat["y"])
    np.testing.assert_allclose(cat["ra"], ra, atol=2e-7)
    np.testing.assert_allclose(cat["dec"], dec, atol=2e-7)
    # magnitudes come from the field header's MAGZERO
    good = cat["flux_r"] > 0
    np.testing.assert_allclose(cat["mag_r"][good], 27.0 - 2.5 * np.log10(cat["flux_r"][good]), rtol=1e-5)
    # sources whose footprint touches the field border or is cut by their blend box are flagged EDGE
    edge = np.asarray(blends["edge"], bool)
    assert np.all(cat["flags"][:n_det][edge] & FLAGS["EDGE"])
    # every added source is a true source that no detection found (merged with a neighbour)
    det_pairs = _match(cat[:n_det], truth)
    missed = np.setdiff1d(np.arange(len(truth)), det_pairs[:, 1])
    for i in np.flatnonzero(added):
        d = np.hypot(truth["x"][missed] - cat["x"][i], truth["y"][missed] - cat["y"][i])
        assert d.min() < 3.0, (i, d.min())


def test_masked_column_does_not_bias_the_flux(field, cli_run, tmp_path):
    truth, target, column = field["truth"], field["target"], field["column"]
    cat_m = cli_run["catalog"]
    import jax

    before = jax.config.jax_compilation_cache_dir
    clean = deblend_field(field["dir"] / "clean.fits", out=tmp_path / "clean.zarr", client="synchronous",
                          progress=False, compile_cache=field["dir"] / "jax_cache")
    # the library used the cache for the run and left the process's JAX configuration as it was
    assert jax.config.jax_compilation_cache_dir == before
    rows = []
    for cat in (cat_m, clean):
        d = np.hypot(cat["x"] - truth["x"][target], cat["y"] - truth["y"][target])
        assert d.min() < 1.0
        rows.append(int(np.argmin(d)))
    f_masked, f_clean = _flux(cat_m)[rows[0]], _flux(clean)[rows[1]]
    # the column is in that source's cutout, masked (weight 0) in every band
    blends = cli_run["blends"]
    b = blends[rows[0]]
    ds = read_blend(cli_run["out"].parent / "field.zarr.blends" / b["file"])
    assert b["blend_x0"] <= column < b["blend_x1"]
    assert np.all(ds["weight"].values[:, :, column - b["blend_x0"]] == 0)
    # the garbage on the column would matter: summed over the source's rows it exceeds half its flux
    with fits.open(field["dir"] / "masked.fits") as hdul:
        img = hdul["IMAGE"].data[:, b["blend_y0"] : b["blend_y1"], column]
    assert np.all(img.sum(axis=1) > 0.5 * np.asarray(truth["true_flux"][target]))
    # ... yet the flux is that of the same source without the bad column (measured: < 0.6 %)
    np.testing.assert_array_less(np.abs(f_masked / f_clean - 1), 0.02)
    assert np.median(np.abs(f_clean / truth["true_flux"][target] - 1)) < 0.1
    assert cat_m["masked_fraction"][rows[0]] > 0


def test_killed_run_resumes_without_duplicates(field, cli_run, tmp_path):
    out = tmp_path / "resume.zarr"
    shutil.copytree(cli_run["out"], out)
    shutil.copytree(cli_run["out"].parent / "field.zarr.blends", tmp_path / "resume.zarr.blends")
    before = xr.open_zarr(str(out), consolidated=False)
    t_before = before["fit_time"].values.copy()
    # as if killed: three blends not finished, one of them not even cut
    g = zarr.open_group(str(out), mode="r+")
    redo = [0, 2, len(t_before) - 1]
    for i in redo:
        g["status"][i] = 0
    blends = cli_run["blends"]
    (tmp_path / "resume.zarr.blends" / str(blends["file"][blends["blend"] == 2][0])).unlink()
    cat = deblend_field(field["dir"] / "masked.fits", out=out, client="synchronous", progress=False,
                        compile_cache=field["dir"] / "jax_cache", max_steps=300)
    after = xr.open_zarr(str(out), consolidated=False)
    assert after["status"].values.tolist() == [1] * len(t_before)
    t_after = after["fit_time"].values
    assert np.all(t_after[redo] != t_before[redo])
    np.testing.assert_array_equal(np.delete(t_after, redo), np.delete(t_before, redo))
    # the same rows, once each, with the same results
    ref = cli_run["catalog"]
    assert len(cat) == len(ref) and cat["id"].tolist() == ref["id"].tolist()
    np.testing.assert_allclose(_flux(cat), _flux(ref), rtol=1e-4)
    np.testing.assert_allclose(cat["x"], ref["x"], atol=1e-3)


def test_inputs_that_are_neither_or_both_are_refused(field, tmp_path, capsys):
    both = tmp_path / "both.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((8, 8), np.float32)),
                  fits.BinTableHDU(Table({"file": ["a.fits"]}))]).writeto(both)
    assert main(["survey", str(both), "--out", str(tmp_path / "a.zarr")]) == 2
    assert "ambiguous" in capsys.readouterr().err
    table = tmp_path / "cat.ecsv"
    Table({"file": ["a.fits"]}).write(table)
    argv = ["survey", str(field["dir"] / "clean.fits"), str(table), "--out", str(tmp_path / "b.zarr")]
    assert main(argv) == 2
    assert "expected one catalog table or one or more field images" in capsys.readouterr().err
    with pytest.raises(ValueError, match="VARIANCE.*must have shape"):
        bad = tmp_path / "bad.fits"
        with fits.open(field["dir"] / "clean.fits") as hdul:
            hdul["VARIANCE"].data = hdul["VARIANCE"].data[:, :10]
            hdul.writeto(bad)
        deblend_field(bad, out=tmp_path / "c.zarr", client="synchronous", progress=False)


def test_mask_bits_by_name_are_resolved_from_the_mask_header(field, tmp_path, capsys):
    """`--mask-bits` names come from the MASK header's MP_<NAME> keywords; unknown names are refused."""
    from scarlet_xr.survey._field import _FieldFile

    path = field["dir"] / "masked.fits"
    ff = _FieldFile(path, "BAD")
    with fits.open(path) as hdul:
        assert ff.mask_bits == 1 << int(hdul["MASK"].header["MP_BAD"])
        bad = ff._bad(0, 8, field["column"] - 2, field["column"] + 3)
        assert bad[:, :, 2].all() and not bad[:, :, 0].any()
    argv = ["survey", str(path), "--out", str(tmp_path / "m.zarr"), "--mask-bits", "BAD,NOSUCH"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mask bit 'NOSUCH' is not named in the header of the mask plane" in err and "'BAD'" in err

