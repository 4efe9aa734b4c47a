"""Turn observation Datasets into core likelihood terms for a model frame."""

from __future__ import annotations

import numpy as np

from ..core import ConvolutionRenderer, GaussianLikelihood
from ..wcs import Frame
from ._observation import BAND, X, Y, check_observation, observation_wcs

__all__ = ["likelihood_for", "normalize_observations", "frame_from_observations"]


def normalize_observations(observations) -> dict:
    """Return ``{name: Dataset}`` from a Dataset, a sequence or a mapping; names made unique."""
    import xarray as xr

    if isinstance(observations, xr.Dataset):
        observations = [observations]
    if isinstance(observations, dict):
        items = list(observations.items())
    else:
        items = [(ds.attrs.get("name", f"obs{i}"), ds) for i, ds in enumerate(observations)]
    if not items:
        raise ValueError("at least one observation is required")
    out = {}
    for name, ds in items:
        check_observation(ds)
        name = str(name)
        base, k = name, 1
        while name in out:
            k += 1
            name = f"{base}_{k}"
        out[name] = ds
    return out


def _same_grid(ds, frame: Frame) -> bool:
    wo = observation_wcs(ds)
    if frame.wcs is None or wo is None:
        return True
    # same pixel scale/orientation and integer offset => convolution renderer suffices
    a = frame.wcs.pixel_scale_matrix
    b = wo.pixel_scale_matrix
    return bool(np.allclose(a, b, rtol=1e-6, atol=1e-12))


def likelihood_for(ds, frame: Frame) -> GaussianLikelihood:
    """Build the likelihood term of observation ``ds`` for a model on ``frame``.

    Raises
    ------
    ValueError
        If the observation's bands are not in the frame or its grid does not
        fit the frame.
    """
    check_observation(ds)
    bands = [str(b) for b in ds[BAND].values]
    idx = frame.band_index(bands)
    if not _same_grid(ds, frame):
        from ._resample import resampling_likelihood  # multi-resolution path

        return resampling_likelihood(ds, frame, idx)
    origin = (int(ds[Y].values[0]) - frame.origin[0], int(ds[X].values[0]) - frame.origin[1])
    renderer = ConvolutionRenderer(
        frame.cube_shape,
        ds["data"].shape,
        idx,
        ds["psf"].values,
        frame.psf,
        origin=origin,
    )
    return GaussianLikelihood(ds["data"].values, ds["weight"].values, renderer)


def frame_from_observations(observations, *, psf_sigma=None) -> Frame:
    """Model frame covering the given same-grid observations (union of bands).

    The frame takes the pixel grid of the first observation (extended to
    cover all observations' pixel ranges) and its WCS.
    """
    obs = normalize_observations(observations)
    bands = []
    for ds in obs.values():
        for b in ds[BAND].values:
            if str(b) not in bands:
                bands.append(str(b))
    y0 = min(int(ds[Y].values[0]) for ds in obs.values())
    x0 = min(int(ds[X].values[0]) for ds in obs.values())
    y1 = max(int(ds[Y].values[-1]) for ds in obs.values()) + 1
    x1 = max(int(ds[X].values[-1]) for ds in obs.values()) + 1
    first = next(iter(obs.values()))
    wcs = observation_wcs(first)
    if wcs is not None:
        dy, dx = y0 - int(first[Y].values[0]), x0 - int(first[X].values[0])
        wcs = wcs.deepcopy()
        wcs.wcs.crpix = wcs.wcs.crpix - np.array([dx, dy])
    kw = {} if psf_sigma is None else {"psf_sigma": psf_sigma}
    return Frame(bands, (y1 - y0, x1 - x0), wcs=wcs, origin=(y0, x0), **kw)
