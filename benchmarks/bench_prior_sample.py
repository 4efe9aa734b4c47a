"""Sampling with the learned morphology prior: the HSC cutout's brightest galaxy.

Recipe (issue 8, "sampling with the learned prior runs"):

1. Fit the HSC scene as ``scarlet-xr fit --prior learned`` does: a point
   source plus free-form galaxies, every free-form image with the shipped
   learned prior.
2. Give the brightest galaxy a 31x31 free-form image (the prior's native
   stamp, so every pixel is seen by the network; cropped from its fitted
   45x45 box, which holds ~96% of its flux and is within the frame) in an
   *unconstrained* pixel basis: the learned prior replaces the positivity
   constraint, whose boundary at zero would give the sampler a funnel.
   Refit to the mode of that model.
3. Sample that galaxy (5 spectrum values + 961 pixels) with NUTS, the other
   sources fixed at the fit. The sampler replaces the prior by its
   consistent "sampling form" (exact line integral of the learned score,
   see ``LearnedMorphologyPrior``), whitens with the dense Hessian at the
   mode and runs ``--chains`` chains.

Reported: split r-hat and bulk ESS of the galaxy's flux per band (arviz-stats),
the largest r-hat over all 961 pixels, divergences, acceptance, step size,
leapfrog steps, wall times. The peer (scarlet2 0.5.1) samples score priors
only through an external prior package that is not installed here, so there
is no peer column.

Usage: ``python benchmarks/bench_prior_sample.py [--warmup W] [--samples S] [--chains C]``
"""

from __future__ import annotations

import argparse
import json
import time


def main(warmup: int = 150, samples: int = 150, chains: int = 2, sigma: float = 0.03, box: int = 31,
         max_tree_depth: int = 6, seed: int = 0) -> dict:
    """Run the benchmark; return a dict of measurements."""
    import equinox as eqx
    import numpy as np
    from arviz_stats import ess, rhat

    import scarlet_xr as sx
    from scarlet_xr.core import FreeFormMorphology, Identity, Parameter
    from scarlet_xr.datasets import hsc_cosmos_35
    from scarlet_xr.nn import learned_prior, with_morphology_prior
    from scarlet_xr.scene import sample_scene

    t_all = time.perf_counter()
    obs, centers = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    kinds = ["point"] + ["free"] * (len(centers) - 1)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=kinds)
    t0 = time.perf_counter()
    fitted = with_morphology_prior(scene, learned_prior()).fit(obs, max_steps=2000)
    t_fit = time.perf_counter() - t0
    flux = fitted.fluxes().sum(1)
    k = int(np.argmax(np.where(np.array(kinds) == "free", flux, -np.inf)))
    img = np.asarray(fitted.sources[k].components[0].morphology.image.value)
    c0, c1 = (img.shape[0] - box) // 2, (img.shape[1] - box) // 2
    crop = img[c0:c0 + box, c1:c1 + box]
    morph = FreeFormMorphology(Parameter(crop, Identity(), prior=learned_prior(sigma=sigma), step=0.03))
    new = type(fitted)(fitted.frame)
    for i, s in enumerate(fitted.sources):
        new.add(eqx.tree_at(lambda s: s.components[0].morphology, s, morph) if i == k else s)
    t0 = time.perf_counter()
    refit = new.fit(obs, max_steps=2000)
    t_refit = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = sample_scene(refit, obs, fix_morphology=False, sources=[k], num_chains=chains, num_warmup=warmup,
                        num_samples=samples, max_dense=4096, max_tree_depth=max_tree_depth, seed=seed,
                        progress=False)
    t_sample = time.perf_counter() - t0
    ds = post["posterior"].to_dataset()
    ss = post["sample_stats"].to_dataset()
    r_flux = np.asarray(rhat(ds["flux"]).values).ravel()
    e_flux = np.asarray(ess(ds["flux"]).values).ravel()
    res = {
        "source": k,
        "free_parameters": int(box * box + len(frame.bands)),
        "prior_sigma": sigma,
        "chains": chains,
        "warmup": warmup,
        "samples": samples,
        "fit_s": round(t_fit, 1),
        "refit_s": round(t_refit, 1),
        "sample_s": round(t_sample, 1),
        "flux_fraction_in_box": float(crop.sum() / img.sum()),
        "flux_fit": [float(v) for v in refit.fluxes()[k]],
        "flux_posterior_mean": [float(v) for v in ds["flux"].mean(("chain", "draw")).values.ravel()],
        "flux_posterior_sd": [float(v) for v in ds["flux"].std(("chain", "draw")).values.ravel()],
        "rhat_flux": [float(v) for v in r_flux],
        "ess_bulk_flux": [float(v) for v in e_flux],
        "max_rhat_flux": float(np.max(r_flux)),
        "divergences": int(ss["diverging"].sum()),
        "mean_acceptance": float(ss["acceptance_rate"].mean()),
        "mean_step_size": float(ss["step_size"].mean()),
        "mean_leapfrog_steps": float(ss["n_steps"].mean()),
        "target": "max r-hat of the flux < 1.05",
        "meets_rhat": bool(np.max(r_flux) < 1.05),
        "peer": "none (scarlet2 needs an external score-prior package for this)",
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--samples", type=int, default=150)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--sigma", type=float, default=0.03)
    a = p.parse_args()
    print(json.dumps(main(a.warmup, a.samples, a.chains, a.sigma), indent=1))
