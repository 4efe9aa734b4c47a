"""Shared test fixtures (real data shipped in tests/data; no network)."""

import os
from pathlib import Path

import pytest

# No persistent JAX compilation cache in the tests unless a test names its own directory (the cache's
# own tests): each worker then compiles what it runs, nothing is shared between the workers. The
# aborts inside XLA's compiler seen in CI and here (2026-12-06) were a worker passing the kernel's
# cap on memory areas (see _under_the_memory_map_cap below), with and without the cache.
os.environ["SCARLET_XR_CACHE"] = "off"

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


@pytest.fixture(scope="module", autouse=True)
def _under_the_memory_map_cap():
    """Drop compiled programs between test files once a worker nears the kernel's cap on memory areas.

    A worker process compiles a few hundred programs over the suite; JAX maps each compiled kernel
    into its own areas, and at ``vm.max_map_count`` (65530) the process aborts inside XLA's compiler
    (measured 2026-12-06: a worker at 65003 areas aborted in tests/test_local.py). The product drops
    them at 60 % of the cap when a default-path fit starts; between files the tests drop at 40 %.
    """
    from scarlet_xr.infer import bound_compiled_programs

    bound_compiled_programs(0.4)
    yield
