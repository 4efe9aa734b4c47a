"""GalSim simulation of one sky seen by a ground (5 bands) and a space (1 band) instrument.

Both images are drawn from the same galaxies placed in sky coordinates; the
space image is rotated and covers only part of the ground image. Each
instrument has its own flux units (``flux_ground``, ``flux_space``).
"""

from __future__ import annotations

import galsim
import numpy as np
from astropy.wcs import WCS

import scarlet_xr as sx

RA0, DEC0 = 150.1, 2.2
GROUND_BANDS = ["g", "r", "i", "z", "y"]


def _tan_wcs(scale_arcsec, theta, shape, center_offset_arcsec=(0.0, 0.0)):
    """North-up (theta=0) TAN WCS with pixel (ny-1)/2, (nx-1)/2 at RA0, DEC0 + offset."""
    c, s = np.cos(theta), np.sin(theta)
    cd = scale_arcsec / 3600 * np.array([[-c, s], [s, c]])  # x -> east (RA decreasing with x)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    dra = center_offset_arcsec[1] / 3600 / np.cos(np.deg2rad(DEC0))
    ddec = center_offset_arcsec[0] / 3600
    w.wcs.crval = [RA0 + dra, DEC0 + ddec]
    w.wcs.crpix = [(shape[1] - 1) / 2 + 1, (shape[0] - 1) / 2 + 1]
    w.wcs.cd = cd
    w.wcs.set()
    return w


def _galsim_wcs(w):
    cd = w.wcs.cd * 3600
    return galsim.JacobianWCS(cd[0, 0], cd[0, 1], cd[1, 0], cd[1, 1])


def _draw(gals, w, shape, psf, fluxes, rng, sigma):
    gw = _galsim_wcs(w)
    img = galsim.ImageD(shape[1], shape[0], wcs=gw)
    for gal, (ra, dec), f in zip(gals, [g[1] for g in gals], fluxes, strict=True):
        x, y = w.world_to_pixel_values(ra, dec)
        obj = galsim.Convolve(gal[0].withFlux(float(f)), psf)
        obj.drawImage(image=img, add_to_image=True, center=galsim.PositionD(float(x) + 1, float(y) + 1))
    truth = img.array.copy()
    noisy = truth + rng.normal(0.0, sigma, truth.shape)
    pimg = psf.drawImage(nx=41, ny=41, wcs=gw).array
    return noisy, truth, pimg / pimg.sum()


def simulate(seed: int = 3, space_lam_over_diam: float = 0.11):
    """Simulate the two observations and the truth.

    ``space_lam_over_diam`` (arcsec) sets the space PSF (an Airy); 0.08 makes it
    undersampled on its 0.05" pixels (core narrower than the default model PSF).

    Returns
    -------
    ground, space : xarray.Dataset
        Observations named ``"ground"`` (5 bands, 0.2"/px, 24 x 24) and
        ``"space"`` (1 band ``"F814W"``, 0.05"/px, 64 x 64, rotated by a
        random angle, covering the blend but not the isolated source).
    truth : dict
        ``ra``, ``dec`` (deg), ``flux_ground`` (source, 5), ``flux_space``
        (source,), ``blended`` (bool per source), ``theta`` (rad).
    """
    rng = np.random.default_rng(seed)
    theta = float(rng.uniform(0, 2 * np.pi))
    # sky positions (arcsec from the ground image centre): a blended pair and an isolated galaxy
    offsets = np.array([[0.25, -0.35], [-0.2, 0.3], [1.5, 1.3]])  # (north, east)
    hlr = [0.35, 0.25, 0.3]
    gals = []
    ra, dec = [], []
    for (dn, de), r in zip(offsets, hlr, strict=True):
        ra.append(RA0 + de / 3600 / np.cos(np.deg2rad(DEC0)))  # east = +RA
        dec.append(DEC0 + dn / 3600)
    ra, dec = np.array(ra), np.array(dec)
    shapes = [(0.2, 0.1), (-0.15, 0.2), (0.0, -0.2)]
    for i, r in enumerate(hlr):
        gal = galsim.Exponential(half_light_radius=r).shear(g1=shapes[i][0], g2=shapes[i][1])
        gals.append((gal, (ra[i], dec[i])))
    # SEDs: the pair has contrasting colours
    sed = np.array(
        [
            [1.0, 1.3, 1.6, 1.8, 1.9],
            [2.0, 1.6, 1.2, 1.0, 0.9],
            [1.0, 1.1, 1.2, 1.2, 1.2],
        ]
    )
    flux_ground = 600.0 * sed
    flux_space = np.array([900.0, 700.0, 800.0])

    wg = _tan_wcs(0.2, 0.0, (24, 24))
    data, psfs = [], []
    sigmas = np.array([1.0, 0.8, 0.8, 1.0, 1.2])
    fwhm = np.linspace(0.9, 0.6, 5)
    for b in range(5):
        psf = galsim.Moffat(beta=3.0, fwhm=float(fwhm[b]))
        d, _, p = _draw(gals, wg, (24, 24), psf, flux_ground[:, b], rng, sigmas[b])
        data.append(d)
        psfs.append(p)
    ground = sx.make_observation(
        np.stack(data), psf=np.stack(psfs), variance=np.broadcast_to(sigmas[:, None, None] ** 2, (5, 24, 24)),
        bands=GROUND_BANDS, wcs=wg, name="ground",
    )
    ws = _tan_wcs(0.05, theta, (64, 64), center_offset_arcsec=(-0.3, -0.2))
    spsf = galsim.Airy(lam_over_diam=space_lam_over_diam)  # FWHM ~ lam_over_diam
    d, _, p = _draw(gals, ws, (64, 64), spsf, flux_space, rng, 0.35)
    space = sx.make_observation(d, psf=p, variance=np.full((1, 64, 64), 0.35**2), bands=["F814W"], wcs=ws,
                                name="space")
    truth = {
        "ra": ra,
        "dec": dec,
        "flux_ground": flux_ground,
        "flux_space": flux_space,
        "blended": np.array([True, True, False]),
        "theta": theta,
    }
    return ground, space, truth
