"""Bundled example data (from the scarlet project, MIT licence)."""

from __future__ import annotations

from importlib import resources

import numpy as np

from .xr import make_observation, open_observation

__all__ = ["hsc_cosmos_35", "hst_hsc_pair"]


def hsc_cosmos_35():
    """HSC 5-band cutout of COSMOS (58 x 48 px, bands g r i z y) with 7 catalog positions.

    The cutout, its variance and per-band PSFs come from the scarlet project's
    test data (MIT licence). The bitmask plane of the original file is not used
    (its bits flag detections, not bad pixels).

    Returns
    -------
    observation : xarray.Dataset
        Observation named ``"hsc"`` with ``data``, ``weight`` (1 / variance), ``psf``.
    centers : numpy.ndarray (7, 2)
        Catalog positions as ``(y, x)`` pixels; the first is a star.
    """
    ref = resources.files("scarlet_xr.data").joinpath("hsc_cosmos_35.npz")
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as f:
        images = f["images"]
        variance = f["variance"]
        psfs = f["psfs"]
        bands = [str(b) for b in f["filters"]]
        cat = f["catalog"]
    obs = make_observation(images, variance=variance, psf=psfs, bands=bands, name="hsc")
    centers = np.stack([cat["y"], cat["x"]], axis=1).astype(float)
    return obs, centers


def hst_hsc_pair():
    """HSC (g r i z y, 0.168"/px) and HST (F814W, 0.03"/px) cutouts of one field, with PSFs.

    The FITS files come from the scarlet project's multi-resolution example
    (MIT licence). Neither carries a variance plane, so the noise is
    estimated from the image background (``attrs["noise_estimated"] == 1``).
    The HST PSF peaks one pixel off its centre and is re-centred by a
    whole-pixel shift (``attrs["psf_shift"]``).

    Returns
    -------
    hsc, hst : xarray.Dataset
        Observations named ``"hsc"`` and ``"hst"`` with celestial WCS.
    """
    root = resources.files("scarlet_xr.data")
    with resources.as_file(root) as path:
        hsc = open_observation(path / "Cut_HSC.fits", psf=path / "PSF_HSC.fits",
                               bands=list("grizy"), name="hsc")
        hst = open_observation(path / "Cut_HST.fits", psf=path / "PSF_HST.fits",
                               bands=["F814W"], name="hst", recenter_psf=True)
    return hsc, hst
