"""GalSim simulations with known truth, shared by tests (an independent renderer)."""

from __future__ import annotations

import galsim
import numpy as np

import scarlet_xr as sx

BANDS = ["g", "r", "i", "z", "y"]


def galsim_blend(seed=0, *, n_sources=3, size=51, scale=0.2, noise=(0.02, 0.02, 0.025, 0.03, 0.04),
                 flux_range=(60.0, 200.0), separation=(6.0, 10.0)):
    """A blend of Sersic/bulge+disk galaxies in 5 bands; returns (obs, centers, true fluxes, true images).

    True fluxes are the total flux per band of each galaxy (drawn by GalSim with
    its PSF and pixel response); noise is Gaussian with the given sigma per band.
    """
    rng = np.random.default_rng(seed)
    fwhm = np.linspace(0.9, 0.65, len(BANDS))
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in fwhm]
    c0 = size / 2 - 0.5
    centers = [np.array([c0, c0])]
    while len(centers) < n_sources:
        ang = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(*separation)
        base = centers[rng.integers(len(centers))]
        c = base + d * np.array([np.sin(ang), np.cos(ang)])
        if np.all(np.abs(c - c0) < size / 2 - 10) and all(np.hypot(*(c - o)) > separation[0] for o in centers):
            centers.append(c)
    centers = np.array(centers) + rng.uniform(-0.5, 0.5, (n_sources, 2))
    images = np.zeros((n_sources, len(BANDS), size, size))
    fluxes = np.zeros((n_sources, len(BANDS)))
    for k, (cy, cx) in enumerate(centers):
        total = rng.uniform(*flux_range)
        sed = np.exp(rng.normal(0, 0.3, len(BANDS)))
        sed /= sed.sum() / len(BANDS)
        hlr = rng.uniform(0.3, 0.6)
        n = rng.choice([0.8, 1.0, 1.5])
        prof = galsim.Sersic(n=n, half_light_radius=hlr).shear(
            e1=rng.uniform(-0.3, 0.3), e2=rng.uniform(-0.3, 0.3)
        )
        for b in range(len(BANDS)):
            f = total * sed[b] / len(BANDS)
            obj = galsim.Convolve(prof.withFlux(f), psfs[b])
            im = galsim.ImageD(size, size, scale=scale)
            off = galsim.PositionD(cx - c0, cy - c0)
            obj.drawImage(im, offset=off)
            images[k, b] = im.array
            fluxes[k, b] = f
    psf_img = np.stack([p.drawImage(nx=41, ny=41, scale=scale).array for p in psfs])
    noise = np.asarray(noise)
    data = images.sum(0) + rng.normal(0, 1, (len(BANDS), size, size)) * noise[:, None, None]
    var = np.broadcast_to(noise[:, None, None] ** 2, data.shape)
    obs = sx.make_observation(data, variance=var, psf=psf_img, bands=BANDS, name="sim")
    return obs, centers, fluxes, images


def snr(images, noise):
    """Optimal S/N of each source per band: sqrt(sum(img^2) / sigma^2)."""
    noise = np.asarray(noise)
    return np.sqrt((images**2).sum(axis=(2, 3))) / noise[None, :]
