"""The model frame: bands, pixel grid, optional celestial WCS, model PSF."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from astropy.wcs import WCS

from ..core import gaussian_psf_image

__all__ = ["Frame", "DEFAULT_MODEL_PSF_SIGMA"]

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
    """

    def __init__(
        self,
        bands: Sequence[str],
        shape: tuple[int, int],
        *,
        wcs: WCS | None = None,
        origin: tuple[int, int] = (0, 0),
        psf_sigma: float = DEFAULT_MODEL_PSF_SIGMA,
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
        self.origin = (int(origin[0]), int(origin[1]))
        self.psf_sigma = float(psf_sigma)
        size = 2 * int(math.ceil(4 * self.psf_sigma)) + 1
        self.psf = gaussian_psf_image(self.psf_sigma, max(size, 7))

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

    def pixel_to_sky(self, y, x):
        """Return ``(ra, dec)`` in degrees for frame pixel coordinates (needs a WCS)."""
        if self.wcs is None:
            raise ValueError("this frame has no WCS; sky coordinates are unavailable")
        ra, dec = self.wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
        return np.asarray(ra), np.asarray(dec)

    def sky_to_pixel(self, ra, dec):
        """Return frame pixel ``(y, x)`` for ``ra``, ``dec`` in degrees (needs a WCS)."""
        if self.wcs is None:
            raise ValueError("this frame has no WCS; sky coordinates are unavailable")
        x, y = self.wcs.world_to_pixel_values(np.asarray(ra, float), np.asarray(dec, float))
        return np.asarray(y), np.asarray(x)

    @property
    def pixel_scale(self) -> float | None:
        """Pixel scale in arcsec (None without WCS)."""
        if self.wcs is None:
            return None
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.mean(proj_plane_pixel_scales(self.wcs)) * 3600)

    def __repr__(self) -> str:
        return (
            f"Frame(bands={self.bands}, shape={self.shape}, origin={self.origin}, "
            f"wcs={'yes' if self.wcs is not None else 'no'}, psf_sigma={self.psf_sigma})"
        )
