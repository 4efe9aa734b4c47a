"""Train the learned morphology prior from scratch on GalSim stamps.

Run ``python -m scarlet_xr.nn.train --out PATH`` to write ``PATH.eqx``
(weights, :func:`equinox.tree_serialise_leaves`) and ``PATH.json`` (the
training settings and final loss). The defaults train on CPU in well under
30 minutes; the package ships the result of such a run in
``scarlet_xr/data/morphology_prior.{eqx,json}``.

Training set: noise-free GalSim galaxies on ``size x size`` stamps (pixel
units): half single Sersic (index 0.5-4), half bulge (de Vaucouleurs) + disk
(exponential) with bulge fraction 0.1-0.7; half-light radius 0.7-7 pixels,
ellipticity |e| < 0.7 with uniform orientation, a sub-pixel centre offset in
[-0.5, 0.5], convolved with a round Gaussian of sigma 0.5-1.2 pixels (the
model-frame PSF of free-form morphologies), normalised to peak 1. The model
is a denoiser trained with the EDM loss at log-uniform noise levels.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._network import SIGMA_DATA, ScoreNet

logger = logging.getLogger(__name__)

__all__ = ["make_stamps", "train", "main", "DEFAULTS"]

DEFAULTS = {
    "size": 31,
    "width": 16,
    "dilations": [1, 2, 4, 8, 4, 2, 1],
    "n_stamps": 3000,
    "steps": 1500,
    "batch": 32,
    "learning_rate": 2e-3,
    "sigma_min": 0.01,
    "sigma_max": 1.0,
    "seed": 0,
}


def make_stamps(n: int, size: int = 31, *, seed: int = 0) -> np.ndarray:
    """Draw ``n`` noise-free, peak-normalised GalSim galaxy stamps.

    Parameters
    ----------
    n : int
        Number of stamps.
    size : int
        Stamp size in pixels (odd).
    seed : int
        Random seed.

    Returns
    -------
    numpy.ndarray (n, size, size)
        Stamps with maximum 1, galaxy centred on the central pixel within
        half a pixel.
    """
    import galsim

    if size % 2 == 0:
        raise ValueError(f"stamp size must be odd; got {size}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        hlr = float(np.exp(rng.uniform(np.log(0.7), np.log(7.0))))
        if rng.uniform() < 0.5:
            prof = galsim.Sersic(n=float(rng.uniform(0.5, 4.0)), half_light_radius=hlr,
                                 trunc=0.0)
        else:
            fb = float(rng.uniform(0.1, 0.7))
            bulge = galsim.DeVaucouleurs(half_light_radius=hlr * rng.uniform(0.2, 0.6))
            disk = galsim.Exponential(half_light_radius=hlr)
            prof = fb * bulge + (1 - fb) * disk
        e = float(rng.uniform(0.0, 0.7))
        beta = float(rng.uniform(0, np.pi)) * galsim.radians
        prof = prof.shear(e=e, beta=beta)
        psf = galsim.Gaussian(sigma=float(rng.uniform(0.5, 1.2)))
        img = galsim.ImageD(size, size, scale=1.0)
        off = galsim.PositionD(*rng.uniform(-0.5, 0.5, 2))
        galsim.Convolve(prof, psf).drawImage(img, offset=off, method="no_pixel")
        a = img.array
        out[i] = a / a.max()
    return out


def _loss(net, x, sigma, noise):
    xn = x + sigma[:, None, None] * noise
    d = jax.vmap(net.denoise)(xn, sigma)
    sd2 = SIGMA_DATA**2
    weight = (sigma**2 + sd2) / (sigma * SIGMA_DATA) ** 2
    return jnp.mean(weight * jnp.mean((d - x) ** 2, axis=(1, 2)))


def train(settings: dict | None = None, *, log=None):
    """Train a :class:`~scarlet_xr.nn.ScoreNet` and return ``(net, record)``.

    Parameters
    ----------
    settings : dict, optional
        Overrides of :data:`DEFAULTS`.
    log : callable, optional
        Called as ``log(step, loss)`` every 100 steps.

    Returns
    -------
    ScoreNet
    dict
        The settings plus ``final_loss``, ``train_seconds`` and versions.
    """
    import optax

    cfg = dict(DEFAULTS)
    unknown = set(settings or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; expected keys of {sorted(cfg)}")
    cfg.update(settings or {})
    t0 = time.perf_counter()
    stamps = jnp.asarray(make_stamps(cfg["n_stamps"], cfg["size"], seed=cfg["seed"]))
    t_data = time.perf_counter() - t0
    key = jax.random.PRNGKey(cfg["seed"])
    key, k0 = jax.random.split(key)
    net = ScoreNet(cfg["size"], width=cfg["width"], dilations=tuple(cfg["dilations"]), key=k0)
    sched = optax.cosine_decay_schedule(cfg["learning_rate"], cfg["steps"], alpha=0.05)
    opt = optax.adam(sched)
    state = opt.init(eqx.filter(net, eqx.is_inexact_array))
    lo, hi = np.log(cfg["sigma_min"]), np.log(cfg["sigma_max"])

    @eqx.filter_jit
    def step(net, state, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        idx = jax.random.randint(k1, (cfg["batch"],), 0, stamps.shape[0])
        x = stamps[idx]
        # random flips/transposes: the prior should not prefer any orientation
        x = jnp.where(jax.random.bernoulli(k4, 0.5, (cfg["batch"], 1, 1)), x, jnp.swapaxes(x, 1, 2))
        sigma = jnp.exp(jax.random.uniform(k2, (cfg["batch"],), minval=lo, maxval=hi))
        noise = jax.random.normal(k3, x.shape)
        loss, g = eqx.filter_value_and_grad(_loss)(net, x, sigma, noise)
        upd, state = opt.update(g, state, eqx.filter(net, eqx.is_inexact_array))
        return eqx.apply_updates(net, upd), state, loss

    losses = []
    for i in range(cfg["steps"]):
        key, k = jax.random.split(key)
        net, state, loss = step(net, state, k)
        losses.append(float(loss))
        if log is not None and (i + 1) % 100 == 0:
            log(i + 1, float(np.mean(losses[-100:])))
    record = dict(cfg)
    record.update(
        final_loss=float(np.mean(losses[-100:])),
        data_seconds=round(t_data, 1),
        train_seconds=round(time.perf_counter() - t0 - t_data, 1),
        jax_version=jax.__version__,
        equinox_version=eqx.__version__,
        sigma_data=SIGMA_DATA,
        format="equinox.tree_serialise_leaves of ScoreNet(size, width=, dilations=)",
    )
    return net, record


def save(net, record: dict, path) -> tuple[Path, Path]:
    """Write ``path.eqx`` (weights) and ``path.json`` (settings); return both paths."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".eqx", ".json") else path
    weights, meta = stem.with_suffix(".eqx"), stem.with_suffix(".json")
    weights.parent.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(weights, net)
    meta.write_text(json.dumps(record, indent=2) + "\n")
    return weights, meta


def main(argv=None) -> int:
    """Command line: ``python -m scarlet_xr.nn.train --out PATH [--steps N] ...``."""
    p = argparse.ArgumentParser(prog="python -m scarlet_xr.nn.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output stem; writes STEM.eqx and STEM.json")
    for k, v in DEFAULTS.items():
        if isinstance(v, list):
            continue
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    args = p.parse_args(argv)
    settings = {k: getattr(args, k) for k in DEFAULTS if not isinstance(DEFAULTS[k], list)}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    net, record = train(settings, log=lambda i, loss: logger.info("step %d: loss %.4f", i, loss))
    w, m = save(net, record, args.out)
    logger.info("wrote %s and %s (final loss %.4f, %.0f s training)",
                w, m, record["final_loss"], record["train_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
