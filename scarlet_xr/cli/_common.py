"""Helpers shared by CLI sub-commands."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["enable_compile_cache", "write_tree", "format_summary"]


def enable_compile_cache() -> None:
    """Turn on JAX's persistent compilation cache (``SCARLET_XR_CACHE`` or ~/.cache)."""
    import jax

    path = os.environ.get("SCARLET_XR_CACHE", str(Path.home() / ".cache" / "scarlet_xr" / "jax"))
    if path.lower() in ("", "0", "off", "none"):
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def write_tree(tree, path) -> Path:
    """Write a results DataTree to netCDF (``.nc``/``.h5``) or Zarr (``.zarr``)."""
    path = Path(path)
    if path.suffix == ".zarr":
        tree.to_zarr(path, mode="w", zarr_format=2, consolidated=False)
    elif path.suffix in (".nc", ".h5", ".nc4"):
        tree.to_netcdf(path, engine="h5netcdf")
    else:
        raise ValueError(f"output must end in .nc or .zarr; got {path.name!r}")
    return path


def format_summary(tree, wall_time: float | None = None) -> str:
    """Human-readable summary of a results tree: sources, fluxes, chi^2 per band."""
    src = tree["sources"].to_dataset()
    bands = [str(b) for b in src["band"].values]
    lines = []
    lines.append(f"{src.sizes['source']} sources, bands {' '.join(bands)}")
    head = f"{'source':>6} {'kind':>10} {'y':>7} {'x':>7} " + " ".join(f"{b:>10}" for b in bands)
    lines.append(head)
    for i in range(src.sizes["source"]):
        flux = src["flux"].values[i]
        lines.append(
            f"{i:>6} {str(src['kind'].values[i]):>10} {src['y'].values[i]:7.2f} {src['x'].values[i]:7.2f} "
            + " ".join(f"{f:10.4g}" for f in flux)
        )
    for name, node in tree["observations"].children.items():
        ds = node.to_dataset()
        per = " ".join(f"{b}={c:.3f}" for b, c in zip(ds["band"].values, ds["chi2_reduced"].values, strict=True))
        lines.append(f"observation {name}: reduced chi2 {ds.attrs['chi2_reduced']:.3f} ({per})")
    fit = tree["fit"].to_dataset()
    lines.append(f"fit: {fit.attrs.get('status')} after {fit.attrs.get('num_steps')} steps")
    if wall_time is not None:
        lines.append(f"wall time: {wall_time:.2f} s")
    return "\n".join(lines)


def finite_or_nan(x):
    """Return a float, NaN for non-finite values."""
    x = float(x)
    return x if np.isfinite(x) else float("nan")
