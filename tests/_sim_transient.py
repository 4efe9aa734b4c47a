"""A supernova on a static host galaxy over several epochs, drawn with GalSim, with truth."""

from __future__ import annotations

import galsim
import numpy as np

import scarlet_xr as sx

BANDS = ["g", "r"]
SCALE = 0.2  # arcsec per pixel
NOISE = np.array([1.0, 1.2])
HOST_FLUX = np.array([3000.0, 5000.0])
# rise, peak, decline (the first epoch before the explosion: no light)
SN_FLUX = np.array([[0.0, 0.0], [400.0, 300.0], [900.0, 800.0], [700.0, 750.0], [450.0, 550.0],
                    [250.0, 350.0]])
SEEING = (0.7, 1.1, 0.85, 1.3, 0.95, 0.75)  # FWHM in arcsec, one per epoch
MJD = (59000.0, 59003.0, 59008.0, 59015.0, 59024.0, 59040.0)


def supernova_epochs(seed: int, size: int = 41, sn_flux=SN_FLUX):
    """Observations of a host galaxy with a supernova, one per epoch (both bands, its own seeing).

    Returns
    -------
    observations : list of Dataset
        Named ``e0``, ``e1``, ...; scalar coordinate ``epoch`` (MJD).
    truth : dict
        ``host_center``, ``sn_center`` (y, x pixels), ``host_flux (band,)``
        (inside the image), ``sn_flux (epoch, band)``.
    """
    rng = np.random.default_rng(seed)
    c0 = (size - 1) / 2
    host_c = np.array([c0, c0]) + rng.uniform(-0.5, 0.5, 2)
    sn_c = host_c + np.array([2.6, -3.1])
    host = galsim.Exponential(half_light_radius=0.9).shear(galsim.Shear(e1=0.25, e2=-0.1))
    obs = []
    for e, fwhm in enumerate(SEEING):
        # truncated inside the PSF image, so that the image holds all of the PSF's light
        psf = galsim.Moffat(beta=3.0, fwhm=fwhm, trunc=2.8)
        data = np.zeros((len(BANDS), size, size))
        for b in range(len(BANDS)):
            im = galsim.ImageD(size, size, scale=SCALE)
            galsim.Convolve(host.withFlux(HOST_FLUX[b]), psf).drawImage(
                im, offset=galsim.PositionD(host_c[1] - c0, host_c[0] - c0))
            data[b] = im.array
            if sn_flux[e, b] > 0:
                im = galsim.ImageD(size, size, scale=SCALE)
                psf.withFlux(sn_flux[e, b]).drawImage(
                    im, offset=galsim.PositionD(sn_c[1] - c0, sn_c[0] - c0))
                data[b] += im.array
        data += rng.normal(0, 1, data.shape) * NOISE[:, None, None]
        psf_img = psf.drawImage(nx=31, ny=31, scale=SCALE).array
        var = np.broadcast_to(NOISE[:, None, None] ** 2, data.shape)
        obs.append(sx.make_observation(data, variance=var, psf=np.stack([psf_img] * len(BANDS)),
                                       bands=BANDS, name=f"e{e}", epoch=MJD[e]))
    # the host's light inside the image (its exponential wings reach past the edges)
    im = galsim.ImageD(size, size, scale=SCALE)
    host.withFlux(1.0).drawImage(im, offset=galsim.PositionD(host_c[1] - c0, host_c[0] - c0))
    truth = {"host_center": host_c, "sn_center": sn_c, "host_flux": HOST_FLUX * im.array.sum(),
             "sn_flux": np.asarray(sn_flux, float)}
    return obs, truth
