"""The model frame: bands, pixel grid, optional celestial WCS, model PSF."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..core import gaussian_psf_image
from ._cutout import shift_wcs

if TYPE_CHECKING:  # (astropy is imported where a WCS is used: `import scarlet_xr` stays light)
    from astropy.wcs import WCS

__all__ = ["Frame", "DEFAULT_MODEL_PSF_SIGMA", "celestial_frame", "is_icrs_like", "normalize_epochs",
           "observation_epochs"]

logger = logging.getLogger(__name__)

_SUPPORTED_CTYPES = {"RA--": "equatorial", "GLON": "galactic", "SLON": "supergalactic"}


def celestial_frame(wcs: WCS):
    """The astropy celestial frame of a celestial WCS (ICRS, FK5, FK4, Galactic, ...).

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        A WCS with celestial axes.

    Returns
    -------
    astropy.coordinates.BaseCoordinateFrame

    Raises
    ------
    ValueError
        If the WCS is not celestial or its frame is not supported (ecliptic,
        planetary, helioprojective ...): expected equatorial (``RA``/``DEC``,
        ``RADESYS`` ICRS, FK5, FK4), galactic (``GLON``/``GLAT``) or
        supergalactic (``SLON``/``SLAT``).
    """
    from astropy.wcs.utils import wcs_to_celestial_frame

    if not wcs.has_celestial:
        raise ValueError(f"the WCS must be celestial (RA/Dec axes); got axes {list(wcs.wcs.ctype)}")
    cel = wcs.celestial
    lon = str(cel.wcs.ctype[cel.wcs.lng])[:4].upper()
    if lon not in _SUPPORTED_CTYPES:
        raise ValueError(
            f"unsupported celestial WCS axes {list(cel.wcs.ctype)}: expected equatorial (RA---/DEC--), "
            "galactic (GLON/GLAT) or supergalactic (SLON/SLAT)"
        )
    try:
        return wcs_to_celestial_frame(cel)
    except ValueError as err:
        raise ValueError(f"cannot tell the celestial frame of WCS axes {list(cel.wcs.ctype)}: {err}") from err


def is_icrs_like(frame) -> bool:
    """True for ICRS and FK5 (equinox J2000), which astropy treats as identical (< 1 mas).

    Positions in such a frame are used as ICRS without conversion.
    """
    from astropy.coordinates import FK5, ICRS
    from astropy.time import Time

    if isinstance(frame, ICRS):
        return True
    return isinstance(frame, FK5) and abs((frame.equinox - Time("J2000")).to_value("day")) < 1e-6


def _lonlat(wcs: WCS, world):
    """``(lon, lat)`` from world values in the axis order of ``wcs``."""
    a, b = world
    return (a, b) if wcs.wcs.lng == 0 else (b, a)


def _world(wcs: WCS, lon, lat):
    """World values in the axis order of ``wcs`` from ``(lon, lat)``."""
    return (lon, lat) if wcs.wcs.lng == 0 else (lat, lon)

DEFAULT_MODEL_PSF_SIGMA = 0.8
"""Width (pixels) of the model frame's Gaussian PSF."""


class Frame:
    """The grid on which sources are modelled.

    Parameters
    ----------
    bands : sequence of str
        Band names (the spectrum axis).
    shape : (int, int)
        ``(ny, nx)`` pixels.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of pixel ``(0, 0)`` of this frame.
    origin : (int, int)
        Pixel index of this frame's ``(0, 0)`` in the parent image the
        coordinates refer to (observations keep the indices of their original
        frame).
    psf_sigma : float
        Width of the model PSF in pixels (default 0.8).
    epochs : sequence, optional
        Epochs of the observations (numbers such as MJD, ``numpy.datetime64``
        or string labels), for scenes with variable sources (see
        :class:`~scarlet_xr.core.LightCurve`); numbers and dates are sorted,
        labels keep their order. Default: none (a static scene).
    """

    def __init__(
        self,
        bands: Sequence[str],
        shape: tuple[int, int],
        *,
        wcs: WCS | None = None,
        origin: tuple[int, int] = (0, 0),
        psf_sigma: float = DEFAULT_MODEL_PSF_SIGMA,
        epochs: Sequence | None = None,
    ):
        bands = tuple(str(b) for b in bands)
        if len(bands) == 0:
            raise ValueError("a frame needs at least one band")
        if len(set(bands)) != len(bands):
            raise ValueError(f"band names must be unique; got {bands}")
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (ny, nx) with positive sizes; got {shape}")
        if wcs is not None and not wcs.has_celestial:
            raise ValueError("frame WCS must be celestial (RA/Dec axes)")
        self.bands = bands
        self.shape = (int(shape[0]), int(shape[1]))
        self.wcs = wcs.celestial if wcs is not None else None
        self.sky_frame = None if wcs is None else celestial_frame(self.wcs)
        """astropy frame of the WCS (ICRS, FK5, Galactic ...); None without WCS."""
        self._icrs_like = self.sky_frame is None or is_icrs_like(self.sky_frame)
        self.origin = (int(origin[0]), int(origin[1]))
        self.psf_sigma = float(psf_sigma)
        size = 2 * int(math.ceil(4 * self.psf_sigma)) + 1
        self.psf = gaussian_psf_image(self.psf_sigma, max(size, 7))
        self.epochs = normalize_epochs(epochs)
        """Epochs of the observations (empty: no time axis)."""

    def with_epochs(self, epochs) -> Frame:
        """A copy of this frame with the given epochs (see the ``epochs`` parameter)."""
        new = copy.copy(self)
        new.epochs = normalize_epochs(epochs)
        return new

    def epoch_index(self, epoch) -> int | None:
        """Index of ``epoch`` in :attr:`epochs`; None for None on a frame without epochs.

        Raises
        ------
        ValueError
            An observation without an epoch on a frame with epochs, one with an
            epoch on a frame without, or an epoch that is not in the frame.
        """
        if epoch is None:
            if self.epochs:
                raise ValueError(
                    f"the frame has epochs {list(self.epochs)} but an observation has no epoch: give "
                    "every observation an `epoch` coordinate, or none"
                )
            return None
        value = _epoch_value(epoch)
        if value not in self.epochs:
            raise ValueError(f"observation epoch {epoch!r} is not one of the frame's epochs "
                             f"{list(self.epochs) or '(none)'}")
        return self.epochs.index(value)

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        """``(band, ny, nx)``."""
        return (len(self.bands),) + self.shape

    def band_index(self, bands: Sequence[str]) -> list[int]:
        """Indices of ``bands`` in this frame; raises ``ValueError`` for unknown bands."""
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise ValueError(f"bands {missing} are not in the frame bands {self.bands}")
        return [self.bands.index(b) for b in bands]

    @property
    def sky_frame_name(self) -> str | None:
        """Name of the WCS's celestial frame (``"icrs"``, ``"fk5"``, ``"galactic"`` ...)."""
        return None if self.sky_frame is None else str(self.sky_frame.name)

    def pixel_to_sky(self, y, x):
        """ICRS ``(ra, dec)`` in degrees of frame pixel coordinates (needs a WCS).

        A WCS in another celestial frame (galactic, FK4 ...) is evaluated in
        its own frame and the positions are converted to ICRS with astropy.
        """
        if self.wcs is None:
            raise ValueError("this frame has no WCS; sky coordinates are unavailable")
        world = self.wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
        lon, lat = _lonlat(self.wcs, world)
        if self._icrs_like:
            return np.asarray(lon), np.asarray(lat)
        from astropy.coordinates import SkyCoord

        c = SkyCoord(np.asarray(lon), np.asarray(lat), unit="deg", frame=self.sky_frame).icrs
        return np.asarray(c.ra.deg), np.asarray(c.dec.deg)

    def sky_to_pixel(self, ra, dec):
        """Frame pixel ``(y, x)`` of ICRS ``ra``, ``dec`` in degrees (needs a WCS).

        Positions are converted from ICRS into the WCS's frame when that is
        not ICRS (see :attr:`sky_frame`).
        """
        if self.wcs is None:
            raise ValueError("this frame has no WCS; sky coordinates are unavailable")
        lon, lat = np.asarray(ra, float), np.asarray(dec, float)
        if not self._icrs_like:
            from astropy.coordinates import SkyCoord

            c = SkyCoord(lon, lat, unit="deg", frame="icrs").transform_to(self.sky_frame)
            lon, lat = np.asarray(c.spherical.lon.deg), np.asarray(c.spherical.lat.deg)
        x, y = self.wcs.world_to_pixel_values(*_world(self.wcs, lon, lat))
        return np.asarray(y), np.asarray(x)

    @property
    def pixel_scale(self) -> float | None:
        """Pixel scale in arcsec (None without WCS)."""
        if self.wcs is None:
            return None
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.mean(proj_plane_pixel_scales(self.wcs)) * 3600)

    # -- sky helpers -------------------------------------------------------
    def to_pixel(self, coords) -> np.ndarray:
        """Frame pixel centres ``(n, 2)`` as ``(y, x)`` for sky positions.

        Parameters
        ----------
        coords : astropy.coordinates.SkyCoord or array (n, 2) or (2,)
            A ``SkyCoord`` (any celestial frame; converted to the frame's) or
            ``(ra, dec)`` pairs in degrees.

        Returns
        -------
        numpy.ndarray (n, 2)

        Raises
        ------
        ValueError
            If the frame has no WCS or ``coords`` has the wrong shape.
        """
        if self.wcs is None:
            raise ValueError("this frame has no WCS; sky coordinates are unavailable")
        from astropy.coordinates import SkyCoord

        if isinstance(coords, SkyCoord):
            c = (coords.reshape(-1) if coords.ndim else coords[None]).icrs
            y, x = self.sky_to_pixel(c.ra.deg, c.dec.deg)
            return np.stack([np.asarray(y, float), np.asarray(x, float)], axis=1)
        arr = np.asarray(coords, float)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"sky positions must be (n, 2) as (ra, dec) in degrees; got shape {arr.shape}")
        y, x = self.sky_to_pixel(arr[:, 0], arr[:, 1])
        return np.stack([y, x], axis=1)

    def to_sky(self, centers):
        """ICRS sky positions (``SkyCoord``) of frame pixel centres ``(n, 2)`` given as ``(y, x)``."""
        if self.wcs is None:
            raise ValueError("this frame has no WCS; sky coordinates are unavailable")
        from astropy.coordinates import SkyCoord

        c = np.atleast_2d(np.asarray(centers, float))
        if c.shape[-1] != 2:
            raise ValueError(f"centers must be (n, 2) as (y, x); got shape {c.shape}")
        ra, dec = self.pixel_to_sky(c[:, 0], c[:, 1])
        return SkyCoord(ra, dec, unit="deg", frame="icrs")

    def arcsec_to_pixels(self, arcsec):
        """Convert a size in arcsec (float or ``astropy.units.Quantity``) to frame pixels."""
        if self.wcs is None:
            raise ValueError("this frame has no WCS; sizes in arcsec cannot be converted")
        if hasattr(arcsec, "to_value"):
            arcsec = arcsec.to_value("arcsec")
        return np.asarray(arcsec, float) / self.pixel_scale

    # -- construction from observations -----------------------------------
    @classmethod
    def from_observations(
        cls,
        observations,
        *,
        resolution: float | None = None,
        coverage: str = "union",
        psf_sigma: float = DEFAULT_MODEL_PSF_SIGMA,
    ) -> Frame:
        """Model frame for observations, possibly from several instruments.

        Observations are read by duck typing (this layer does not import
        xarray): anything following the observation convention of
        :func:`scarlet_xr.make_observation` (``obs["data"]`` with dims
        ``(band, y, x)``, ``obs["band"]``, integer ``obs["y"]``/``obs["x"]``
        and ``obs.attrs["wcs_header"]``). :func:`scarlet_xr.frame_from_observations`
        validates the observations first and then does the same.

        Observations on one pixel grid (same pixel scale matrix, integer
        offsets) give a frame on that grid covering all of them. Otherwise the
        frame is north-up with pixel scale ``resolution`` (default: the finest
        observation's) and is aligned with the finest observation's pixels
        when that one is north-up at this scale (so it needs no resampling).

        Parameters
        ----------
        observations : sequence or mapping of observations
        resolution : float, optional
            Model pixel scale in arcsec.
        coverage : {"union", "intersection"}
            Sky region of the frame: covering every observation, or only where
            all overlap (bounding boxes).
        psf_sigma : float
            Model PSF width in model pixels.

        Returns
        -------
        Frame
        """
        if isinstance(observations, dict):
            observations = list(observations.values())
        elif hasattr(observations, "attrs"):
            observations = [observations]
        grids = [_grid_of(o) for o in observations]
        frame = cls.from_grids(grids, resolution=resolution, coverage=coverage, psf_sigma=psf_sigma)
        return frame.with_epochs(observation_epochs(observations))

    @classmethod
    def from_grids(
        cls,
        grids,
        *,
        resolution: float | None = None,
        coverage: str = "union",
        psf_sigma: float = DEFAULT_MODEL_PSF_SIGMA,
    ) -> Frame:
        """Model frame from pixel-grid descriptions (see :meth:`from_observations`).

        Parameters
        ----------
        grids : sequence of tuple
            Per observation ``(bands, (ny, nx), wcs or None, (y0, x0))``: band
            names, image shape, celestial WCS of the cutout's pixel ``(0, 0)``
            and that pixel's index in its parent image.
        resolution, coverage, psf_sigma
            See :meth:`from_observations`.
        """
        return _frame_from_grids(cls, list(grids), resolution, coverage, psf_sigma)


    def __repr__(self) -> str:
        ep = f", epochs={len(self.epochs)}" if self.epochs else ""
        return (
            f"Frame(bands={self.bands}, shape={self.shape}, origin={self.origin}, "
            f"wcs={self.sky_frame_name or 'no'}, psf_sigma={self.psf_sigma}{ep})"
        )


def _epoch_value(epoch):
    """A hashable epoch: float for numbers, ``numpy.datetime64`` for dates, str for labels."""
    e = np.asarray(epoch)
    if e.ndim != 0:
        raise ValueError(f"an epoch is one value; got an array of shape {e.shape}")
    if e.dtype.kind in "iuf":
        v = float(e)
        if not np.isfinite(v):
            raise ValueError(f"an epoch must be finite; got {v}")
        return v
    if e.dtype.kind == "M":
        return np.datetime64(e[()], "ns")
    if e.dtype.kind in "UO":
        return str(e[()])
    raise ValueError(f"an epoch must be a number (e.g. MJD), a datetime64 or a label; got dtype {e.dtype}")


def observation_epochs(observations) -> tuple:
    """The epochs of observations (their scalar ``epoch`` coordinate), all or none.

    Parameters
    ----------
    observations : sequence of observations (duck-typed: ``obs.coords``)

    Returns
    -------
    tuple
        See :func:`normalize_epochs`; empty when no observation has an epoch.

    Raises
    ------
    ValueError
        When some observations have an epoch and others do not.
    """
    found = [o.coords["epoch"].values if "epoch" in getattr(o, "coords", {}) else None for o in observations]
    have = [f is not None for f in found]
    if any(have) and not all(have):
        names = [str(o.attrs.get("name", i))
                 for i, (o, h) in enumerate(zip(observations, have, strict=True)) if not h]
        raise ValueError(f"observations {names} have no epoch coordinate but others do: give every "
                         "observation an epoch, or none")
    return normalize_epochs([f for f in found if f is not None])


def normalize_epochs(epochs) -> tuple:
    """Epochs as a tuple of unique values: numbers and dates sorted, labels in their order.

    Parameters
    ----------
    epochs : sequence or None

    Returns
    -------
    tuple

    Raises
    ------
    ValueError
        Mixed kinds (numbers with labels) or an epoch of another type.

    Examples
    --------
    >>> normalize_epochs([59001.5, 59000.5, 59001.5])
    (59000.5, 59001.5)
    """
    if epochs is None:
        return ()
    vals = []
    for e in epochs:
        v = _epoch_value(e)
        if v not in vals:
            vals.append(v)
    kinds = {type(v) for v in vals}
    if len(kinds) > 1:
        raise ValueError(f"epochs must all be numbers, all dates or all labels; got {vals}")
    if vals and not isinstance(vals[0], str):
        vals.sort()
    return tuple(vals)


def _grid_of(obs):
    """``(bands, shape, wcs, origin)`` of an observation following the Dataset convention."""
    from astropy.io import fits

    try:
        shape = tuple(int(s) for s in obs["data"].shape[-2:])
        bands = [str(b) for b in np.asarray(obs["band"].values)]
        y0, x0 = int(obs["y"].values[0]), int(obs["x"].values[0])
        header = obs.attrs.get("wcs_header")
    except (KeyError, TypeError, AttributeError) as err:
        raise TypeError(
            "observations must follow the scarlet_xr observation convention (data, band, y, x, "
            f"attrs); got {type(obs).__name__}"
        ) from err
    wcs = None
    if header is not None:
        from astropy.wcs import WCS

        wcs = WCS(fits.Header.fromstring(header), relax=True).celestial
        wcs = shift_wcs(wcs, y0, x0)
    return bands, shape, wcs, (y0, x0)


def _check_grids(grids):
    if not grids:
        raise ValueError("at least one observation is required")
    for g in grids:
        if len(g) != 4:
            raise ValueError(f"each grid must be (bands, shape, wcs, origin); got {len(g)} items")


def _union_bands(grids):
    bands = []
    for g in grids:
        for b in g[0]:
            if str(b) not in bands:
                bands.append(str(b))
    return bands


def _scale_matrix(wcs):
    return np.asarray(wcs.pixel_scale_matrix, float)


def _offset_in(ref, wcs):
    """Pixel position (y, x) of ``wcs``'s pixel (0, 0) in ``ref``'s pixel grid."""
    x, y = ref.world_to_pixel_values(*_world(ref, *_lonlat(wcs, wcs.pixel_to_world_values(0.0, 0.0))))
    return np.array([float(y), float(x)])


def _check_sky_frames(wcss) -> None:
    """All WCSs must share one celestial frame (ICRS and FK5 J2000 count as one)."""
    frames = [celestial_frame(w) for w in wcss]
    ref = frames[0]
    for i, f in enumerate(frames[1:], start=1):
        same = (is_icrs_like(ref) and is_icrs_like(f)) or ref.is_equivalent_frame(f)
        if not same:
            raise ValueError(
                f"the observations' WCSs are in different celestial frames: observation 0 in {ref.name!r}, "
                f"observation {i} in {f.name!r}; expected one frame for all (reproject the images to a "
                "common frame first)"
            )


def _check_overlap(boxes, frame=None) -> None:
    """Every observation must overlap another one (boxes ``(ylo, yhi, xlo, xhi)`` in one pixel grid)."""
    n = len(boxes)
    if n < 2:
        return
    for i in range(n):
        a = boxes[i]
        if any(
            min(a[1], b[1]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[2], b[2])
            for j, b in enumerate(boxes) if j != i
        ):
            continue
        where = ""
        if frame is not None and frame.wcs is not None:
            ra, dec = frame.pixel_to_sky(
                np.array([(b[0] + b[1]) / 2 for b in boxes]), np.array([(b[2] + b[3]) / 2 for b in boxes])
            )
            at = [f"observation {k} at ra={ra[k]:.5f} dec={dec[k]:.5f}" for k in range(n)]
            where = " (centres, ICRS deg: " + ", ".join(at) + ")"
        raise ValueError(
            f"observation {i} does not overlap any other observation on the sky{where}; expected "
            "observations of one region (fit them separately)"
        )


def _frame_from_grids(cls, grids, resolution, coverage, psf_sigma):
    _check_grids(grids)
    if coverage not in ("union", "intersection"):
        raise ValueError(f"coverage must be 'union' or 'intersection'; got {coverage!r}")
    bands = _union_bands(grids)
    wcss = [g[2] for g in grids]
    if any(w is None for w in wcss):
        if resolution is not None:
            raise ValueError("resolution= needs every observation to have a WCS")
        return _same_grid_frame(cls, grids, bands, [None] * len(grids), psf_sigma, coverage)
    _check_sky_frames(wcss)
    first = wcss[0]
    offsets = [_offset_in(first, w) for w in wcss]
    same = all(
        np.allclose(_scale_matrix(w), _scale_matrix(first), rtol=1e-6, atol=1e-12) for w in wcss
    ) and all(np.allclose(o, np.round(o), atol=1e-3) for o in offsets)
    if same and resolution is not None:
        same = abs(_pixel_scale(first) - float(resolution)) < 1e-6 * float(resolution)
    if same:
        return _same_grid_frame(cls, grids, bands, offsets, psf_sigma, coverage)
    return _sky_frame(cls, grids, bands, resolution, coverage, psf_sigma)


def _pixel_scale(wcs) -> float:
    return float(np.sqrt(abs(np.linalg.det(_scale_matrix(wcs)))) * 3600)


def _same_grid_frame(cls, grids, bands, offsets, psf_sigma, coverage="union"):
    """All observations on one pixel grid: their pixel ranges (parent indices of the first)."""
    fy0, fx0 = grids[0][3]
    starts = []
    for (_, _, _, (y0, x0)), off in zip(grids, offsets, strict=True):
        if off is None:
            starts.append((y0, x0))
        else:
            starts.append((fy0 + int(round(off[0])), fx0 + int(round(off[1]))))
    _check_overlap([(s[0], s[0] + g[1][0], s[1], s[1] + g[1][1]) for s, g in zip(starts, grids, strict=True)])
    lo, hi = (min, max) if coverage == "union" else (max, min)
    y0 = lo(s[0] for s in starts)
    x0 = lo(s[1] for s in starts)
    y1 = hi(s[0] + g[1][0] for s, g in zip(starts, grids, strict=True))
    x1 = hi(s[1] + g[1][1] for s, g in zip(starts, grids, strict=True))
    if y1 <= y0 or x1 <= x0:
        raise ValueError("the observations do not overlap; coverage='intersection' needs a common region")
    wcs = next((g[2] for g in grids if g[2] is not None), None)
    if wcs is not None:
        k = next(i for i, g in enumerate(grids) if g[2] is not None)
        dy, dx = y0 - starts[k][0], x0 - starts[k][1]
        wcs = shift_wcs(wcs, dy, dx)
    return cls(bands, (y1 - y0, x1 - x0), wcs=wcs, origin=(y0, x0), psf_sigma=psf_sigma)


def _north_up(wcs, scale_arcsec) -> bool:
    m = _scale_matrix(wcs) * 3600
    return bool(np.allclose(m, np.diag([-scale_arcsec, scale_arcsec]), rtol=1e-6, atol=1e-9 * scale_arcsec))


def _footprint(wcs, shape, frame_wcs):
    """Bounding box ``(ymin, ymax, xmin, xmax)`` of an image's pixel-edge outline in frame pixels."""
    ny, nx = shape
    t = np.linspace(0, 1, 9)
    ys = np.concatenate([t * ny, np.full(9, ny), t * ny, np.zeros(9)]) - 0.5
    xs = np.concatenate([np.zeros(9), t * nx, np.full(9, nx), t * nx]) - 0.5
    lon, lat = _lonlat(wcs, wcs.pixel_to_world_values(xs, ys))
    fx, fy = frame_wcs.world_to_pixel_values(*_world(frame_wcs, lon, lat))
    return fy.min(), fy.max(), fx.min(), fx.max()


def _sky_frame(cls, grids, bands, resolution, coverage, psf_sigma):
    """North-up frame at ``resolution`` arcsec covering the observations' union or intersection."""
    scales = [_pixel_scale(g[2]) for g in grids]
    res = float(min(scales) if resolution is None else resolution)
    if not res > 0:
        raise ValueError(f"resolution must be > 0 arcsec; got {resolution}")
    k = int(np.argmin(scales))
    ref = grids[k][2]
    aligned = _north_up(ref, res)
    if aligned:
        fwcs = ref.deepcopy()
        base = grids[k][3]
    else:
        ny, nx = grids[k][1]
        ra, dec = ref.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        lon, lat = _lonlat(ref, (ra, dec))
        lon_t, lat_t = (str(ref.wcs.ctype[k])[:4] for k in (ref.wcs.lng, ref.wcs.lat))
        from astropy.wcs import WCS

        fwcs = WCS(naxis=2)  # north-up (in the observations' own celestial frame), longitude first
        fwcs.wcs.ctype = [f"{lon_t:-<5}TAN", f"{lat_t:-<5}TAN"]
        fwcs.wcs.crval = [float(lon), float(lat)]
        fwcs.wcs.crpix = [1.0, 1.0]
        fwcs.wcs.cdelt = [-res / 3600, res / 3600]
        fwcs.wcs.cunit = ["deg", "deg"]
        if ref.wcs.radesys:
            fwcs.wcs.radesys = ref.wcs.radesys
        if np.isfinite(ref.wcs.equinox):
            fwcs.wcs.equinox = ref.wcs.equinox
        fwcs.wcs.set()
        base = (0, 0)
    boxes = np.array([_footprint(g[2], g[1], fwcs) for g in grids])
    if coverage == "union":
        _check_overlap(boxes, Frame(bands, (1, 1), wcs=fwcs))
    tol = 1e-6
    if coverage == "union":
        ylo, yhi, xlo, xhi = boxes[:, 0].min(), boxes[:, 1].max(), boxes[:, 2].min(), boxes[:, 3].max()
        y0, x0 = int(np.floor(ylo + 0.5 + tol)), int(np.floor(xlo + 0.5 + tol))
        y1, x1 = int(np.ceil(yhi - 0.5 - tol)), int(np.ceil(xhi - 0.5 - tol))
    else:
        ylo, yhi, xlo, xhi = boxes[:, 0].max(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].min()
        y0, x0 = int(np.ceil(ylo + 0.5 - tol)), int(np.ceil(xlo + 0.5 - tol))
        y1, x1 = int(np.floor(yhi - 0.5 + tol)), int(np.floor(xhi - 0.5 + tol))
    if y1 < y0 or x1 < x0:
        raise ValueError(
            "the observations do not overlap on the sky; coverage='intersection' needs a common "
            "region (use coverage='union')"
        )
    fwcs = shift_wcs(fwcs, y0, x0)
    origin = (base[0] + y0, base[1] + x0) if aligned else (0, 0)
    return cls(bands, (y1 - y0 + 1, x1 - x0 + 1), wcs=fwcs, origin=origin, psf_sigma=psf_sigma)
