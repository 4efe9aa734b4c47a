"""Per-source images stored as stamps: each source's box, not the whole frame.

A node holding per-source images (``/model``, ``/deblended/<name>``) keeps
them in one array ``(source, ..., stamp_y, stamp_x)`` whose last two axes are
as large as the largest source's box; source ``k``'s box starts at pixel
``(stamp_y0[k], stamp_x0[k])`` of the node's ``y``, ``x`` grid (same
coordinate values as ``y``, ``x``) and is zero outside the source's own
extent. Memory and file size follow the sources, not the frame times the
number of sources. :func:`source_image` pastes one source back into the
full grid.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["STAMP_Y", "STAMP_X", "pack_stamps", "source_image", "stamp_box"]

STAMP_Y, STAMP_X = "stamp_y", "stamp_x"


def pack_stamps(stamps, lead_shape, dtype=np.float32):
    """Pack ``[(y0, x0, array (..., h, w)) or None]`` into one zero-padded array.

    Parameters
    ----------
    stamps : sequence of (int, int, array) or None
        Per source: its box origin in grid pixels (0-based) and its values;
        None for a source with nothing on the grid.
    lead_shape : tuple of int
        Shape of the axes between ``source`` and the pixels (e.g. ``(band,)``
        or ``()``).
    dtype : numpy dtype

    Returns
    -------
    values : numpy.ndarray (source, *lead_shape, stamp_y, stamp_x)
    y0, x0 : numpy.ndarray (source,) of int
        Box origins (0 for empty sources).
    """
    n = len(stamps)
    h = max((s[2].shape[-2] for s in stamps if s is not None), default=1)
    w = max((s[2].shape[-1] for s in stamps if s is not None), default=1)
    values = np.zeros((n, *lead_shape, h, w), dtype)
    y0 = np.zeros(n, np.int64)
    x0 = np.zeros(n, np.int64)
    for k, st in enumerate(stamps):
        if st is None:
            continue
        y0[k], x0[k] = int(st[0]), int(st[1])
        arr = np.asarray(st[2])
        if arr.shape[:-2] != tuple(lead_shape):
            raise ValueError(f"stamp {k} has leading shape {arr.shape[:-2]}; expected {tuple(lead_shape)}")
        values[(k, ..., slice(0, arr.shape[-2]), slice(0, arr.shape[-1]))] = arr
    return values, y0, x0


def stamp_box(node, source: int):
    """Box of one source in a stamp node: ``(iy0, ix0, h, w)`` in array indices of its ``y``, ``x`` grid.

    Parameters
    ----------
    node : xarray.Dataset or DataTree node
        A node with ``stamp_y0``, ``stamp_x0`` and ``y``, ``x`` coordinates.
    source : int
        Position of the source along ``source``.

    Returns
    -------
    tuple of int
        First row and column (array indices, may be negative or run past the
        grid: clip before use) and the stamp size.
    """
    ds = node.to_dataset() if isinstance(node, xr.DataTree) else node
    gy0, gx0 = int(ds["y"].values[0]), int(ds["x"].values[0])
    return (int(ds["stamp_y0"].values[source]) - gy0, int(ds["stamp_x0"].values[source]) - gx0,
            ds.sizes[STAMP_Y], ds.sizes[STAMP_X])


def source_image(node, var: str, source: int) -> np.ndarray:
    """One source's image from a stamp node, pasted into the node's full ``y``, ``x`` grid.

    Parameters
    ----------
    node : xarray.Dataset or DataTree node
        ``/model`` or ``/deblended/<name>`` of a results tree.
    var : str
        The variable, e.g. ``"model"``, ``"image"`` or ``"footprint"``.
    source : int
        Position of the source along ``source``.

    Returns
    -------
    numpy.ndarray (..., y, x)
        Zero (False) outside the source's box.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> vals, y0, x0 = pack_stamps([(1, 2, np.ones((1, 2, 2)))], (1,))
    >>> ds = xr.Dataset({"m": (("source", "band", STAMP_Y, STAMP_X), vals),
    ...                  "stamp_y0": ("source", y0), "stamp_x0": ("source", x0)},
    ...                 coords={"y": np.arange(4), "x": np.arange(5)})
    >>> source_image(ds, "m", 0)[0].astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]
    """
    ds = node.to_dataset() if isinstance(node, xr.DataTree) else node
    arr = ds[var].values[source]
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    out = np.zeros(arr.shape[:-2] + (ny, nx), arr.dtype)
    iy, ix, h, w = stamp_box(ds, source)
    ys0, xs0 = max(iy, 0), max(ix, 0)
    ys1, xs1 = min(iy + h, ny), min(ix + w, nx)
    if ys1 > ys0 and xs1 > xs0:
        out[..., ys0:ys1, xs0:xs1] = arr[..., ys0 - iy : ys1 - iy, xs0 - ix : xs1 - ix]
    return out
