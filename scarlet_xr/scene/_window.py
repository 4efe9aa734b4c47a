"""Windowed fitting: far-apart groups of sources on a large image fitted on their own cutouts.

A source's model lives in a box of at most ``max_box`` pixels, so sources
whose largest possible boxes cannot overlap do not interact in the fit. On a
large image with such separate groups, fitting each group on a window of the
image around it gives the same answer as fitting the whole frame, at a cost
set by the windows instead of the frame (a 5 x 2000 x 2000 image with a few
bright sources: every optimizer step would otherwise convolve 20 million
pixels). Windows have sizes rounded up to :data:`WINDOW_STEP` so that groups
of similar extent share compiled programs.

:func:`plan_windows` decides; :func:`fit_sources` (``windows="auto"``) uses it.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..wcs import Frame
from ..xr import grid_offset, shift_wcs

__all__ = ["plan_windows", "fit_memory_estimate", "available_memory", "check_fit_memory",
           "WINDOW_MIN_PIXELS", "WINDOW_MAX_COVER", "WINDOW_STEP"]

logger = logging.getLogger("scarlet_xr")

WINDOW_MIN_PIXELS = 2_000_000
"""Frames with fewer pixels times bands are fitted whole by default (``windows="auto"``).

Below this size a whole-frame fit costs about as much as the windows' compiles
(measured: 1024 x 1024 x 2 bands, three galaxies in two groups, 9.7 s whole and
9.8 s in windows; 560 x 560 x 2: 5.9 s whole, 8.8 s in windows). Above it the
per-step cost of the frame dominates (5 x 2000 x 2000, five bright sources:
more than 19 min whole, 73 s in four windows)."""

FIT_MEMORY_BASE = 0.5e9
"""Bytes a fit needs whatever its size (the interpreter, JAX, compiled programs)."""

FIT_MEMORY_PER_PIXEL = 80.0
"""Bytes per pixel and band of the fitted image(s) (measured peak RSS of whole-frame fits of
1024^2 x 2, 1024^2 x 5 and 2048^2 x 2 bands: 0.63, 0.85, 0.97 GB, i.e. 55-70 bytes plus the base;
5 x 2000^2 with free-form sources: 1.55 GB)."""

WINDOW_MAX_COVER = 0.5
"""``windows="auto"`` splits only when the windows cover at most this fraction of the frame."""

WINDOW_STEP = 32
"""Window sizes are rounded up to a multiple of this (shared compiled shapes)."""

WINDOW_MARGIN = 16
"""Pixels beyond a source's largest box that its window keeps (noise and the PSF's wings)."""


def _groups(centers: np.ndarray, link: float) -> list[np.ndarray]:
    """Connected groups of sources closer than ``link`` along both axes (union-find)."""
    n = len(centers)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = np.argsort(centers[:, 0], kind="stable")
    ys = centers[order, 0]
    for a in range(n):
        b = a + 1
        while b < n and ys[b] - ys[a] < link:
            i, j = order[a], order[b]
            if abs(centers[i, 1] - centers[j, 1]) < link:
                parent[root(i)] = root(j)
            b += 1
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [np.array(sorted(g)) for g in sorted(groups.values(), key=min)]


def _span(lo: float, hi: float, reach: int, size_max: int) -> tuple[int, int]:
    """Window ``[start, stop)`` holding ``[lo - reach, hi + reach]``, size a multiple of WINDOW_STEP."""
    need = int(np.ceil(hi + reach)) - int(np.floor(lo - reach)) + 1
    size = min(int(np.ceil(need / WINDOW_STEP)) * WINDOW_STEP, size_max)
    mid = 0.5 * (lo + hi)
    start = int(round(mid - size / 2))
    start = min(max(start, 0), size_max - size)
    return start, start + size


def plan_windows(shape, centers, max_box: int, *, windows="auto", num_bands: int = 1):
    """Windows of the frame that hold separate groups of sources, or None to fit the frame whole.

    Sources closer (along both axes) than ``max_box + 2 * WINDOW_MARGIN``
    pixels could share light and form one group; each group gets a window
    reaching ``max_box / 2 + WINDOW_MARGIN`` pixels beyond its sources.

    Parameters
    ----------
    shape : (int, int)
        Frame shape.
    centers : array (n, 2)
        Source centres ``(y, x)`` in frame pixels.
    max_box : int
        Largest box a source's model may have.
    windows : {"auto", True, False}
        ``"auto"``: split only frames of at least :data:`WINDOW_MIN_PIXELS`
        pixels times ``num_bands`` whose windows cover at most :data:`WINDOW_MAX_COVER` of them;
        True: split whenever there is more than one group or the one group's
        window is smaller than the frame; False: never.
    num_bands : int
        Bands of the frame (for the ``"auto"`` size threshold).

    Returns
    -------
    list of (indices, (y0, y1, x0, x1)) or None
    """
    if windows not in ("auto", True, False):
        raise ValueError(f"windows must be 'auto', True or False; got {windows!r}")
    ny, nx = int(shape[0]), int(shape[1])
    centers = np.atleast_2d(np.asarray(centers, float))
    if windows is False or len(centers) == 0:
        return None
    reach = max_box // 2 + WINDOW_MARGIN
    plan = []
    for idx in _groups(centers, 2 * reach):
        c = centers[idx]
        y0, y1 = _span(c[:, 0].min(), c[:, 0].max(), reach, ny)
        x0, x1 = _span(c[:, 1].min(), c[:, 1].max(), reach, nx)
        plan.append((idx, (y0, y1, x0, x1)))
    area = sum((y1 - y0) * (x1 - x0) for _, (y0, y1, x0, x1) in plan)
    if len(plan) == 1 and plan[0][1] == (0, ny, 0, nx):
        return None
    if windows == "auto" and (ny * nx * num_bands < WINDOW_MIN_PIXELS or area > WINDOW_MAX_COVER * ny * nx):
        return None
    return plan


def window_frame(frame: Frame, box) -> Frame:
    """The part ``(y0, y1, x0, x1)`` of ``frame`` as a frame of its own (same model PSF and bands)."""
    y0, y1, x0, x1 = box
    wcs = None if frame.wcs is None else shift_wcs(frame.wcs, y0, x0)
    return Frame(frame.bands, (y1 - y0, x1 - x0), wcs=wcs,
                 origin=(frame.origin[0] + y0, frame.origin[1] + x0), psf_sigma=frame.psf_sigma,
                 epochs=frame.epochs)


def window_observations(obs: dict, frame: Frame, box) -> dict:
    """Cut each observation (on the frame's pixel grid) to the window ``box`` of ``frame``.

    Observations that do not reach into the window are left out.

    Raises
    ------
    ValueError
        If an observation is not on the frame's pixel grid (it would need
        resampling: windows are not cut for such observations).
    """
    y0, y1, x0, x1 = box
    out = {}
    for name, ds in obs.items():
        off = grid_offset(ds, frame)
        if off is None:
            raise ValueError(f"observation {name!r} is not on the frame's pixel grid; it cannot be cut "
                             "into windows")
        ny, nx = ds["data"].shape[1:]
        ya, yb = max(y0 - off[0], 0), min(y1 - off[0], ny)
        xa, xb = max(x0 - off[1], 0), min(x1 - off[1], nx)
        if yb - ya < 1 or xb - xa < 1:
            continue
        out[name] = ds.isel(y=slice(ya, yb), x=slice(xa, xb))
    return out


def on_frame_grid(obs: dict, frame: Frame) -> bool:
    """True when every observation is on the frame's pixel grid (no resampling)."""
    return all(grid_offset(ds, frame) is not None for ds in obs.values())


def fit_memory_estimate(obs: dict, frame: Frame) -> float:
    """Bytes a whole-frame fit of ``obs`` on ``frame`` is expected to need at its peak.

    :data:`FIT_MEMORY_BASE` plus :data:`FIT_MEMORY_PER_PIXEL` per pixel and band
    of the larger of the frame and the observations (measured on fits of 2 to
    20 million pixel-bands; the estimate is 10-40 % above the measured peaks).
    """
    npix = sum(int(np.prod(ds["data"].shape)) for ds in obs.values())
    npix = max(npix, len(frame.bands) * frame.shape[0] * frame.shape[1])
    return FIT_MEMORY_BASE + FIT_MEMORY_PER_PIXEL * npix


def available_memory() -> float | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` on Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fit_memory(obs: dict, frame: Frame, *, available=None) -> None:
    """Refuse, before any work, a whole-frame fit that would not fit in memory.

    Parameters
    ----------
    obs : dict of Datasets
    frame : Frame
    available : float, optional
        Bytes available (default: :func:`available_memory`; no check when unknown).

    Raises
    ------
    MemoryError
        If :func:`fit_memory_estimate` exceeds the available memory; the message
        gives both and what to do instead.
    """
    available = available_memory() if available is None else float(available)
    need = fit_memory_estimate(obs, frame)
    if available is None or need <= available:
        logger.debug("whole-frame fit: about %.2f GB needed", need / 1e9)
        return
    ny, nx = frame.shape
    raise MemoryError(
        f"fitting the {len(frame.bands)} x {ny} x {nx} frame whole needs about {need / 1e9:.1f} GB; "
        f"{available / 1e9:.1f} GB is available. Its sources are too close together to be fitted in "
        "separate windows: cut the image into blends with `scarlet-xr survey FIELD.fits` "
        "(scarlet_xr.survey.deblend_field), which reads the field in windows, or fit a smaller cutout"
    )
