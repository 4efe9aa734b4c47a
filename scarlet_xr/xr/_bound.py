"""Observations bound to a model frame: the Dataset with its likelihood, built once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..core import GaussianLikelihood
from ..wcs import Frame

__all__ = ["BoundObservation", "bind_observations", "check_same_observations"]


@dataclass(frozen=True, eq=False)
class BoundObservation:
    """One observation bound to a model frame.

    Holds the observation's Dataset and its likelihood term on ``frame``
    (the renderer — convolution, or resampling and PSF matching — with its
    precomputed operators, and the weights). Made once by
    :func:`bind_observations`; a fitted :class:`~scarlet_xr.Scene` keeps its
    bound observations, and its results, measurements and samples reuse them.

    Attributes
    ----------
    name : str
        The observation's name (unique within a scene).
    dataset : xarray.Dataset
        The observation (``data``, ``weight``, ``psf``; band, y, x).
    frame : Frame
        The model frame the likelihood renders from.
    likelihood : GaussianLikelihood
        The likelihood term (``likelihood.renderer`` renders a model cube
        into the observation).
    """

    name: str
    dataset: xr.Dataset
    frame: Frame
    likelihood: GaussianLikelihood

    @property
    def renderer(self):
        """The renderer from the model frame into this observation."""
        return self.likelihood.renderer

    @property
    def sky(self) -> str | None:
        """The sky model profiled out of the likelihood (None: background subtracted)."""
        return self.likelihood.sky

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.dataset["data"].shape)
        return f"BoundObservation({self.name!r}, {shape}, {type(self.likelihood.renderer).__name__})"


def bind_observations(observations, frame: Frame, *, sky: str | None = None) -> tuple[BoundObservation, ...]:
    """Bind observations to ``frame``: check each once and build its likelihood once.

    Parameters
    ----------
    observations : Dataset, sequence or mapping of Datasets, or of BoundObservation
        Bound observations on the same frame with the same ``sky`` are
        returned as they are; others are (re)bound.
    frame : Frame
        The model frame.
    sky : {None, "constant", "plane"}, optional
        Background model profiled out of each likelihood (see
        :func:`~scarlet_xr.xr.likelihood_for`).

    Returns
    -------
    tuple of BoundObservation
        In the order of ``observations``; names made unique.

    Examples
    --------
    >>> from scarlet_xr import frame_from_observations
    >>> from scarlet_xr.datasets import hsc_cosmos_35
    >>> obs, _ = hsc_cosmos_35()
    >>> bound = bind_observations(obs, frame_from_observations(obs))
    >>> bound[0].name, bind_observations(bound, bound[0].frame) == bound
    ('hsc', True)
    """
    from ._bridge import likelihood_for, normalize_observations

    if not isinstance(frame, Frame):
        raise TypeError(f"frame must be a scarlet_xr.Frame; got {type(frame).__name__}")
    items = observations if isinstance(observations, (list, tuple)) else None
    if items and all(isinstance(b, BoundObservation) for b in items) and all(
            b.frame is frame and b.sky == sky for b in items):
        return tuple(items)
    obs = normalize_observations(observations)
    return tuple(BoundObservation(name, ds, frame, likelihood_for(ds, frame, sky=sky))
                 for name, ds in obs.items())


def check_same_observations(bound, observations) -> tuple[BoundObservation, ...]:
    """The bound observations for ``observations``, checked against those a scene was fitted to.

    Parameters
    ----------
    bound : tuple of BoundObservation
        What the scene was fitted to.
    observations : Dataset, sequence or mapping of Datasets, or of BoundObservation
        What the caller hands in (e.g. to ``Scene.to_datatree``).

    Returns
    -------
    tuple of BoundObservation
        ``bound`` itself where the data are the fitted ones; observations
        with the same names, bands and shapes but other data are bound anew.

    Raises
    ------
    ValueError
        If the names, bands or shapes differ from the fitted observations.
    """
    from ._bridge import normalize_observations

    obs = normalize_observations(observations)

    def sig(name, ds):
        return name, tuple(str(b) for b in ds["band"].values), tuple(ds["data"].shape)

    want = [sig(b.name, b.dataset) for b in bound]
    got = [sig(name, ds) for name, ds in obs.items()]
    if want != got:
        raise ValueError(
            "these observations are not the ones the scene was fitted to: expected (name, bands, shape) "
            f"{want}; got {got} (call to_datatree() without observations to use the fitted ones)"
        )
    out = []
    for b, ds in zip(bound, obs.values(), strict=True):
        same = ds is b.dataset or (
            np.array_equal(ds["data"].values, b.dataset["data"].values, equal_nan=True)
            and np.array_equal(ds["weight"].values, b.dataset["weight"].values, equal_nan=True))
        out.append(b if same else bind_observations({b.name: ds}, b.frame, sky=b.sky)[0])
    return tuple(out)
