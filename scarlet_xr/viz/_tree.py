"""Read what the figures need from a results DataTree (no plotting here)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_tree",
    "observation_names",
    "observation_node",
    "source_labels",
    "source_pixels",
    "residual_sigma",
    "flux_intervals",
    "posterior_dataset",
    "rgb_stretch",
]


def check_tree(tree) -> None:
    """Raise ``ValueError`` unless ``tree`` is a results DataTree.

    A results tree (see :mod:`scarlet_xr.xr`) has the groups ``/sources``,
    ``/model`` and ``/observations`` with at least one observation.
    """
    import xarray as xr

    if not isinstance(tree, xr.DataTree):
        raise TypeError(f"expected a results xarray.DataTree; got {type(tree).__name__}")
    missing = [g for g in ("sources", "model", "observations") if g not in tree.children]
    if missing:
        raise ValueError(
            f"not a scarlet_xr results tree: expected groups /sources, /model, /observations; "
            f"missing {missing} (has {sorted(tree.children)})"
        )
    if not tree["observations"].children:
        raise ValueError("the results tree has no observation under /observations")


def observation_names(tree) -> list[str]:
    """Names of the observation nodes, in order."""
    return [str(k) for k in tree["observations"].children]


def observation_node(tree, name: str | None = None):
    """The ``/observations/<name>`` Dataset (the first one when ``name`` is None)."""
    names = observation_names(tree)
    if name is None:
        name = names[0]
    if name not in names:
        raise ValueError(f"no observation {name!r} in the results tree; expected one of {names}")
    return tree["observations"][name].to_dataset()


def source_labels(tree) -> list[str]:
    """One label per source, ``"<index>: <name> (<kind>)"``."""
    src = tree["sources"].to_dataset()
    n = src.sizes["source"]
    names = src["name"].values if "name" in src else [f"src{i}" for i in range(n)]
    kinds = src["kind"].values if "kind" in src else [""] * n
    return [f"{i}: {names[i]} ({kinds[i]})" for i in range(n)]


def source_pixels(tree, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Source centres ``(y, x)`` in the pixel coordinates of an observation.

    Uses the sky positions and the observation's WCS when both exist (several
    instruments have different grids), else the model-frame pixel centres,
    which share the first observation's grid.
    """
    src = tree["sources"].to_dataset()
    node = observation_node(tree, name)
    y = np.asarray(src["y"].values, float)
    x = np.asarray(src["x"].values, float)
    header = node.attrs.get("wcs_header")
    ra = np.asarray(src["ra"].values, float) if "ra" in src else np.full(y.shape, np.nan)
    dec = np.asarray(src["dec"].values, float) if "dec" in src else np.full(y.shape, np.nan)
    if header and np.all(np.isfinite(ra)) and np.all(np.isfinite(dec)) and ra.size:
        from astropy.io import fits
        from astropy.wcs import WCS

        wcs = WCS(fits.Header.fromstring(header), relax=True)
        px, py = wcs.celestial.world_to_pixel_values(ra, dec)
        return np.asarray(py, float), np.asarray(px, float)
    return y, x


def residual_sigma(node) -> np.ndarray:
    """Residual in units of the noise, ``(data - model) * sqrt(weight)``; masked pixels are NaN."""
    d = np.asarray(node["data"].values, float)
    m = np.asarray(node["model"].values, float)
    w = np.asarray(node["weight"].values, float)
    return np.where(w > 0, (d - m) * np.sqrt(np.clip(w, 0, None)), np.nan)


def posterior_dataset(obj):
    """Return the posterior draws as a Dataset with dims ``chain, draw, ...``, or None.

    ``obj`` is a results tree with a ``/posterior`` group, a DataTree that is
    the posterior group itself, or a Dataset of draws.
    """
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        ds = obj
    elif isinstance(obj, xr.DataTree):
        if "posterior" in obj.children:
            ds = obj["posterior"].to_dataset()
        elif "chain" in obj.dims and "draw" in obj.dims:
            ds = obj.to_dataset()
        else:
            return None
    else:
        raise TypeError(f"expected a DataTree or Dataset of draws; got {type(obj).__name__}")
    for dim in ("chain", "draw"):
        if dim not in ds.dims:
            raise ValueError(f"posterior draws need dims ('chain', 'draw', ...); got {tuple(ds.dims)}")
    return ds


def flux_intervals(tree, prob: float = 0.68):
    """Posterior median and central interval of each source's flux per band.

    Returns
    -------
    tuple of numpy.ndarray (source, band) or None
        ``(median, low, high)``, or None when the tree has no posterior
        ``flux`` draws.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1); got {prob}")
    post = posterior_dataset(tree)
    if post is None or "flux" not in post:
        return None
    flux = post["flux"].stack(sample=("chain", "draw")).transpose("source", "band", "sample").values
    q = np.quantile(np.asarray(flux, float), [0.5, 0.5 - prob / 2, 0.5 + prob / 2], axis=-1)
    return q[0], q[1], q[2]


def rgb_stretch(cube) -> float:
    """A robust linear range for :func:`~scarlet_xr.viz.lupton_rgb` (99.5th percentile)."""
    cube = np.asarray(cube, float)
    s = float(np.nanpercentile(np.abs(cube).sum(0) / max(cube.shape[0], 1), 99.5))
    return s if s > 0 and np.isfinite(s) else 1.0
