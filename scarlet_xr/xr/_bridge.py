"""Turn observation Datasets into core likelihood terms for a model frame."""

from __future__ import annotations

import logging

import numpy as np

from ..core import (
    ConvolutionRenderer,
    CorrelatedGaussianLikelihood,
    GaussianLikelihood,
    gaussian_psf_image,
    psf_core_width,
)
from ..wcs import Frame, observation_epochs
from ._bound import BoundObservation
from ._observation import BAND, X, Y, check_observation, observation_epoch, observation_wcs

logger = logging.getLogger(__name__)

__all__ = ["likelihood_for", "normalize_observations", "frame_from_observations", "grid_offset",
           "model_psf_sigma"]


def normalize_observations(observations) -> dict:
    """Return ``{name: Dataset}`` from a Dataset, a sequence or a mapping; names made unique.

    Items may be :class:`BoundObservation` (their Dataset, already checked when
    bound, under their name).
    """
    import xarray as xr

    if isinstance(observations, _Observations) and observations.intact():
        return observations  # checked already: normalising is done once per call chain
    if isinstance(observations, (xr.Dataset, BoundObservation)):
        observations = [observations]
    if isinstance(observations, dict):
        items = list(observations.items())
    else:
        items = [(ds.name if isinstance(ds, BoundObservation) else ds.attrs.get("name", f"obs{i}"), ds)
                 for i, ds in enumerate(observations)]
    if not items:
        raise ValueError("at least one observation is required")
    out = {}
    for name, ds in items:
        if isinstance(ds, BoundObservation):
            ds = ds.dataset
        else:
            check_observation(ds)
        name = str(name)
        base, k = name, 1
        while name in out:
            k += 1
            name = f"{base}_{k}"
        out[name] = ds
    return _Observations(out)


class _Observations(dict):
    """``{name: Dataset}`` made by :func:`normalize_observations` (names unique, every Dataset checked).

    Handing it to :func:`normalize_observations` again returns it as it is,
    unless its items changed since (then they are checked again).
    """

    def __init__(self, items):
        super().__init__(items)
        self.checked = frozenset((k, id(v)) for k, v in self.items())

    def intact(self) -> bool:
        """Whether the items are still those that were checked."""
        return frozenset((k, id(v)) for k, v in self.items()) == getattr(self, "checked", None)


def grid_offset(ds, frame: Frame):
    """Integer offset (y, x) of the observation's pixel (0, 0) in the frame, or None.

    None means the observation is on another pixel grid (scale, rotation or a
    sub-pixel offset differ) and must be resampled. Without WCSs the offset
    comes from the pixel coordinates (same parent image assumed).

    Parameters
    ----------
    ds : xarray.Dataset
        An observation.
    frame : Frame
        The model frame.

    Returns
    -------
    tuple of int or None
    """
    wo = observation_wcs(ds)
    if frame.wcs is None or wo is None:
        return (int(ds[Y].values[0]) - frame.origin[0], int(ds[X].values[0]) - frame.origin[1])
    a = frame.wcs.pixel_scale_matrix
    b = wo.pixel_scale_matrix
    if not np.allclose(a, b, rtol=1e-6, atol=1e-12):
        return None
    ny, nx = ds["data"].shape[1:]
    xs = np.array([0.0, nx - 1.0, 0.0])
    ys = np.array([0.0, 0.0, ny - 1.0])
    fx, fy = frame.wcs.world_to_pixel_values(*wo.pixel_to_world_values(xs, ys))
    off = np.stack([fy - ys, fx - xs])
    if not np.allclose(off, np.round(off[:, :1]), atol=1e-3):
        return None
    return (int(np.round(off[0, 0])), int(np.round(off[1, 0])))


def likelihood_for(ds, frame: Frame, sky: str | None = None) -> GaussianLikelihood:
    """Build the likelihood term of observation ``ds`` for a model on ``frame``.

    Observations on the frame's pixel grid (same pixel scale and orientation,
    integer offset) use a :class:`~scarlet_xr.core.ConvolutionRenderer`; any
    other grid uses a :class:`~scarlet_xr.core.ResamplingRenderer` (both
    precompute their operators here, once). An observation with a
    ``noise_correlation`` variable (:func:`with_noise_correlation`) gets a
    :class:`~scarlet_xr.core.CorrelatedGaussianLikelihood` (on the frame's
    grid; a resampled observation keeps the white likelihood, with a warning).
    ``sky`` (``"constant"`` or ``"plane"``) fits a background per band with
    the model (see :class:`~scarlet_xr.core.GaussianLikelihood`).

    Raises
    ------
    ValueError
        If the observation's bands are not in the frame, its grid does not
        fit the frame, or its PSF is not wider than the model PSF.
    """
    check_observation(ds)
    bands = [str(b) for b in ds[BAND].values]
    idx = frame.band_index(bands)
    epoch = frame.epoch_index(observation_epoch(ds))
    origin = grid_offset(ds, frame)
    if origin is None:
        from ._resample import resampling_likelihood  # multi-resolution path

        if "noise_correlation" in ds:
            logger.warning("%s: noise_correlation is not used for observations resampled to the frame",
                           ds.attrs.get("name", ""))
        return resampling_likelihood(ds, frame, idx, sky=sky, epoch=epoch)
    w_obs = psf_core_width(ds["psf"].values)
    w_mod = float(psf_core_width(frame.psf)[0])
    if np.any(w_obs <= w_mod):
        raise ValueError(
            f"the model PSF (core width {w_mod:.3g} px) must be narrower than every observation "
            f"PSF; observation {ds.attrs.get('name', '')!r} has core widths "
            f"{np.round(w_obs, 3).tolist()} px (use a smaller psf_sigma for the frame)"
        )
    renderer = ConvolutionRenderer(
        frame.cube_shape,
        ds["data"].shape,
        idx,
        ds["psf"].values,
        frame.psf,
        origin=origin,
    )
    if "noise_correlation" in ds:
        return CorrelatedGaussianLikelihood(ds["data"].values, ds["weight"].values, renderer,
                                            ds["noise_correlation"].values, sky=sky, epoch=epoch)
    return GaussianLikelihood(ds["data"].values, ds["weight"].values, renderer, sky=sky, epoch=epoch)


def _grid(ds):
    return ([str(b) for b in ds[BAND].values], tuple(ds["data"].shape[1:]), observation_wcs(ds),
            (int(ds[Y].values[0]), int(ds[X].values[0])))


def frame_from_observations(
    observations, *, resolution: float | None = None, coverage: str = "union", psf_sigma=None
) -> Frame:
    """Model frame for the given observations (union of their bands; their epochs, if any).

    The model PSF is a Gaussian of ``psf_sigma`` frame pixels (default 0.8,
    or narrower when an observation's PSF core is not wider than that: see
    :func:`model_psf_sigma`).

    Observations on one pixel grid give a frame on that grid covering all of
    them (with the WCS of the first). Observations on different grids (other
    pixel scales, rotations, sub-pixel offsets) give a north-up frame at the
    finest pixel scale, aligned with the finest observation's pixels when it
    is north-up (see :meth:`scarlet_xr.Frame.from_observations`).

    Parameters
    ----------
    observations : Dataset, sequence or mapping of Datasets
    resolution : float, optional
        Model pixel scale in arcsec (default: the finest observation's).
    coverage : {"union", "intersection"}
        Cover every observation or only their common region.
    psf_sigma : float, optional
        Model PSF width in model pixels (default 0.8, or what :func:`model_psf_sigma` picks).

    Returns
    -------
    Frame

    Examples
    --------
    >>> from scarlet_xr.datasets import hsc_cosmos_35
    >>> obs, _ = hsc_cosmos_35()
    >>> frame_from_observations(obs).shape
    (58, 48)
    """
    obs = normalize_observations(observations)
    kw = {} if psf_sigma is None else {"psf_sigma": psf_sigma}
    grids = [_grid(ds) for ds in obs.values()]
    frame = Frame.from_grids(grids, resolution=resolution, coverage=coverage, **kw)
    if psf_sigma is None:
        sigma = model_psf_sigma(obs, frame)
        if sigma < frame.psf_sigma:
            logger.info("model PSF sigma %.3g px (the default %.3g is not narrower than the narrowest "
                        "observation PSF)", sigma, frame.psf_sigma)
            frame = Frame.from_grids(grids, resolution=resolution, coverage=coverage, psf_sigma=sigma)
    return frame.with_epochs(observation_epochs(list(obs.values())))


MODEL_PSF_MARGIN = 0.85
"""The default model PSF's core is at most this fraction of the narrowest observation PSF's core."""


def _core_width(sigma: float) -> float:
    return float(psf_core_width(gaussian_psf_image(sigma, max(2 * int(np.ceil(4 * sigma)) + 1, 7)))[0])


def model_psf_sigma(observations, frame: Frame) -> float:
    """Width of the model PSF for ``frame``: the frame's, or narrower for sharp observation PSFs.

    The model PSF must be narrower than every observation's PSF (the
    renderers match it to each). When the frame's default width is not at
    most :data:`MODEL_PSF_MARGIN` of the narrowest observation PSF's core
    width (in frame pixels; e.g. an undersampled space-telescope PSF on the
    frame of its own pixels), this returns the Gaussian width whose core is.

    Parameters
    ----------
    observations : dict of Dataset
    frame : Frame

    Returns
    -------
    float
        ``sigma`` in frame pixels (at most ``frame.psf_sigma``).
    """
    widths = []
    fscale = frame.pixel_scale
    for ds in observations.values():
        w = psf_core_width(ds["psf"].values)
        wcs = observation_wcs(ds)
        if fscale is not None and wcs is not None:
            from astropy.wcs.utils import proj_plane_pixel_scales

            w = w * float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial)))) * 3600.0 / fscale
        widths.append(float(np.min(w)))
    target = MODEL_PSF_MARGIN * min(widths)
    if _core_width(frame.psf_sigma) <= target:
        return frame.psf_sigma
    lo, hi = 0.2, frame.psf_sigma
    if _core_width(lo) > target:
        return lo
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _core_width(mid) <= target else (lo, mid)
    return lo
