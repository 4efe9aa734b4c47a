"""Source detection with ``sep`` and the one-call pipeline behind ``obs.scarlet.fit()``."""

from __future__ import annotations

import numpy as np

from ..wcs import Frame
from ..xr import frame_from_observations, normalize_observations
from ._auto import DEFAULT_E_REL, fit_sources
from ._init import detection_image

__all__ = ["detect_sources", "fit_observations"]


def detect_sources(
    observations,
    frame: Frame | None = None,
    *,
    threshold: float = 3.0,
    minarea: int = 5,
    deblend_nthresh: int = 32,
    deblend_cont: float = 0.005,
) -> np.ndarray:
    """Detect sources on the detection image with ``sep`` (Source Extractor).

    The detection image is the inverse-variance weighted coadd of all bands
    (:func:`scarlet_xr.scene.detection_image`); masked pixels are excluded.

    Parameters
    ----------
    observations : Dataset, sequence or mapping of Datasets
    frame : Frame, optional
        Model frame; default :func:`scarlet_xr.frame_from_observations`.
    threshold : float
        Detection threshold in units of the detection image's noise.
    minarea : int
        Minimum number of connected pixels above threshold.
    deblend_nthresh, deblend_cont : int, float
        sep's deblending parameters.

    Returns
    -------
    numpy.ndarray (n, 2)
        Centres ``(y, x)`` in model-frame pixels (``frame.origin`` is the
        frame's ``(0, 0)``), ordered by decreasing peak; ``n`` may be 0.
    """
    import sep

    obs = normalize_observations(observations)
    if frame is None:
        frame = frame_from_observations(obs)
    det, sigma, valid = detection_image(obs, frame)
    det = np.ascontiguousarray(np.where(valid, det, 0.0), dtype=np.float64)
    if not valid.any():
        raise ValueError("all pixels are masked (every weight is 0); nothing to detect")
    objs = sep.extract(
        det,
        float(threshold),
        err=float(sigma),
        mask=np.ascontiguousarray(~valid),
        minarea=int(minarea),
        deblend_nthresh=int(deblend_nthresh),
        deblend_cont=float(deblend_cont),
    )
    if len(objs) == 0:
        return np.zeros((0, 2))
    order = np.argsort(-objs["peak"])
    return np.stack([objs["y"][order], objs["x"][order]], axis=1).astype(float)


def fit_observations(
    observations,
    centers=None,
    *,
    kinds="auto",
    max_steps: int = 1000,
    e_rel: float = DEFAULT_E_REL,
    optimizer=None,
    detect_threshold: float = 3.0,
    progress: bool = False,
    sky: str | None = None,
    find_missing: bool | None = None,
):
    """Detect (if needed), initialise and fit sources; return the results DataTree.

    This is what ``obs.scarlet.fit()`` runs. The observations are not modified.

    Parameters
    ----------
    observations : Dataset, sequence or mapping of Datasets
    centers : array (n, 2), optional
        ``(y, x)`` in the observations' pixel coordinates (values of their
        ``y``/``x`` coords). Default: :func:`detect_sources`.
    kinds : str or sequence of str
        ``"auto"`` (default: point source or Sersic, chosen per source from
        the data; see :func:`scarlet_xr.scene.fit_sources`) or kinds of
        :func:`scarlet_xr.initialize_sources`.
    max_steps, e_rel, optimizer, progress
        See :meth:`scarlet_xr.Scene.fit`.
    detect_threshold : float
        Detection threshold (noise units) when ``centers`` is None.
    sky : {None, "constant", "plane"}
        Fit a background per band with the sources (see
        :func:`scarlet_xr.scene.fit_sources`); stored as ``sky`` in each
        ``/observations/<name>`` (and included in its ``model``).
    find_missing : bool, optional
        Add sources at significant peaks of the fit's residual (see
        :func:`scarlet_xr.scene.fit_sources`): detections merge sources a
        PSF width or two apart. Default: when ``centers`` is None (the
        sources were detected here); given centres stay the catalog.

    Returns
    -------
    xarray.DataTree

    Raises
    ------
    ValueError
        If nothing is detected, or a centre lies outside the frame.
    """
    obs = normalize_observations(observations)
    frame = frame_from_observations(obs)
    if centers is None:
        frame_centers = detect_sources(obs, frame, threshold=detect_threshold)
        if len(frame_centers) == 0:
            raise ValueError(
                f"no sources detected above {detect_threshold} sigma; give centers= or lower "
                "detect_threshold"
            )
    else:
        frame_centers = np.atleast_2d(np.asarray(centers, float)) - np.asarray(frame.origin, float)
    fitted = fit_sources(frame, obs, frame_centers, kinds=kinds, max_steps=max_steps, e_rel=e_rel,
                         optimizer=optimizer, progress=progress, sky=sky,
                         find_missing=centers is None if find_missing is None else bool(find_missing))
    return fitted.to_datatree(obs)
