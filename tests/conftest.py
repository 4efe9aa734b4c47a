"""Shared test fixtures (real data shipped in tests/data; no network)."""

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
HSC_BANDS = ["g", "r", "i", "z", "y"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder with the small real FITS files (HSC and HST cutouts and PSFs)."""
    return DATA


@pytest.fixture(scope="session")
def hsc_fits_obs():
    """Real HSC cutout ``Cut_HSC.fits`` with ``PSF_HSC.fits`` (noise estimated with sep)."""
    from scarlet_xr.xr import open_observation

    return open_observation(DATA / "Cut_HSC.fits", psf=DATA / "PSF_HSC.fits", bands=HSC_BANDS, name="hsc")
