"""Learned morphology prior vs no prior vs the monotonic constraint on GalSim blends.

``python benchmarks/bench_prior.py [--n 50] [--sigma 0.01]`` simulates low-S/N
blends (3 galaxies, S/N 10-30 each, every neighbour within 2 PSF FWHM of
another), fits each three ways with the same initialisation (free-form
without prior, free-form with :func:`scarlet_xr.nn.learned_prior`,
monotonic free-form) and prints the median morphology error (normalised L2
of each source's observed-frame model against its true noise-free image)
and the median relative flux error (all bands summed). ``main()`` returns
the numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import scarlet_xr as sx
from scarlet_xr.nn import learned_prior, with_morphology_prior
from scarlet_xr.xr import likelihood_for

BANDS = ["g", "r", "i"]
SIZE = 41
FWHM = 2.8
BOX = 21


def simulate_blend(seed: int, *, n_sources: int = 3, noise: float = 1.0, snr_range=(10.0, 30.0),
                   max_sep: float = 2.0 * FWHM, min_sep: float = 0.8 * FWHM):
    """One GalSim blend: returns ``(obs, centers, true_fluxes (n, band), true_images (n, band, y, x))``."""
    import galsim

    rng = np.random.default_rng(seed)
    psf = galsim.Moffat(beta=3.0, fwhm=FWHM)
    c0 = SIZE // 2
    centers = [np.array([c0, c0], float) + rng.uniform(-0.5, 0.5, 2)]
    while len(centers) < n_sources:
        base = centers[rng.integers(len(centers))]
        ang = rng.uniform(0, 2 * np.pi)
        c = base + rng.uniform(min_sep, max_sep) * np.array([np.sin(ang), np.cos(ang)])
        if all(np.hypot(*(c - o)) >= min_sep for o in centers):
            centers.append(c)
    centers = np.array(centers)
    images = np.zeros((n_sources, len(BANDS), SIZE, SIZE))
    for k, (cy, cx) in enumerate(centers):
        hlr = float(rng.uniform(1.0, 2.5))
        if rng.uniform() < 0.5:
            prof = galsim.Sersic(n=float(rng.uniform(0.7, 2.5)), half_light_radius=hlr)
        else:
            fb = float(rng.uniform(0.1, 0.5))
            prof = fb * galsim.DeVaucouleurs(half_light_radius=0.4 * hlr) + (1 - fb) * galsim.Exponential(
                half_light_radius=hlr)
        prof = prof.shear(e=float(rng.uniform(0, 0.5)), beta=float(rng.uniform(0, np.pi)) * galsim.radians)
        sed = np.exp(rng.normal(0, 0.4, len(BANDS)))
        for b in range(len(BANDS)):
            im = galsim.ImageD(SIZE, SIZE, scale=1.0)
            galsim.Convolve(prof.withFlux(float(sed[b])), psf).drawImage(
                im, offset=galsim.PositionD(cx - c0, cy - c0))
            images[k, b] = im.array
        snr = np.sqrt(np.sum(images[k] ** 2)) / noise
        images[k] *= rng.uniform(*snr_range) / snr
    fluxes = images.sum(axis=(2, 3))
    data = images.sum(0) + rng.normal(0, noise, (len(BANDS), SIZE, SIZE))
    psf_img = psf.drawImage(nx=25, ny=25, scale=1.0).array
    obs = sx.make_observation(data, psf=np.broadcast_to(psf_img, (len(BANDS), 25, 25)),
                              variance=np.full(data.shape, noise**2), bands=BANDS, name="sim")
    return obs, centers, fluxes, images


def fit_blend(obs, centers, *, method: str, prior=None, max_steps: int = 1000, e_rel: float = 1e-6):
    """Fit one blend; return ``(fluxes (n, band), observed-frame source models (n, band, y, x))``."""
    frame = sx.frame_from_observations(obs)
    kind = "monotonic" if method == "monotonic" else "free"
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=kind, min_box=BOX, max_box=BOX)
    if method == "learned":
        scene = with_morphology_prior(scene, prior)
    fitted = scene.fit(obs, max_steps=max_steps, e_rel=e_rel)
    model = fitted.model()
    lik = likelihood_for(obs, frame)
    per_source = np.asarray(model.render_sources())
    rendered = np.stack([np.asarray(lik.renderer(c)) for c in per_source])
    return np.asarray(model.fluxes(), float), rendered


def errors(fluxes, rendered, true_fluxes, true_images):
    """Per-source relative flux error and normalised L2 morphology error."""
    ferr = np.abs(fluxes.sum(1) - true_fluxes.sum(1)) / true_fluxes.sum(1)
    merr = np.sqrt(((rendered - true_images) ** 2).sum(axis=(1, 2, 3))) / np.sqrt(
        (true_images**2).sum(axis=(1, 2, 3)))
    return ferr, merr


def main(n: int = 50, *, sigma: float = 0.01, max_steps: int = 1000, seed0: int = 1000, log=None) -> dict:
    """Run the benchmark on ``n`` blends; return medians per method and the settings."""
    prior = learned_prior(sigma=sigma)
    methods = ("none", "learned", "monotonic")
    ferr = {m: [] for m in methods}
    merr = {m: [] for m in methods}
    t0 = time.perf_counter()
    for i in range(n):
        obs, centers, tf, ti = simulate_blend(seed0 + i)
        for m in methods:
            f, r = fit_blend(obs, centers, method=m, prior=prior, max_steps=max_steps)
            fe, me = errors(f, r, tf, ti)
            ferr[m].extend(fe.tolist())
            merr[m].extend(me.tolist())
        if log is not None:
            log(i, {m: (float(np.median(merr[m])), float(np.median(ferr[m]))) for m in methods})
    out = {
        "n_blends": n,
        "n_sources": len(ferr["none"]),
        "sigma": sigma,
        "max_steps": max_steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for m in methods:
        out[f"median_morph_error_{m}"] = float(np.median(merr[m]))
        out[f"median_flux_error_{m}"] = float(np.median(ferr[m]))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--sigma", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=1000)
    a = p.parse_args()
    res = main(a.n, sigma=a.sigma, max_steps=a.max_steps,
               log=lambda i, r: print(f"blend {i}: (morph, flux) medians so far {r}", flush=True))
    print(json.dumps(res, indent=2))
