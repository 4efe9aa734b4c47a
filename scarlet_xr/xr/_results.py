"""Results of a fit as one ``xarray.DataTree``.

Layout (public contract)::

    /                      attrs: scarlet_xr_version, wcs_header (frame), bands
    /sources               ra, dec (source); flux (source, band); kind, name (source);
                           y, x (source): centres in model-frame pixels
    /model                 model (source, band, stamp_y, stamp_x): each source's model on its
                           box, which starts at stamp_y0, stamp_x0 (source) of the model
                           frame's y, x (see scarlet_xr.xr.source_image)
    /observations/<name>   data, weight, model, residual (band, y, x); psf;
                           chi2_reduced (band); attrs chi2_reduced
    /fit                   loss (step); attrs status, num_steps
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._observation import BAND, X, Y
from ._stamps import STAMP_X, STAMP_Y, pack_stamps

__all__ = ["build_result_tree", "cube_to_stamps", "reduced_chi2"]


def cube_to_stamps(cube):
    """Per-source full-frame images ``(source, ..., y, x)`` to stamps cropped to their non-zero pixels.

    Returns
    -------
    list of (y0, x0, numpy.ndarray) or None
    """
    out = []
    for img in cube:
        img = np.asarray(img)
        flat = np.abs(img).reshape(-1, *img.shape[-2:]).max(axis=0)
        rows, cols = np.flatnonzero(flat.max(axis=1) > 0), np.flatnonzero(flat.max(axis=0) > 0)
        if rows.size == 0:
            out.append(None)
            continue
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append((int(y0), int(x0), img[..., y0:y1, x0:x1]))
    return out


def reduced_chi2(data, model, weight, axis=None):
    """``sum w (d - m)^2 / N`` over unmasked pixels (``N`` = number with w > 0)."""
    r = np.asarray(data, float) - np.asarray(model, float)
    w = np.asarray(weight, float)
    n = np.sum(w > 0, axis=axis)
    return np.sum(w * r * r, axis=axis) / np.maximum(n, 1)


def build_result_tree(
    frame,
    *,
    source_models,
    fluxes,
    centers,
    kinds,
    names,
    observations=(),
    history=None,
    version="",
    extra_attrs=None,
) -> xr.DataTree:
    """Assemble the results DataTree of a scene on ``frame`` (see module docstring).

    Parameters
    ----------
    frame : Frame
        The model frame: bands, pixel coordinates (with its origin), WCS.
    source_models : array (source, band, y, x) or sequence of stamps
        Each source's model: a full-frame cube, or per source ``(y0, x0,
        array (band, h, w))`` (box origin in frame array indices) or None.
        Stored as stamps (:mod:`scarlet_xr.xr._stamps`).
    fluxes : array (source, band)
    centers : array (source, 2)
        ``(y, x)`` in the frame's array indices; ``/sources`` stores them with
        the frame's origin added, and ``ra``, ``dec`` in degrees when the frame
        has a WCS (NaN otherwise).
    kinds, names : sequence of str
    observations : sequence of (name, Dataset, model array)
        Each observation and its rendered model on its own grid.
    history : FitHistory, optional
        The fit's record (``loss``, ``status``, ``num_steps``); None: not fitted.
    version : str
    extra_attrs : dict, optional
        Added to the root attrs.
    """
    ns = len(names)
    src_coord = np.arange(ns)
    bands = tuple(frame.bands)
    centers = np.asarray(centers, np.float64).reshape(ns, 2)
    if frame.wcs is not None and ns:
        ra, dec = frame.pixel_to_sky(centers[:, 0], centers[:, 1])
    else:
        ra = dec = np.full(ns, np.nan)
    centers = centers + np.asarray(frame.origin, np.float64)
    frame_y = np.arange(frame.shape[0]) + frame.origin[0]
    frame_x = np.arange(frame.shape[1]) + frame.origin[1]
    frame_wcs_header = None if frame.wcs is None else frame.wcs.to_header_string(relax=True)
    loss = None if history is None else history.loss
    status = "" if history is None else history.status
    num_steps = 0 if history is None else history.num_steps
    sources = xr.Dataset(
        {
            "flux": (("source", BAND), np.asarray(fluxes, np.float64)),
            "ra": ("source", np.asarray(ra, np.float64)),
            "dec": ("source", np.asarray(dec, np.float64)),
            "y": ("source", np.asarray(centers, np.float64)[:, 0]),
            "x": ("source", np.asarray(centers, np.float64)[:, 1]),
            "kind": ("source", np.asarray(kinds, dtype=object).astype(str)),
            "name": ("source", np.asarray(names, dtype=object).astype(str)),
        },
        coords={"source": src_coord, BAND: list(bands)},
    )
    sources["flux"].attrs["description"] = "total flux per band (model units)"
    sources["ra"].attrs["units"] = "deg"
    sources["dec"].attrs["units"] = "deg"
    if isinstance(source_models, np.ndarray) or hasattr(source_models, "shape"):
        source_models = cube_to_stamps(source_models)
    vals, sy0, sx0 = pack_stamps(source_models, (len(bands),))
    fy, fx = np.asarray(frame_y), np.asarray(frame_x)
    model = xr.Dataset(
        {
            "model": (("source", BAND, STAMP_Y, STAMP_X), vals, {
                "description": "each source's model (model PSF) on its box; see stamp_y0, stamp_x0"}),
            "stamp_y0": ("source", sy0 + int(fy[0]) if len(fy) else sy0,
                         {"description": "y of the first row of the source's box"}),
            "stamp_x0": ("source", sx0 + int(fx[0]) if len(fx) else sx0,
                         {"description": "x of the first column of the source's box"}),
        },
        coords={"source": src_coord, BAND: list(bands), Y: fy, X: fx},
    )
    children = {"sources": xr.DataTree(sources), "model": xr.DataTree(model)}
    obs_nodes = {}
    for name, ds, mod in observations:
        mod = np.asarray(mod, np.float32)
        node = xr.Dataset(
            {
                "data": ds["data"],
                "weight": ds["weight"],
                "model": ((BAND, Y, X), mod),
                "residual": ((BAND, Y, X), ds["data"].values - mod),
                "psf": ds["psf"],
            },
            attrs={k: v for k, v in ds.attrs.items()},
        )
        per_band = reduced_chi2(ds["data"].values, mod, ds["weight"].values, axis=(1, 2))
        node["chi2_reduced"] = (BAND, per_band)
        node.attrs["chi2_reduced"] = float(
            reduced_chi2(ds["data"].values, mod, ds["weight"].values)
        )
        obs_nodes[str(name)] = xr.DataTree(node)
    children["observations"] = xr.DataTree(children=obs_nodes)
    fit = xr.Dataset(
        {"loss": ("step", np.asarray(loss if loss is not None else [], np.float64))},
        attrs={"status": str(status), "num_steps": int(num_steps)},
    )
    children["fit"] = xr.DataTree(fit)
    attrs = {"scarlet_xr_version": version, "bands": ",".join(bands)}
    if frame_wcs_header is not None:
        attrs["wcs_header"] = frame_wcs_header
    if extra_attrs:
        attrs.update(extra_attrs)
    return xr.DataTree(xr.Dataset(attrs=attrs), children=children)
