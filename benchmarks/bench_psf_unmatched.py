"""Accuracy benchmark: scarlet's PSF-unmatched simulation, scarlet_xr vs scarlet2 0.5.1.

The simulation (``tests/data/psf_unmatched_sim.npz``, from the scarlet
project: 6 bands, 40 x 59 px, a different PSF per band) ships truth images
per catalog row; the true flux of a source in a band is the sum of the
``intensity_<band>`` images of all rows sharing its ``index`` (5 sources:
3 stars, 2 galaxies, one of them with two components).

The file has no variance plane; both tools get the same noise estimate, a
sigma-clipped standard deviation of each band (constant weight per band).

- ours: the recipe of ``tests/test_psf_unmatched.py``: point sources for
  ``is_star``, ``"symmetric"`` (monotonic, 180-degree symmetric) otherwise,
  default ``scene.fit``.
- scarlet2: its documented recipe with stars as ``PointSource`` (spectrum
  from ``init.pixel_spectrum(correct_psf=True)``) and galaxies as
  ``Source(center, *init.from_gaussian_moments(obs, center))``; spectra
  ``positive`` (``relative_step`` 0.05), morphologies ``unit_interval``
  (``relative_step`` 1e-3), star centres free (step 0.1 px, as in
``bench_hsc.py``); ``fit(max_iter=1000, e_rel=1e-4)``. The flux of a
  source is the sum of its model.

Reported: median (over sources and bands) of ``|flux / truth - 1|``, the
per-source errors, and wall time of build + fit (fresh process each).

Run: ``python benchmarks/bench_psf_unmatched.py [--json out.json]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from bench_hsc import ROOT, _peak_mb, combine, peer_source, run_child  # noqa: E402

DATA = ROOT / "tests" / "data" / "psf_unmatched_sim.npz"


def load_sim():
    """Images, PSFs, band names, centres (y, x), star flags, truth (source, band), sigma (band)."""
    import numpy as np
    from astropy.stats import sigma_clipped_stats

    with np.load(DATA, allow_pickle=False) as f:
        img, psf, cat = f["images"], f["psfs"], f["catalog"]
        bands = [str(b) for b in f["filters"]]
    truth, centers, star = [], [], []
    for i in np.unique(cat["index"]):
        rows = cat[cat["index"] == i]
        truth.append([sum(float(r["intensity_" + b].sum()) for r in rows) for b in bands])
        centers.append((float(rows[0]["y"]), float(rows[0]["x"])))
        star.append(bool(rows[0]["is_star"]))
    sigma = np.array([sigma_clipped_stats(im, sigma=3)[2] for im in img])
    return img, psf, bands, np.array(centers), np.array(star), np.array(truth), sigma


def _summary(flux, truth, star, t_build, t_fit) -> dict:
    import numpy as np

    rel = np.abs(np.asarray(flux) / truth - 1)
    return {
        "median_rel_flux_error": float(np.median(rel)),
        "median_rel_flux_error_stars": float(np.median(rel[star])),
        "median_rel_flux_error_galaxies": float(np.median(rel[~star])),
        "max_rel_flux_error": float(np.max(rel)),
        "per_source_median_rel_error": [round(float(x), 4) for x in np.median(rel, axis=1)],
        "build_s": t_build,
        "fit_s": t_fit,
        "total_s": t_build + t_fit,
        "peak_rss_mb": _peak_mb(),
    }


def run_ours() -> dict:
    """scarlet_xr: point sources for stars, symmetric monotonic galaxies, default fit."""
    import numpy as np

    import scarlet_xr as sx

    img, psf, bands, centers, star, truth, sigma = load_sim()
    t0 = time.perf_counter()
    var = np.broadcast_to(sigma[:, None, None] ** 2, img.shape)
    obs = sx.make_observation(img, variance=var, psf=psf, bands=bands, name="sim")
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=["point" if s else "symmetric" for s in star])
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = scene.fit(obs)
    t_fit = time.perf_counter() - t0
    res = _summary(fitted.fluxes(), truth, star, t_build, t_fit)
    res.update(tool=f"scarlet_xr {sx.__version__}", steps=int(fitted.history.num_steps))
    return res


def run_peer() -> dict:
    """scarlet2 0.5.1: documented recipe, stars as PointSource."""
    import jax.numpy as jnp
    import numpy as np
    import scarlet2 as sc2
    from numpyro.distributions import constraints

    img, psf, bands, centers, star, truth, sigma = load_sim()

    def spec_step(x, *args):
        return sc2.relative_step(x, factor=0.05)

    def morph_step(x, *args):
        return sc2.relative_step(x, factor=1e-3)

    t0 = time.perf_counter()
    weights = np.broadcast_to(1 / sigma[:, None, None] ** 2, img.shape)
    obs = sc2.Observation(jnp.asarray(img), weights=jnp.asarray(weights),
                          psf=sc2.ArrayPSF(jnp.asarray(psf)), channels=bands)
    frame = sc2.Frame.from_observations(obs)
    with sc2.Scene(frame) as scene:
        for c, s in zip(centers, star, strict=True):
            center = jnp.asarray(c)
            if s:
                sc2.PointSource(center, sc2.init.pixel_spectrum(obs, center, correct_psf=True))
            else:
                peer_source(sc2, obs, center)
    with sc2.Parameters(scene):
        for i, (src, s) in enumerate(zip(scene.sources, star, strict=True)):
            sc2.Parameter(src.spectrum, name=f"spectrum:{i}", constraint=constraints.positive,
                          stepsize=spec_step)
            if not s:
                sc2.Parameter(src.morphology, name=f"morph:{i}", constraint=constraints.unit_interval,
                              stepsize=morph_step)
            else:
                sc2.Parameter(src.center, name=f"center:{i}", stepsize=0.1)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = scene.fit(obs, max_iter=1000, e_rel=1e-4, progress_bar=False)
    t_fit = time.perf_counter() - t0
    flux = np.stack([np.asarray(src()).sum(axis=(-2, -1)) for src in fitted.sources])
    res = _summary(flux, truth, star, t_build, t_fit)
    res.update(tool=f"scarlet2 {sc2.__version__}")
    return res


KEYS = ["median_rel_flux_error", "median_rel_flux_error_stars", "median_rel_flux_error_galaxies",
        "max_rel_flux_error", "build_s", "fit_s", "total_s", "peak_rss_mb"]


def main(timeout: float = 1800) -> dict:
    """Run both tools, each in its own process; return the flat results dict."""
    ours = run_child(HERE, "ours", timeout)
    peer = run_child(HERE, "peer", timeout)
    res = {"benchmark": "psf_unmatched_sim: 5 sources, 6 bands, truth per source",
           "peer": "scarlet2 0.5.1", "peers_md_peer_median_rel_flux_error": 0.43}
    res.update(combine(ours, peer, KEYS))
    return res


if __name__ == "__main__":
    from bench_hsc import cli

    cli(main, run_ours, run_peer, 1800)
