"""Survey runner: Zarr results, resume, failure isolation, a killed worker, CLI."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import xarray as xr
import zarr

from scarlet_xr.cli import main
from scarlet_xr.survey import deblend_catalog, simulate_blends

pytest.importorskip("galsim")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    d = tmp_path_factory.mktemp("survey")
    path, table = simulate_blends(d, 6, seed=5, sizes=(29, 31), sources=(1, 2))
    (d / "broken.fits").write_bytes(b"this is not a FITS file")
    table.add_row({"file": "broken.fits", "ra": 150.0, "dec": 2.0, "true_flux": np.ones(5), "blend": 99})
    table.write(path, overwrite=True)
    return path, table


def test_results_failure_isolation_and_resume(survey, tmp_path):
    path, table = survey
    out = tmp_path / "run.zarr"
    ds = deblend_catalog(path, out=out, client="synchronous", max_steps=150, progress=False)
    status = ds["status"].values
    files = ds["file"].values
    assert status.tolist() == [1] * 6 + [2]
    assert files[-1] == "broken.fits" and "OSError" in str(ds["error"].values[-1])
    # every catalog row gets flux per band and ra/dec, in catalog order
    truth = np.asarray(table["true_flux"])[:-1]
    flux = ds["flux"].values[:-1]
    assert ds["valid"].values.tolist() == [True] * (len(table) - 1) + [False]
    assert np.median(np.abs(flux / truth - 1)) < 0.2
    sep = np.hypot((ds["ra"].values[:-1] - table["ra"][:-1]) * np.cos(np.radians(2.0)),
                   ds["dec"].values[:-1] - table["dec"][:-1]) * 3600
    assert np.median(sep) < 0.2  # arcsec (1 pixel = 0.2")
    assert np.isnan(ds["flux"].values[-1]).all()
    # resume: nothing is redone
    before = ds["fit_time"].values.copy()
    ds2 = deblend_catalog(path, out=out, client="synchronous", max_steps=150, progress=False)
    np.testing.assert_array_equal(ds2["fit_time"].values, before)
    # an interrupted blend (status still pending) is picked up, and only that one
    g = zarr.open_group(str(out), mode="r+")
    g["status"][2] = 0
    ds3 = deblend_catalog(path, out=out, client="synchronous", max_steps=150, progress=False)
    t3 = ds3["fit_time"].values
    assert ds3["status"].values.tolist() == [1] * 6 + [2]
    assert t3[2] != before[2]
    np.testing.assert_array_equal(np.delete(t3, 2), np.delete(before, 2))
    np.testing.assert_allclose(ds3["flux"].values[:-1], flux, rtol=1e-5)
    # a store of another catalog is refused
    table2 = table[:3]
    table2.write(path.parent / "other.ecsv", overwrite=True)
    with pytest.raises(ValueError, match="different catalog"):
        deblend_catalog(path.parent / "other.ecsv", out=out, client="synchronous", progress=False)


def test_killed_worker_keeps_finished_results(survey, tmp_path):
    path, table = survey
    out = tmp_path / "killed.zarr"
    cache = tmp_path / "jax_cache"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        result = {}

        def run():
            result["ds"] = deblend_catalog(path, out=out, client=client, blends_per_task=1, max_steps=150,
                                           progress=False, compile_cache=cache)

        th = threading.Thread(target=run)
        th.start()
        killed = None
        deadline = time.time() + 50
        while time.time() < deadline and th.is_alive():
            if out.exists():
                st = zarr.open_group(str(out), mode="r")["status"][:]
                if (st == 1).sum() >= 1 and killed is None:
                    pids = client.run(os.getpid)
                    killed = next(iter(pids.values()))
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.2)
        th.join(timeout=90)
        assert killed is not None, "no blend finished before the deadline"
    assert "ds" in result
    ds = xr.open_zarr(str(out), consolidated=False)
    status = ds["status"].values
    # finished results intact; unfinished ones were rerun elsewhere or stay pending for a resume
    assert status[-1] == 2
    assert set(status[:-1].tolist()) <= {0, 1}
    ds = deblend_catalog(path, out=out, client="synchronous", max_steps=150, progress=False)
    assert ds["status"].values.tolist() == [1] * 6 + [2]
    flux = ds["flux"].values[:-1]
    assert np.all(np.isfinite(flux))
    assert np.median(np.abs(flux / np.asarray(table["true_flux"])[:-1] - 1)) < 0.2


def test_cli_survey(survey, tmp_path, capsys):
    path, _ = survey
    out = tmp_path / "cli.zarr"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        rc = main(["survey", str(path), "--out", str(out), "--scheduler", cluster.scheduler_address,
                   "--max-steps", "50"])
    text = capsys.readouterr().out
    assert rc == 1  # the broken file fails; the others are done
    assert "6 done, 1 failed" in text and "broken.fits" in text
    ds = xr.open_zarr(str(out), consolidated=False)
    assert ds["valid"].values[:-1].all() and not ds["valid"].values[-1]
