"""Static PNG figures of data, model and residual."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["lupton_rgb", "plot_observation"]


def lupton_rgb(cube, *, stretch: float | None = None, q: float = 8.0) -> np.ndarray:
    """Asinh (Lupton et al. 2004) RGB image from a (band, y, x) cube.

    The reddest three bands (or the only band, repeated) map to R, G, B.

    Parameters
    ----------
    cube : array (band, y, x)
    stretch : float, optional
        Linear range; default the 99.5th percentile of the summed image.
    q : float
        Asinh softening.

    Returns
    -------
    numpy.ndarray (y, x, 3) in [0, 1]
    """
    cube = np.asarray(cube, float)
    if cube.ndim != 3:
        raise ValueError(f"cube must have dims (band, y, x); got shape {cube.shape}")
    nb = cube.shape[0]
    if nb >= 3:
        idx = [nb - 1, nb // 2, 0]
    else:
        idx = [nb - 1, 0, 0] if nb == 2 else [0, 0, 0]
    rgb = np.stack([cube[i] for i in idx], axis=-1)
    total = rgb.sum(-1) / 3
    if stretch is None:
        stretch = float(np.percentile(total, 99.5)) or 1.0
    f = np.arcsinh(q * np.clip(total, 0, None) / stretch) / q
    scale = np.where(total > 0, f / np.where(total > 0, total, 1), 0)
    out = rgb * scale[..., None] * stretch / max(stretch, 1e-30)
    out = out / max(out.max(), 1e-30)
    return np.clip(out, 0, 1)


def plot_observation(tree, name: str, path, *, dpi: int = 110) -> Path:
    """Write a PNG with data | model | residual (RGB) and residual/noise per band.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree (see :mod:`scarlet_xr.xr`).
    name : str
        Observation node name.
    path : str or Path
        Output PNG path.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    node = tree["observations"][name].to_dataset()
    data = node["data"].values
    model = node["model"].values
    weight = node["weight"].values
    bands = [str(b) for b in node["band"].values]
    resid_sn = (data - model) * np.sqrt(weight)
    stretch = float(np.percentile(np.abs(data).sum(0) / max(len(bands), 1), 99.5)) or 1.0
    nb = len(bands)
    fig, axes = plt.subplots(2, max(3, nb), figsize=(2.6 * max(3, nb), 5.4), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, img, title in zip(
        axes[0], [data, model, data - model], ["data", "model", "residual"], strict=False
    ):
        ax.imshow(lupton_rgb(img, stretch=stretch), origin="lower")
        ax.set_title(title)
    src = tree["sources"].to_dataset()
    axes[0, 0].plot(src["x"].values - node["x"].values[0], src["y"].values - node["y"].values[0],
                    "x", color="w", ms=5)
    for j, b in enumerate(bands):
        ax = axes[1, j]
        im = ax.imshow(resid_sn[j], origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
        ax.set_title(f"{b}: (d-m)/σ, χ²={node['chi2_reduced'].values[j]:.2f}", fontsize=8)
    fig.colorbar(im, ax=axes[1].tolist(), shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
