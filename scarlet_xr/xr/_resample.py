"""Likelihood terms for observations whose pixel grid differs from the model frame's."""

from __future__ import annotations

import numpy as np

from ..core import GaussianLikelihood, ResamplingRenderer
from ..wcs import Frame
from ._observation import BAND, check_observation, observation_wcs

__all__ = ["resampling_likelihood", "observation_coords"]


def observation_coords(ds, frame: Frame) -> np.ndarray:
    """Model-frame pixel coordinates ``(2, y, x)`` of every pixel centre of an observation.

    The map goes through the sky with both WCSs (so distortions and
    projection differences are kept).

    Raises
    ------
    ValueError
        If the frame or the observation has no WCS.
    """
    if frame.wcs is None:
        raise ValueError("the model frame needs a WCS to resample observations onto it")
    wo = observation_wcs(ds)
    if wo is None:
        raise ValueError(
            f"observation {ds.attrs.get('name', '')!r} is on a different pixel grid than the frame "
            "and has no WCS (pass wcs= to make_observation)"
        )
    ny, nx = ds["data"].shape[1:]
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    fx, fy = frame.wcs.world_to_pixel_values(*wo.pixel_to_world_values(xx, yy))
    return np.stack([np.asarray(fy, float), np.asarray(fx, float)])


def resampling_likelihood(ds, frame: Frame, band_index, sky: str | None = None,
                          epoch: int | None = None) -> GaussianLikelihood:
    """Gaussian likelihood of an observation on its own grid, rendered by resampling.

    Observation pixels whose centres fall outside the model frame are masked
    (weight 0): the model cannot describe them.

    Parameters
    ----------
    ds : xarray.Dataset
        Observation (see :func:`scarlet_xr.make_observation`) with a WCS.
    frame : Frame
        Model frame with a WCS.
    band_index : sequence of int
        Index in the frame of each observation band.
    sky : {None, "constant", "plane"}
        Background fitted with the model (see :class:`~scarlet_xr.core.GaussianLikelihood`).
    epoch : int, optional
        Index of the observation's epoch in the frame's epochs.

    Returns
    -------
    GaussianLikelihood
        With a :class:`~scarlet_xr.core.ResamplingRenderer`.

    Raises
    ------
    ValueError
        Missing WCS, no pixel inside the frame, or an observation PSF that is
        not wider than the model PSF.
    """
    check_observation(ds)
    coords = observation_coords(ds, frame)
    hm, wm = frame.shape
    inside = (
        (coords[0] >= -0.5) & (coords[0] <= hm - 0.5) & (coords[1] >= -0.5) & (coords[1] <= wm - 0.5)
    )
    if not inside.any():
        raise ValueError(
            f"observation {ds.attrs.get('name', '')!r} does not overlap the model frame "
            f"(bands {list(map(str, ds[BAND].values))})"
        )
    renderer = ResamplingRenderer(
        frame.cube_shape, ds["data"].shape, band_index, ds["psf"].values, frame.psf, coords
    )
    weights = np.where(inside[None], ds["weight"].values, 0.0)
    return GaussianLikelihood(ds["data"].values, weights, renderer, sky=sky, epoch=epoch)
