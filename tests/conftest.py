"""Shared test fixtures (real data shipped in tests/data; no network)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Each test process (xdist worker) gets its own, fresh JAX compilation cache for the CLI calls it
# makes (in-process and in subprocesses): ~/.cache shared by both workers crashed a worker inside XLA
# (a half-written entry read by the other process), while no cache at all made the suite 1.5x slower
_CACHE = tempfile.mkdtemp(prefix=f"scarlet_xr_jax_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
os.environ["SCARLET_XR_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

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


@pytest.fixture(autouse=True)
def _no_compile_cache_leaks():
    """Give JAX's compilation cache back to 'none' after a test that turned it on in-process."""
    yield
    import jax

    if jax.config.jax_compilation_cache_dir is not None:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
