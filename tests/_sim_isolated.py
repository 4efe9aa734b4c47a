"""Isolated stars and Sersic galaxies drawn with GalSim, with truth (flux, centre, shape)."""

from __future__ import annotations

import galsim
import numpy as np

import scarlet_xr as sx

BANDS = ["g", "r", "i"]
SCALE = 0.2  # arcsec per pixel
NOISE = np.array([0.02, 0.025, 0.03])


def isolated(seed: int, kind: str, snr: float, *, size: int = 41, hlr=(0.4, 0.8)):
    """One source at a random sub-pixel position with total optimal S/N ``snr`` (all bands).

    Returns
    -------
    obs : Dataset
    truth : dict
        ``flux (band,)``, ``center (y, x)`` in pixels, and for galaxies
        ``hlr`` (arcsec), ``e1``, ``e2`` (distortion, GalSim convention).
    """
    rng = np.random.default_rng(seed)
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in (0.85, 0.75, 0.7)]
    c0 = (size - 1) / 2
    center = np.array([c0, c0]) + rng.uniform(-0.5, 0.5, 2)
    sed = np.exp(rng.normal(0, 0.3, len(BANDS)))
    truth = {"center": center}
    if kind == "star":
        prof = galsim.DeltaFunction()
    else:
        r = rng.uniform(*hlr)
        e1, e2 = rng.uniform(-0.4, 0.4, 2)
        n = rng.choice([0.8, 1.0, 1.5, 2.5])
        prof = galsim.Sersic(n=n, half_light_radius=r).shear(galsim.Shear(e1=e1, e2=e2))
        truth.update(hlr=r, e1=e1, e2=e2, n=n)
    unit = np.zeros((len(BANDS), size, size))
    for b, psf in enumerate(psfs):
        im = galsim.ImageD(size, size, scale=SCALE)
        galsim.Convolve(prof.withFlux(1.0), psf).drawImage(
            im, offset=galsim.PositionD(center[1] - c0, center[0] - c0))
        unit[b] = im.array
    # scale the SED so the optimal S/N summed over bands is `snr`
    per_band = np.sqrt((unit**2).sum(axis=(1, 2))) / NOISE
    amp = snr / np.sqrt(np.sum((sed * per_band) ** 2))
    flux = amp * sed
    data = unit * flux[:, None, None] + rng.normal(0, 1, unit.shape) * NOISE[:, None, None]
    psf_img = np.stack([p.drawImage(nx=31, ny=31, scale=SCALE).array for p in psfs])
    var = np.broadcast_to(NOISE[:, None, None] ** 2, data.shape)
    obs = sx.make_observation(data, variance=var, psf=psf_img, bands=BANDS, name="iso")
    truth["flux"] = flux
    return obs, truth


def colour_gradient_galaxy(seed: int, snr: float = 400.0, size: int = 61):
    """A bright bulge (de Vaucouleurs, red) + disk (exponential, blue) galaxy: a colour gradient.

    Returns
    -------
    obs : Dataset
    center : (y, x) in pixels
    flux : (band,) total flux
    """
    rng = np.random.default_rng(seed)
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in (0.85, 0.75, 0.7)]
    c0 = (size - 1) / 2
    center = np.array([c0, c0]) + rng.uniform(-0.5, 0.5, 2)
    beta = rng.uniform(0, np.pi) * galsim.radians
    bulge = galsim.DeVaucouleurs(half_light_radius=0.3).shear(q=0.8, beta=beta)
    disk = galsim.Exponential(half_light_radius=1.0).shear(q=0.5, beta=beta)
    sed_bulge, sed_disk = np.array([0.2, 0.6, 1.0]), np.array([1.0, 0.9, 0.7])
    unit = np.zeros((2, len(BANDS), size, size))
    for b, psf in enumerate(psfs):
        for j, prof in enumerate((bulge, disk)):
            im = galsim.ImageD(size, size, scale=SCALE)
            galsim.Convolve(prof.withFlux(1.0), psf).drawImage(
                im, offset=galsim.PositionD(center[1] - c0, center[0] - c0))
            unit[j, b] = im.array
    image = sed_bulge[:, None, None] * unit[0] + sed_disk[:, None, None] * unit[1]
    amp = snr / np.sqrt(np.sum((image / NOISE[:, None, None]) ** 2))
    data = amp * image + rng.normal(0, 1, image.shape) * NOISE[:, None, None]
    psf_img = np.stack([p.drawImage(nx=31, ny=31, scale=SCALE).array for p in psfs])
    var = np.broadcast_to(NOISE[:, None, None] ** 2, data.shape)
    obs = sx.make_observation(data, variance=var, psf=psf_img, bands=BANDS, name="iso")
    return obs, center, amp * (sed_bulge + sed_disk)
