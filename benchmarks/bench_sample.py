"""Posterior sampling benchmark: scarlet_xr's NUTS vs scarlet2 0.5.1, plus calibration.

Three parts, each in its own process (fresh JAX, fresh compile caches):

``hsc_all`` (ours only)
    The HSC COSMOS cutout, 7 sources fitted as in the README example, then
    ``sample_scene`` of the spectra and centres of all sources (morphologies
    fixed at the fit), 4 chains x (200 warm-up + 500 draws), default
    precision. Reports wall time (compilation included), the worst bulk ESS
    and r-hat over all fluxes, and ESS per second.
``star`` (ours and peer)
    One star's spectrum and centre on the same cutout, everything else fixed
    at the fit, with scarlet2's documented sampling recipe (its sampling
    how-to: ``Uniform(0, 500)`` spectrum prior, ``Normal(catalog, 0.1)``
    centre prior, ``sample(num_warmup=100, num_samples=1000)``, one chain)
    run with ``JAX_ENABLE_X64=1`` as its docs require. Ours: the same budget
    (one chain, 100 + 1000) with its default priors. Metric: effective
    samples per second of the worst of the 7 parameters (ESS by
    ``arviz_stats``, time = the sampling call, compilation included).
``calibration`` (ours only)
    60 simulated noisy scenes (a star and a round Gaussian galaxy, 2 bands,
    rendered by our own renderer, independent white noise, random fluxes and
    positions); fit, then sample; the 68% equal-tailed interval of each of the
    4 fluxes per scene should cover the truth in 68% +- 3 binomial sigma.

Run standalone: ``python benchmarks/bench_sample.py`` (prints JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

N_CAL = 60


def _load_npz():
    from scarlet_xr.datasets import hsc_cosmos_35

    return hsc_cosmos_35()


def _fit_hsc():
    import scarlet_xr as sx

    obs, centers = _load_npz()
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=["point"] + ["free"] * 6)
    return scene.fit(obs), obs


def run_hsc_all() -> dict:
    """All 7 sources' spectra and centres on the HSC cutout."""
    from scarlet_xr.scene import sample_scene, summarize

    fitted, obs = _fit_hsc()
    t0 = time.perf_counter()
    post = sample_scene(fitted, obs, num_warmup=200, num_samples=500, num_chains=4, seed=0,
                        progress=False)
    dt = time.perf_counter() - t0
    flux = summarize(post, var_names=["flux"])
    allv = summarize(post)
    return {
        "hsc_all_time_s": dt,
        "hsc_all_num_params": 49,
        "hsc_all_min_ess_bulk_flux": float(flux["ess_bulk"].min()),
        "hsc_all_max_rhat_flux": float(flux["r_hat"].max()),
        "hsc_all_min_ess_bulk_any": float(allv["ess_bulk"].min()),
        "hsc_all_max_rhat_any": float(allv["r_hat"].max()),
        "hsc_all_divergences": int(post["sample_stats"]["diverging"].sum()),
        "hsc_all_ess_per_s_worst": float(allv["ess_bulk"].min()) / dt,
    }


def run_ours_star() -> dict:
    """Ours: the star's spectrum and centre, one chain, 100 + 1000."""
    from scarlet_xr.scene import sample_scene, summarize

    fitted, obs = _fit_hsc()
    t0 = time.perf_counter()
    post = sample_scene(fitted, obs, sources=[0], num_warmup=100, num_samples=1000, num_chains=1,
                        seed=0, progress=False)
    dt = time.perf_counter() - t0
    s = summarize(post, var_names=["flux", "y", "x"])
    return {"time_s": dt, "min_ess": float(s["ess_bulk"].min()),
            "ess_per_s": float(s["ess_bulk"].min()) / dt,
            "flux": post["posterior"]["flux"].mean(("chain", "draw")).values.ravel().tolist()}


def run_peer_star() -> dict:
    """scarlet2 0.5.1: fit as in its docs, then sample the star as in its sampling how-to."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro.distributions as dist
    import scarlet2 as sc2
    from arviz_base import from_dict
    from arviz_stats import summary
    from numpyro.distributions import constraints

    if not jax.config.jax_enable_x64:
        raise RuntimeError("run the peer with JAX_ENABLE_X64=1")
    from scarlet_xr.datasets import hsc_cosmos_35

    obs_x, centers = hsc_cosmos_35()
    images = obs_x["data"].values.astype(float)
    weights = obs_x["weight"].values.astype(float)
    psfs = obs_x["psf"].values.astype(float)
    filters = [str(b) for b in obs_x["band"].values]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_hsc import peer_hsc_scene

    obs, scene = peer_hsc_scene(sc2, images, weights, psfs, filters, centers)
    with sc2.Parameters(scene):
        for i, src in enumerate(scene.sources):
            sc2.Parameter(src.spectrum, name=f"spectrum:{i}", constraint=constraints.positive,
                          stepsize=lambda x, *a: sc2.relative_step(x, factor=0.05))
            if i > 0:
                sc2.Parameter(src.morphology, name=f"morph:{i}", constraint=constraints.unit_interval,
                              stepsize=lambda x, *a: sc2.relative_step(x, factor=1e-3))
            else:
                sc2.Parameter(src.center, name="center:0", stepsize=0.1)
    fitted = scene.fit(obs, max_iter=1000, e_rel=1e-4, progress_bar=False)
    nb = len(filters)
    with sc2.Parameters(fitted):
        sc2.Parameter(fitted.sources[0].spectrum, name="spectrum",
                      prior=dist.Uniform(jnp.zeros(nb), 500 * jnp.ones(nb)).to_event(1))
        sc2.Parameter(fitted.sources[0].center, name="center",
                      prior=dist.Normal(jnp.asarray(centers[0]), 0.1).to_event(1))
    t0 = time.perf_counter()
    mcmc = sc2.sample(fitted, obs, num_warmup=100, num_samples=1000, progress_bar=False)
    dt = time.perf_counter() - t0
    smp = mcmc.get_samples(group_by_chain=True)
    tree = from_dict({"posterior": {k: np.asarray(v) for k, v in smp.items()}})
    s = summary(tree, round_to="none")
    return {"time_s": dt, "min_ess": float(s["ess_bulk"].min()),
            "ess_per_s": float(s["ess_bulk"].min()) / dt,
            "spectrum": np.asarray(smp["spectrum"]).mean((0, 1)).tolist()}


def _simulate(rng, star_flux, gal_flux, noise=0.05):
    import numpy as np

    import scarlet_xr as sx
    from scarlet_xr.core import (
        GaussianMorphology,
        PointSourceMorphology,
        SceneModel,
        Source,
        Spectrum,
        collecting,
        gaussian_psf_image,
    )
    from scarlet_xr.xr import likelihood_for

    bands, shape = ["g", "r"], (25, 25)
    frame = sx.Frame(bands, shape)
    psf = np.stack([gaussian_psf_image(1.4, 15), gaussian_psf_image(1.7, 15)])
    sc = np.array([10.3, 9.6]) + rng.uniform(-0.5, 0.5, 2)
    gc = np.array([14.6, 15.2]) + rng.uniform(-0.5, 0.5, 2)
    w = np.full((2,) + shape, 1 / noise**2)
    lik = likelihood_for(sx.make_observation(np.zeros((2,) + shape), psf=psf, weights=w, bands=bands),
                         frame)
    with collecting(lambda s: None):
        truth = SceneModel([Source(sc, Spectrum(star_flux), PointSourceMorphology(frame.psf)),
                            Source(gc, Spectrum(gal_flux), GaussianMorphology(1.6, shape=15))],
                           frame.cube_shape)
    clean = np.asarray(lik.renderer(truth()))
    obs = sx.make_observation(clean + noise * rng.standard_normal(clean.shape), psf=psf, weights=w,
                              bands=bands, name="sim")
    return frame, obs, sc, gc


def run_calibration(n_scenes: int = N_CAL) -> dict:
    """Coverage of 68% flux intervals over simulated scenes with known truth."""
    import numpy as np

    import scarlet_xr as sx
    from scarlet_xr.core import (
        GaussianMorphology,
        Interval,
        LogPositive,
        Parameter,
        PointSourceMorphology,
        Source,
        Spectrum,
    )
    from scarlet_xr.scene import sample_scene

    rng = np.random.default_rng(2026)
    hits, rhat = [], []
    t0 = time.perf_counter()
    for _ in range(n_scenes):
        star, gal = rng.uniform(1.5, 8.0, 2), rng.uniform(1.5, 8.0, 2)
        frame, obs, sc, gc = _simulate(rng, star, gal)
        with sx.Scene(frame) as scene:
            Source(sc + rng.normal(0, 0.2, 2), Spectrum([1.0, 1.0]), PointSourceMorphology(frame.psf))
            Source(gc + rng.normal(0, 0.2, 2), Spectrum([1.0, 1.0]),
                   GaussianMorphology(Parameter(1.6, LogPositive(), fixed=True),
                                      Parameter([0.0, 0.0], Interval(-0.7, 0.7), fixed=True), shape=15))
        fitted = scene.fit(obs, max_steps=300)
        post = sample_scene(fitted, obs, num_warmup=200, num_samples=300, num_chains=2,
                            seed=int(rng.integers(1 << 30)), progress=False)
        f = post["posterior"]["flux"].values
        lo, hi = np.percentile(f.reshape(-1, 2, 2), [16, 84], axis=0)
        hits.extend(((lo <= np.stack([star, gal])) & (np.stack([star, gal]) <= hi)).ravel().tolist())
        from arviz_stats import rhat as _rhat

        rhat.append(float(np.max(np.asarray(_rhat(post["posterior"]["flux"].to_dataset())["flux"]))))
    n, k = len(hits), int(np.sum(hits))
    half = 3 * np.sqrt(n * 0.68 * 0.32)
    return {
        "calibration_scenes": n_scenes,
        "calibration_intervals": n,
        "calibration_coverage_68": k / n,
        "calibration_band_lo": (0.68 * n - half) / n,
        "calibration_band_hi": (0.68 * n + half) / n,
        "calibration_pass": bool(abs(k - 0.68 * n) <= half),
        "calibration_max_rhat": float(np.max(rhat)),
        "calibration_time_s": time.perf_counter() - t0,
    }


def _child(part: str, x64: bool = False) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1")
    if x64:
        env["JAX_ENABLE_X64"] = "1"
    else:
        env.pop("JAX_ENABLE_X64", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", part], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> dict:
    """Run all parts, each in a fresh process; return a flat dict of results."""
    res = {}
    res.update(_child("hsc_all"))
    ours = _child("ours_star")
    peer = _child("peer_star", x64=True)
    for name, d in (("ours", ours), ("peer", peer)):
        for k, v in d.items():
            if k in ("time_s", "min_ess", "ess_per_s"):
                res[f"{name}_star_{k}"] = v
            elif k == "error":
                res[f"{name}_star_error"] = v
    if "ours_star_ess_per_s" in res and "peer_star_ess_per_s" in res:
        res["ratio_star_ess_per_s"] = res["ours_star_ess_per_s"] / res["peer_star_ess_per_s"]
    res.update(_child("calibration"))
    return res


_PARTS = {"hsc_all": run_hsc_all, "ours_star": run_ours_star, "peer_star": run_peer_star,
          "calibration": run_calibration}

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_PARTS[sys.argv[2]]()))
    else:
        print(json.dumps(main(), indent=2))
