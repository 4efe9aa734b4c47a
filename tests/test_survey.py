"""Survey runner: Zarr results, resume, failure isolation, a killed worker, the catalog, CLI."""

import functools
import os
import shutil
import signal
import threading
import time

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.table import Table

from scarlet_xr.cli import main
from scarlet_xr.survey import deblend_catalog, simulate_blends, survey_catalog
from scarlet_xr.xr import FLAGS, write_catalog

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


@pytest.fixture(scope="module")
def survey_store(survey, tmp_path_factory):
    """The survey deblended once (synchronously); tests that change it work on a copy."""
    path, _ = survey
    out = tmp_path_factory.mktemp("store") / "run.zarr"
    deblend_catalog(path, out=out, client="synchronous", max_steps=150, progress=False)
    return out


def test_results_failure_isolation_and_resume(survey, survey_store, tmp_path):
    path, table = survey
    out = tmp_path / "run.zarr"
    shutil.copytree(survey_store, out)
    ds = xr.open_zarr(str(out), consolidated=False)
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
    cat = tmp_path / "cat.fits"
    # a catalog path that cannot be written is refused before any work
    assert main(["survey", str(path), "--out", str(out), "--catalog", str(tmp_path / "cat.txt")]) == 2
    assert "--catalog must end in .ecsv or .fits" in capsys.readouterr().err and not out.exists()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        rc = main(["survey", str(path), "--out", str(out), "--scheduler", cluster.scheduler_address,
                   "--max-steps", "50", "--catalog", str(cat)])
    text = capsys.readouterr().out
    assert rc == 1  # the broken file fails; the others are done
    assert "6 done, 1 failed" in text and "broken.fits" in text
    ds = xr.open_zarr(str(out), consolidated=False)
    assert ds["valid"].values[:-1].all() and not ds["valid"].values[-1]
    table = Table.read(cat)
    assert len(table) == ds.sizes["row"] and "1 without a fit" in text
    assert table["flags"][-1] & FLAGS["FAILED"] and np.isfinite(table["flux_err_r"][:-1]).all()


def test_survey_catalog_rows_flags_and_truth(survey, survey_store):
    path, table = survey
    cat = survey_catalog(survey_store)
    # one row per input row, in input order; the failed blend's row is flagged and NaN
    assert len(cat) == len(table)
    assert cat["id"].tolist() == list(range(len(table)))
    assert cat["file"].tolist() == [str(f) for f in table["file"]]
    bands = cat.meta["bands"]
    assert bands == ["g", "r", "i", "z", "y"]
    failed = (cat["flags"] & FLAGS["FAILED"]) > 0
    assert failed.tolist() == [False] * (len(table) - 1) + [True]
    # the default path chooses each source's model from its data (not free-form pixels)
    assert cat["kind"][-1] == "none"
    assert set(cat["kind"][:-1]) <= {"point", "sersic", "bulge+disk", "monotonic"}
    # the store read with xarray agrees (flags 0 are not decoded as missing)
    ds = xr.open_zarr(str(survey_store), consolidated=False)
    np.testing.assert_array_equal(ds["flags"].values, cat["flags"])
    np.testing.assert_array_equal(ds["flux_err"].values[:, 1], cat["flux_err_r"])
    for name in ("ra", "dec", "x", "y", "r_half", "e1", "flux_r", "flux_err_r", "snr_r"):
        assert np.isnan(cat[name][-1]), name
        assert np.all(np.isfinite(cat[name][:-1])), name
    ok = ~failed
    # the measured centroid is the true position (0.2" pixels), and x, y is it in cutout pixels
    sep = np.hypot((cat["ra"][ok] - table["ra"][ok]) * np.cos(np.radians(2.0)),
                   cat["dec"][ok] - table["dec"][ok]) * 3600
    assert np.median(sep) < 0.15
    from scarlet_xr.survey import read_blend
    from scarlet_xr.xr import observation_wcs

    for i in np.flatnonzero(ok)[:3]:
        wcs = observation_wcs(read_blend(path.parent / table["file"][i]))
        x, y = wcs.world_to_pixel_values(cat["ra"][i], cat["dec"][i])
        np.testing.assert_allclose([cat["x"][i], cat["y"][i]], [x, y], atol=1e-3)
    # flux errors have the right scale: pulls against the GalSim truth
    truth = np.asarray(table["true_flux"])[ok]
    pull = np.stack([(cat[f"flux_{b}"][ok] - truth[:, j]) / cat[f"flux_err_{b}"][ok]
                     for j, b in enumerate(bands)])
    assert 0.3 < np.median(np.abs(pull)) < 2.0
    assert np.mean(np.abs(pull) < 3) > 0.7
    np.testing.assert_allclose(cat["snr_r"][ok], cat["flux_r"][ok] / cat["flux_err_r"][ok], rtol=1e-6)
    # sizes: arcsec = 0.2 x pixels; true half-light radii are 0.25-0.7" (before the PSF)
    np.testing.assert_allclose(cat["r_half"][ok], 0.2 * cat["r_half_pix"][ok], rtol=1e-5)
    assert np.all((cat["r_half"][ok] > 0.1) & (cat["r_half"][ok] < 1.2))
    assert np.all(np.abs(cat["e1"][ok]) < 1) and np.all(np.abs(cat["e2"][ok]) < 1)
    assert np.all((cat["blendedness"][ok] >= 0) & (cat["blendedness"][ok] <= 1))
    assert cat["ra"].unit == u.deg and cat["r_half"].unit == u.arcsec and cat["x"].unit == u.pix
    assert all(cat[c].description for c in cat.colnames)
    # zero points give magnitudes
    mags = survey_catalog(survey_store, zero_points=27.0)
    np.testing.assert_allclose(mags["mag_r"][ok], 27.0 - 2.5 * np.log10(cat["flux_r"][ok]))
    with pytest.raises(ValueError, match="unknown catalog column"):
        survey_catalog(survey_store, columns=["ra", "nope"])


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_survey_catalog_round_trip(survey_store, tmp_path, suffix):
    cat = survey_catalog(survey_store)
    back = Table.read(write_catalog(cat, tmp_path / f"cat{suffix}"))
    assert back.colnames == cat.colnames and len(back) == len(cat)
    for name in cat.colnames:
        a, b = cat[name], back[name]
        # FITS has no unit string for "dimensionless": it reads back as no unit
        assert (b.unit or u.dimensionless_unscaled) == (a.unit or u.dimensionless_unscaled), name
        if a.dtype.kind in "fiu":
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=name)
        else:
            assert [str(v) for v in b] == [str(v) for v in a], name


def test_old_store_without_measurements_is_refused(survey_store, tmp_path):
    out = tmp_path / "old.zarr"
    shutil.copytree(survey_store, out)
    shutil.rmtree(out / "source_flux_err")
    with pytest.raises(ValueError, match="no per-source measurements.*source_flux_err"):
        survey_catalog(out)
    with pytest.raises(ValueError, match="not a survey store"):
        survey_catalog(tmp_path)


def test_free_kind_runs_batched_and_a_store_keeps_its_kind(survey, survey_store, tmp_path, monkeypatch):
    path, table = survey
    out = tmp_path / "free.zarr"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCARLET_XR_CACHE", "off")  # no compile cache (it once made a directory 'off')
    ds = deblend_catalog(path, out=out, kind="freeform", client="synchronous", max_steps=150, progress=False)
    assert not (tmp_path / "off").exists()
    assert zarr.open_group(str(out), mode="r").attrs["source_kind"] == "freeform"
    cat = survey_catalog(out)
    assert set(cat["kind"][:-1]) == {"free"}
    assert int((ds["status"].values == 1).sum()) == len(set(table["file"])) - 1
    # on these small, mostly isolated blends (1-2 sources) the default path is at least as
    # accurate as the free-form runner (measured 0.079 vs 0.086; on blends of 2-6 sources it is
    # 2.3x better: benchmarks/README.md)
    auto = survey_catalog(survey_store)
    ok = (cat["flags"] & FLAGS["FAILED"]) == 0
    truth = np.asarray(table["true_flux"])[ok]
    bands = cat.meta["bands"]

    def err(c):
        return np.median(np.abs(np.stack([c[f"flux_{b}"][ok] for b in bands], 1) / truth - 1))

    assert err(auto) < 1.02 * err(cat), (err(auto), err(cat))
    # a store started with one kind is not resumed with another
    with pytest.raises(ValueError, match="was started with kind 'freeform'"):
        deblend_catalog(path, out=out, kind="auto", client="synchronous", progress=False)
    with pytest.raises(ValueError, match="kind must be one of"):
        deblend_catalog(path, out=tmp_path / "x.zarr", kind="pixels", client="synchronous", progress=False)


def test_default_path_pads_blends_to_their_bucket_and_reuses_compiled_fits(survey):
    """Blends of one bucket share the compiled fit stages; padding changes no answer."""
    from _compiles import count_compiles

    from scarlet_xr.survey import read_blend
    from scarlet_xr.survey._task import fit_blend_auto
    from scarlet_xr.xr import observation_wcs

    path, table = survey
    # blend 1: two galaxies 7 px apart whose split is stable (blends 0 and 3 have a faint or
    # degenerate neighbour whose flux moves by 5-10 % with the rounding of any change)
    rows = table[np.asarray(table["blend"]) == 1]
    ds = read_blend(path.parent / rows["file"][0])
    wcs = observation_wcs(ds)
    x, y = wcs.world_to_pixel_values(np.asarray(rows["ra"]), np.asarray(rows["dec"]))
    centers = np.stack([y, x], 1)
    import jax

    jax.clear_caches()  # other tests of this process may have compiled these programs
    with count_compiles("_chunk_impl") as hits:
        first = fit_blend_auto(ds, centers)
        n_first = len(hits)
        # the same blend in a cutout 2 pixels wider (zero-weight columns): another cutout
        # shape, the same bucket (stamp 32) -> no new fit program, the same answer
        wider = ds.pad(x=(0, 2), constant_values=0.0)
        wider["psf"] = ds["psf"]
        again = fit_blend_auto(wider, centers)
        assert len(hits) == n_first, hits
    assert n_first >= 1 and again["kinds"] == first["kinds"]
    np.testing.assert_allclose(again["flux"], first["flux"], rtol=1e-5)
    # the same measurements as the blend fitted unpadded in its own layout (boxes differ:
    # the padded fit gives every extended source the bucket's box)
    # (kinds may differ: whether a bulge + disk beats one Sersic is decided by a few chi^2 here)
    plain = fit_blend_auto(ds, centers, canonical=False)
    truth = np.stack([np.asarray(f) for f in rows["true_flux"]])
    err = np.median(np.abs(first["flux"] / truth - 1))
    err_plain = np.median(np.abs(plain["flux"] / truth - 1))
    assert err < 0.1 and abs(err - err_plain) < 0.02, (err, err_plain)
    np.testing.assert_allclose(first["flux"].sum(1), plain["flux"].sum(1), rtol=0.05)
    # positions in the cutout's pixels and the EDGE/MASKED flags refer to the real cutout
    np.testing.assert_allclose(first["x"], plain["x"], atol=0.05)
    bits = FLAGS["EDGE"] | FLAGS["MASKED"]
    np.testing.assert_array_equal(first["measurements"]["flags"] & bits,
                                  plain["measurements"]["flags"] & bits)
    # a cutout ending 2 rows below a source: its footprint touches the real edge (EDGE), not
    # only the padding below it
    k = int(np.argmax(centers[:, 0]))
    short = ds.isel(y=slice(0, int(round(centers[k, 0])) + 3))
    for canonical in (True, False):
        flags = fit_blend_auto(short, centers, canonical=canonical)["measurements"]["flags"]
        assert flags[k] & FLAGS["EDGE"], (canonical, flags)


_DROP_CHILD = """
import json, sys
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from _compiles import count_compiles
from scarlet_xr.infer import resident_memory_mb as _resident_mb
from scarlet_xr.infer import return_free_memory as _return_free_memory
from scarlet_xr.survey._task import WORKER_MEMORY_STEP_MB, _bound_compiled_memory
out = {"trim": _return_free_memory()}

def program(k):
    @jax.jit
    def f(x):
        for j in range(k % 7 + 3):
            x = jnp.fft.irfft2(jnp.fft.rfft2(x) * (j + k)) + jnp.sin(x) * k
        return x
    return f

@jax.jit
def double(x):
    return 2 * x

with count_compiles("double") as hits:
    rss = _resident_mb()
    double(jnp.ones(3))
    out["kept"] = _bound_compiled_memory(rss + 1e6)
    double(jnp.ones(3))
    out["hits_kept"] = len(hits)
    out["dropped"] = _bound_compiled_memory(1.0)
    double(jnp.ones(3))
    out["hits_dropped"] = len(hits)
    out["step_kept"] = _bound_compiled_memory(1.0, floor_mb=_resident_mb())
    double(jnp.ones(3))
    out["hits_step_kept"] = len(hits)
    out["step_dropped"] = _bound_compiled_memory(1.0, floor_mb=_resident_mb() - 2 * WORKER_MEMORY_STEP_MB)
    double(jnp.ones(3))
    out["hits_step_dropped"] = len(hits)
    # the command line's release between a fit and its results (no trim first)
    from scarlet_xr.infer import release_compiled_memory
    out["release_kept"] = release_compiled_memory(_resident_mb() + 1e6, trim_first=False)
    double(jnp.ones(3))
    out["hits_release_kept"] = len(hits)
    out["release_dropped"] = release_compiled_memory(1.0, trim_first=False)
    double(jnp.ones(3))
    out["hits_release_dropped"] = len(hits)
_return_free_memory()
out["before"] = _resident_mb()
for k in range(40):
    program(k)(jnp.ones((64 + k, 64))).block_until_ready()
out["grown"] = _resident_mb()
out["after"] = _bound_compiled_memory(1.0)
print(json.dumps(out))
"""


@functools.cache
def _drop_in_child():
    """Run the memory-bound checks in a fresh process: ``jax.clear_caches`` can crash a process that
    goes on using programs traced before it (JAX issue 15973), so the test process never calls it.
    Run once; both tests read its results."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", _DROP_CHILD, str(here.parent), str(here)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_dropped_programs_give_their_memory_back_to_the_system():
    """Dropping compiled programs lowers a worker's resident memory: the freed C heap's pages are
    handed back (``malloc_trim``). Without that, 40 programs grew memory by ~130 MB and dropping
    them gave back nothing (380 -> 380 MB; with it 370 -> 299 MB)."""
    out = _drop_in_child()
    if not out["trim"]:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    before, grown, after = out["before"], out["grown"], out["after"]
    assert grown - before > 40, out  # MB held by the compiled programs
    assert after is not None
    assert grown - after > 0.3 * (grown - before), out


def test_a_worker_drops_its_compiled_programs_above_its_memory_bound():
    """Between blends a survey worker empties JAX's in-memory caches when it holds too much."""
    out = _drop_in_child()
    assert not out["kept"] and out["hits_kept"] == 1  # under the bound: kept, compiled once
    assert out["dropped"] is not None and out["dropped"] > 10  # over it: dropped ...
    assert out["hits_dropped"] == 2  # ... and compiled again when needed
    # after a drop, over the bound but not WORKER_MEMORY_STEP_MB above the last drop: kept
    assert out["step_kept"] is None and out["hits_step_kept"] == 2
    assert out["step_dropped"] is not None and out["hits_step_dropped"] == 3


def test_the_command_line_releases_a_large_fits_programs_before_its_results():
    """``infer.release_compiled_memory`` (``scarlet-xr fit`` calls it between the fit and the results):
    under its limit nothing is dropped, over it the programs go (and are compiled again when needed).
    On a 300-source cutout it lowered the command's peak from 1.27 to 0.96 GB (benchmarks/README.md)."""
    out = _drop_in_child()
    assert out["release_kept"] is None and out["hits_release_kept"] == 3
    assert out["release_dropped"] is not None and out["release_dropped"] > 10
    assert out["hits_release_dropped"] == 4


def test_synchronous_runs_never_drop_the_callers_programs():
    """Only dask worker processes bound their memory; the caller's own process is left alone."""
    from scarlet_xr.survey._task import _in_worker_process

    assert _in_worker_process() is False


def _affinity_of_a_new_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(sorted(os.sched_getaffinity(0))))
    t.start()
    t.join()
    return out[0]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                    or not os.path.isdir("/proc/self/task"), reason="needs Linux and 2 cores")
def test_default_cluster_workers_get_one_core_each():
    # the default LocalCluster's workers are pinned to distinct cores, threads started later included
    from scarlet_xr.survey._runner import _cores_to_pin, _pin_worker

    cores = _cores_to_pin(2)
    assert len(cores) == 2 and len(set(cores)) == 2
    assert _cores_to_pin(1) == [] and _cores_to_pin(len(os.sched_getaffinity(0)) + 1) == []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pinned = client.run(_pin_worker, cores)
        later = client.run(_affinity_of_a_new_thread)
    assert sorted(pinned.values()) == cores
    assert sorted(later.values()) == [[c] for c in cores]


def test_buckets_are_given_whole_to_workers_balanced_by_cost():
    # a worker traces every program of the buckets it fits: each bucket goes to one worker
    from scarlet_xr.survey import bucket_key
    from scarlet_xr.survey._runner import _preferred_workers

    bands = ("g", "r")
    small = [(([{"index": i}] * 8), bucket_key((31, 31), 2, (11, 11), bands)) for i in range(6)]
    mid = [(([{"index": i}] * 8), bucket_key((60, 60), 3, (11, 11), bands)) for i in range(3)]
    big = [(([{"index": i}] * 4), bucket_key((120, 120), 2, (11, 11), bands)) for i in range(2)]
    tasks = small[:3] + mid + small[3:] + big
    prefer = _preferred_workers(tasks, ["a", "b"])
    owner = {}
    for (_, key), w in zip(tasks, prefer, strict=True):
        assert owner.setdefault(key, w) == w  # one worker per bucket
    assert len(set(owner.values())) == 2
    # the costliest bucket (48 blends of 32 px) alone on one worker, the 64 and 128 px buckets on the other
    small_key = small[0][1]
    assert [k for k, w in owner.items() if w == owner[small_key]] == [small_key]
    assert _preferred_workers(tasks, ["a"]) == [None] * len(tasks)
    # buckets that cannot be spread evenly: no preference (idle workers would wait)
    assert _preferred_workers(tasks, ["a", "b", "c", "d"]) == [None] * len(tasks)
    assert _preferred_workers(small + big, ["a", "b"]) == [None] * len(small + big)


class _CountingGroup:
    """A Zarr group that records the arrays looked up in it."""

    def __init__(self, group):
        self.group, self.opened = group, []

    def __getitem__(self, name):
        self.opened.append(name)
        return self.group[name]


def test_a_tasks_store_opens_each_array_once_and_writes_the_same(tmp_path):
    from scarlet_xr.survey._store import (
        MEASURE_VARS,
        TaskStore,
        create_store,
        open_store,
        read_status,
        write_blend,
    )

    bands = ["g", "r", "i"]
    rng = np.random.default_rng(3)
    rec = {"status": 1, "flux": rng.normal(size=(3, 3)), "ra": rng.normal(size=3), "dec": rng.normal(size=3),
           "y": rng.normal(size=3), "x": rng.normal(size=3), "rows": np.arange(3), "zero_point": np.zeros(3),
           "measurements": {k: rng.normal(size=(3, 3) if v[2] else 3).astype(v[0])
                            for k, v in MEASURE_VARS.items()}}
    stores = []
    for cached in (False, True):
        path = tmp_path / f"s{int(cached)}.zarr"
        create_store(path, files=["a", "b"], bands=bands, slots=4, n_rows=6, fingerprint="f")
        group = open_store(path)
        counting = _CountingGroup(group)
        target = TaskStore(counting) if cached else counting
        write_blend(target, 1, rec)
        write_blend(target, 0, {**rec, "status": 2})
        if cached:  # the second blend opened nothing again
            assert len(counting.opened) == len(set(counting.opened))
        else:
            assert len(counting.opened) >= 2 * len(set(counting.opened))
        stores.append(open_store(path))
    plain, cached = stores
    assert list(read_status(plain)) == list(read_status(cached)) == [2, 1]
    for name in ("source_flux", "source_ra", "source_row", "source_valid", "zero_point"):
        np.testing.assert_array_equal(np.asarray(plain[name][:]), np.asarray(cached[name][:]))
