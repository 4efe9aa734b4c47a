"""A real fit of the bundled HSC cutout, shared by the viz/widgets/browser tests."""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr


@functools.lru_cache(maxsize=1)
def hsc_fit_tree(max_steps: int = 150) -> xr.DataTree:
    """Fit the HSC cutout (7 sources) briefly and return its results tree."""
    import scarlet_xr as sx
    from scarlet_xr.datasets import hsc_cosmos_35

    obs, centers = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds=["point"] + ["free"] * (len(centers) - 1))
    return scene.fit(obs, max_steps=max_steps).to_datatree(obs)


def with_posterior(tree: xr.DataTree, *, rel_sigma: float = 0.05, draws: int = 300,
                   seed: int = 0) -> xr.DataTree:
    """Attach Gaussian ``/posterior`` flux draws around the fitted fluxes (known spread)."""
    flux = tree["sources"]["flux"].values
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(2, draws) + flux.shape)
    post = xr.Dataset(
        {"flux": (("chain", "draw", "source", "band"), flux[None, None] * (1 + rel_sigma * noise))},
        coords={"source": tree["sources"]["source"].values, "band": tree["sources"]["band"].values},
    )
    out = tree.copy()
    out["posterior"] = xr.DataTree(post)
    return out
