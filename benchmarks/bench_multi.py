"""Multi-instrument benchmark: joint HSC (5 bands, 0.168"/px) + HST (F814W, 0.03"/px) fit.

Data: ``tests/data/Cut_HSC.fits`` / ``PSF_HSC.fits`` and ``Cut_HST.fits`` /
``PSF_HST.fits`` (from scarlet's multi-resolution tutorial). Neither file has
a noise plane; both tools get the same constant weight per band,
``1 / rms^2`` of ``sep``'s background (as scarlet2's tutorial does). Both
tools get the same catalogue: ``sep`` detections on the HST image (threshold
3 rms), as sky positions.

- ours: ``open_observation`` for both files (``recenter_psf=True`` for the
  HST PSF, whose peak is off-centre), ``frame_from_observations([hsc, hst])``
  (a north-up frame at HST resolution), ``initialize_sources`` with
  ``"monotonic"`` morphologies, ``scene.fit([hsc, hst])``: each observation
  is rendered on its own pixel grid every step.
- scarlet2 0.5.1, its faster path (PEERS.md): ``Frame.from_observations([hst,
  hsc])``; the HSC observation is resampled once onto the model (HST) grid
  with ``CorrelatedObservation.from_observation(obs_hsc,
  resample_to_frame=frame)`` (Lanczos resampling, a correlated-noise
  likelihood from the measured noise correlation); sources from
  ``init.from_gaussian_moments([obs_hst, obs_hsc], center)`` (fallback
  ``pixel_spectrum`` + ``compact_morphology``), spectra ``positive``
  (``relative_step`` 0.05), morphologies ``unit_interval``
  (``relative_step`` 1e-3); ``fit([obs_hst, obs_hsc_resampled],
  max_iter=1000, e_rel=1e-4)``.

Reported per tool (fresh process each): ``build_s`` (reading, observations,
frame, preparation such as resampling, source initialisation), ``fit_s``
(first fit, compilation included), ``total_s``, peak memory, and the reduced
chi^2 of each observation on its *native* grid, ``sum w (d - m)^2 / N`` (for
scarlet2 the HSC model is rendered onto the HSC grid once after the fit with
its direct resampling renderer).

Run: ``python benchmarks/bench_multi.py [--json out.json]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from bench_hsc import ROOT, _chi2, _peak_mb, combine, peer_source, run_child  # noqa: E402

DATA = ROOT / "tests" / "data"
HSC_BANDS = ["g", "r", "i", "z", "y"]
HST_BANDS = ["F814W"]
MAX_STEPS = 1000


def load_inputs():
    """Arrays, WCSs, per-band weights and the sky catalogue shared by both tools."""
    import warnings

    import numpy as np
    import sep
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    def read(name):
        with fits.open(DATA / name) as h:
            data = np.asarray(h[0].data, dtype=np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(h[0].header, naxis=2)
        return data, wcs

    hsc, wcs_hsc = read("Cut_HSC.fits")
    hst, wcs_hst = read("Cut_HST.fits")
    psf_hsc, _ = read("PSF_HSC.fits")
    psf_hst, _ = read("PSF_HST.fits")
    hst = hst[None]
    psf_hst = psf_hst[None]

    def weights(cube):
        rms = np.array([sep.Background(np.ascontiguousarray(b)).globalrms for b in cube])
        return np.broadcast_to(1.0 / rms[:, None, None] ** 2, cube.shape).copy()

    img = np.ascontiguousarray(hst[0])
    bkg = sep.Background(img)
    objs = sep.extract(img - bkg.back(), 3.0, err=bkg.globalrms)
    ra, dec = wcs_hst.pixel_to_world_values(objs["x"], objs["y"])
    return {
        "hsc": hsc, "wcs_hsc": wcs_hsc, "psf_hsc": psf_hsc, "w_hsc": weights(hsc),
        "hst": hst, "wcs_hst": wcs_hst, "psf_hst": psf_hst, "w_hst": weights(hst),
        "ra": np.asarray(ra), "dec": np.asarray(dec),
    }


def run_ours() -> dict:
    """scarlet_xr: both observations on their own grids, one joint fit."""
    t0 = time.perf_counter()
    import numpy as np

    import scarlet_xr as sx
    from scarlet_xr.xr import likelihood_for, open_observation

    t_import = time.perf_counter() - t0
    inp = load_inputs()
    t0 = time.perf_counter()
    hsc = open_observation(DATA / "Cut_HSC.fits", psf=DATA / "PSF_HSC.fits", weight=inp["w_hsc"],
                           bands=HSC_BANDS, name="hsc")
    hst = open_observation(DATA / "Cut_HST.fits", psf=DATA / "PSF_HST.fits", weight=inp["w_hst"],
                           bands=HST_BANDS, name="hst", recenter_psf=True)
    frame = sx.frame_from_observations([hsc, hst])
    cy, cx = frame.sky_to_pixel(inp["ra"], inp["dec"])
    centers = np.stack([cy, cx], axis=1)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, [hsc, hst], centers, kinds="monotonic")
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = scene.fit([hsc, hst], max_steps=MAX_STEPS)
    t_fit = time.perf_counter() - t0
    cube = fitted.model()()
    chi2 = {}
    for name, ds in (("hsc", hsc), ("hst", hst)):
        model = likelihood_for(ds, frame).renderer(cube)
        chi2[name] = _chi2(ds["data"].values, model, ds["weight"].values)
    return {
        "tool": f"scarlet_xr {sx.__version__}",
        "n_sources": len(centers),
        "frame_shape": list(frame.shape),
        "import_s": t_import,
        "build_s": t_build,
        "fit_s": t_fit,
        "total_s": t_build + t_fit,
        "steps": int(fitted.history.num_steps),
        "status": str(fitted.history.status),
        "chi2_hsc": chi2["hsc"],
        "chi2_hst": chi2["hst"],
        "peak_rss_mb": _peak_mb(),
    }


def run_peer() -> dict:
    """scarlet2 0.5.1: HSC resampled once onto the HST grid, correlated-noise likelihood."""
    t0 = time.perf_counter()
    import scarlet2 as sc2

    t_import = time.perf_counter() - t0
    import astropy.units as u
    import jax.numpy as jnp
    import numpy as np
    from astropy.coordinates import SkyCoord
    from numpyro.distributions import constraints

    def spec_step(x, *args):
        return sc2.relative_step(x, factor=0.05)

    def morph_step(x, *args):
        return sc2.relative_step(x, factor=1e-3)

    inp = load_inputs()
    t0 = time.perf_counter()
    f32 = np.float32
    obs_hst = sc2.Observation(jnp.asarray(inp["hst"], f32), weights=jnp.asarray(inp["w_hst"], f32),
                              wcs=inp["wcs_hst"], psf=sc2.ArrayPSF(jnp.asarray(inp["psf_hst"], f32)),
                              channels=HST_BANDS, name="hst")
    obs_hsc = sc2.Observation(jnp.asarray(inp["hsc"], f32), weights=jnp.asarray(inp["w_hsc"], f32),
                              wcs=inp["wcs_hsc"], psf=sc2.ArrayPSF(jnp.asarray(inp["psf_hsc"], f32)),
                              channels=HSC_BANDS, name="hsc")
    frame = sc2.Frame.from_observations([obs_hst, obs_hsc])
    t1 = time.perf_counter()
    obs_hsc_r = sc2.CorrelatedObservation.from_observation(obs_hsc, resample_to_frame=frame)
    t_prepare = time.perf_counter() - t1
    coords = SkyCoord(ra=inp["ra"] * u.deg, dec=inp["dec"] * u.deg)
    t1 = time.perf_counter()
    with sc2.Scene(frame) as scene:
        for c in coords:
            peer_source(sc2, [obs_hst, obs_hsc], c)
    with sc2.Parameters(scene):
        for i, src in enumerate(scene.sources):
            sc2.Parameter(src.spectrum, name=f"spectrum:{i}", constraint=constraints.positive,
                          stepsize=spec_step)
            sc2.Parameter(src.morphology, name=f"morph:{i}", constraint=constraints.unit_interval,
                          stepsize=morph_step)
    t_init = time.perf_counter() - t1
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = scene.fit([obs_hst, obs_hsc_r], max_iter=MAX_STEPS, e_rel=1e-4, progress_bar=False)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    cube = fitted()
    obs_hsc.match(frame)  # direct resampling renderer, evaluated once for the native-grid chi^2
    chi2_hsc = _chi2(inp["hsc"], obs_hsc.render(cube), inp["w_hsc"])
    chi2_hst = _chi2(inp["hst"], obs_hst.render(cube), inp["w_hst"])
    t_eval = time.perf_counter() - t0
    return {
        "tool": f"scarlet2 {sc2.__version__}",
        "n_sources": len(coords),
        "frame_shape": list(frame.bbox.spatial.shape),
        "import_s": t_import,
        "prepare_resample_s": t_prepare,
        "init_s": t_init,
        "build_s": t_build,
        "fit_s": t_fit,
        "total_s": t_build + t_fit,
        "native_chi2_eval_s": t_eval,
        "chi2_hsc": chi2_hsc,
        "chi2_hst": chi2_hst,
        "chi2_hsc_resampled_grid": float(obs_hsc_r.goodness_of_fit(cube)),
        "peak_rss_mb": _peak_mb(),
    }


PEERS_MD = {
    "peer_reference_note": "PEERS.md, measured earlier on this machine kind (reference, not re-measured)",
    "peer_reference_init_s": "13-16",
    "peer_reference_prepare_s": "9-12",
    "peer_reference_fit_1000_steps_s": 17,
    "peer_reference_chi2_hst": 1.18,
    "peer_reference_chi2_hsc": 2.65,
    "peer_reference_direct_renderer_s_per_step": "3-3.7",
}

KEYS = ["n_sources", "import_s", "build_s", "fit_s", "total_s", "peak_rss_mb", "chi2_hsc", "chi2_hst",
        "process_wall_s"]


def main(timeout: float = 2400) -> dict:
    """Run both tools, each in its own process; return the flat results dict."""
    ours = run_child(HERE, "ours", timeout)
    peer = run_child(HERE, "peer", timeout)
    res = {"benchmark": "joint HSC (5 x 50 x 50) + HST (1 x 250 x 250) fit", "peer": "scarlet2 0.5.1"}
    res.update(combine(ours, peer, KEYS))
    res.update(PEERS_MD)
    if "error" in ours:
        res["ours_note"] = "scarlet_xr multi-instrument fit FAILED; see ours_error / ours_log"
    if "error" in peer:
        res["peer_note"] = "scarlet2 path failed here; compare with the peer_reference_* numbers"
    return res


if __name__ == "__main__":
    from bench_hsc import cli

    cli(main, run_ours, run_peer, 2400)
