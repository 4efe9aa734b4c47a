"""Static matplotlib figures: per-source panels, the loss curve, posterior pair plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..xr import source_image
from ._static import lupton_rgb
from ._tree import (
    check_tree,
    flux_intervals,
    observation_node,
    posterior_dataset,
    rgb_stretch,
    source_labels,
    source_pixels,
)

__all__ = ["plot_sources", "plot_loss", "plot_posterior_pairs", "posterior_parameters"]


def _figure(figsize):
    """A matplotlib Figure outside pyplot: no backend switch, nothing left open."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _finish(fig, path, dpi):
    """Save when ``path`` is given (return the Path), else return the Figure."""
    if path is None:
        return fig
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def _crop(ny, nx, cy, cx, half):
    y0, y1 = max(int(round(cy)) - half, 0), min(int(round(cy)) + half + 1, ny)
    x0, x1 = max(int(round(cx)) - half, 0), min(int(round(cx)) + half + 1, nx)
    return slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))


def _support_half(cube, cy, cx, minimum=7):
    """Half-size of a square around (cy, cx) that holds the model's non-zero pixels."""
    support = np.argwhere(np.abs(cube).sum(0) > 0)
    if support.size == 0:
        return minimum
    reach = np.max(np.abs(support - np.array([cy, cx])), axis=0)
    return int(max(minimum, np.ceil(reach.max()) + 2))


def plot_sources(tree, path=None, *, name: str | None = None, max_sources: int = 20,
                 prob: float = 0.68, dpi: int = 100):
    """One row per source: data around it, its model alone, and its spectrum.

    Cut-outs are centred on each source and just large enough for its model;
    in each row data and model share one asinh stretch, set by the source's
    model (so faint sources stay visible). Spectra
    show posterior median and central ``prob`` interval when the tree has a
    ``/posterior`` group with ``flux``.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree.
    path : str or Path, optional
        Output PNG; without it the matplotlib Figure is returned.
    name : str, optional
        Observation for the data cut-outs (default: the first). Its grid must
        be the model frame's (true for the first observation).
    max_sources : int
        Plot at most this many sources (the first ones).
    prob : float
        Posterior interval probability.
    dpi : int

    Returns
    -------
    Path or matplotlib.figure.Figure
    """
    check_tree(tree)
    if max_sources < 1:
        raise ValueError(f"max_sources must be >= 1; got {max_sources}")
    node = observation_node(tree, name)
    src = tree["sources"].to_dataset()
    mod = tree["model"].to_dataset()
    bands = [str(b) for b in src["band"].values]
    labels = source_labels(tree)
    n = min(len(labels), max_sources)
    data = np.asarray(node["data"].values, float)
    stretch = rgb_stretch(data)
    models = [source_image(mod, "model", i).astype(float) for i in range(n)]
    # model-frame pixel -> index into the model cube and into the observation
    my0, mx0 = int(mod["y"].values[0]), int(mod["x"].values[0])
    oy0, ox0 = int(node["y"].values[0]), int(node["x"].values[0])
    py, px = source_pixels(tree, name)
    iv = flux_intervals(tree, prob)
    fig = _figure((8.4, 2.6 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        cy, cx = src["y"].values[i] - my0, src["x"].values[i] - mx0
        half = _support_half(models[i], cy, cx)
        ms = _crop(mod.sizes["y"], mod.sizes["x"], cy, cx, half)
        os_ = _crop(*data.shape[1:], py[i] - oy0, px[i] - ox0, half)
        ext_o = [os_[1].start + ox0 - 0.5, os_[1].stop + ox0 - 0.5, os_[0].start + oy0 - 0.5,
                 os_[0].stop + oy0 - 0.5]
        ext_m = [ms[1].start + mx0 - 0.5, ms[1].stop + mx0 - 0.5, ms[0].start + my0 - 0.5,
                 ms[0].stop + my0 - 0.5]
        cut = models[i][:, ms[0], ms[1]]
        # one stretch per row, from the source's own model, so faint sources stay visible
        s_i = rgb_stretch(cut) if np.any(cut > 0) else stretch
        ax = axes[i, 0]
        ax.imshow(lupton_rgb(data[:, os_[0], os_[1]], stretch=s_i), origin="lower", extent=ext_o)
        ax.plot(px[i], py[i], "+", color="red", ms=10)
        ax.set_title(f"data around {labels[i]}", fontsize=8)
        ax = axes[i, 1]
        rgb = lupton_rgb(cut, stretch=s_i) if np.any(cut > 0) else np.zeros(cut.shape[1:] + (3,))
        ax.imshow(rgb, origin="lower", extent=ext_m)
        ax.set_title("model alone", fontsize=8)
        ax = axes[i, 2]
        flux = np.asarray(src["flux"].values[i], float)
        ax.plot(bands, flux, "o-", label="fit")
        if iv is not None:
            med, lo, hi = (a[i] for a in iv)
            ax.errorbar(bands, med, yerr=[med - lo, hi - med], fmt="none", ecolor="red", capsize=3,
                        label=f"posterior {prob:.0%}")
            ax.legend(fontsize=7)
        ax.set_ylabel("flux", fontsize=8)
        ax.set_title("spectrum", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _finish(fig, path, dpi)


def plot_loss(tree, path=None, *, dpi: int = 100):
    """The loss per optimizer step (log scale when positive).

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree with a ``/fit`` group.
    path : str or Path, optional
        Output PNG; without it the Figure is returned.
    dpi : int

    Returns
    -------
    Path or matplotlib.figure.Figure
    """
    check_tree(tree)
    if "fit" not in tree.children or "loss" not in tree["fit"].data_vars:
        raise ValueError("the results tree has no /fit/loss history")
    loss = np.asarray(tree["fit"]["loss"].values, float)
    fig = _figure((5, 3.2))
    ax = fig.subplots()
    ax.plot(np.arange(loss.size), loss)
    if loss.size and np.all(loss[np.isfinite(loss)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"fit: {tree['fit'].attrs.get('status', '')}, {loss.size} steps")
    fig.tight_layout()
    return _finish(fig, path, dpi)


def posterior_parameters(posterior, *, var_names=None, coords=None, max_params: int = 8):
    """Flatten posterior draws into named scalar parameters.

    Parameters
    ----------
    posterior : xarray.DataTree or xarray.Dataset
        A results tree with ``/posterior``, the posterior group, or a Dataset
        with dims ``chain, draw, ...``.
    var_names : sequence of str, optional
        Variables to use (default: all).
    coords : dict, optional
        Selection applied first, e.g. ``{"source": 0}``.
    max_params : int
        Keep at most this many parameters (in order).

    Returns
    -------
    names : list of str
        ``"flux[source=0, band=g]"``-style names.
    draws : numpy.ndarray (sample, param)
        Chains and draws stacked.
    """
    post = posterior_dataset(posterior)
    if post is None:
        raise ValueError("no posterior draws: expected a /posterior group or a Dataset with chain, draw")
    if var_names is None:
        var_names = list(post.data_vars)
    missing = [v for v in var_names if v not in post]
    if missing:
        raise ValueError(f"unknown posterior variables {missing}; expected some of {list(post.data_vars)}")
    if coords:
        post = post.sel({k: v for k, v in coords.items() if k in post.dims})
    names, cols = [], []
    for var in var_names:
        da = post[var].stack(sample=("chain", "draw"))
        other = [d for d in da.dims if d != "sample"]
        flat = da.transpose("sample", *other).values.reshape(da.sizes["sample"], -1)
        idx = np.stack(np.unravel_index(np.arange(flat.shape[1]), [da.sizes[d] for d in other]), -1) \
            if other else np.zeros((1, 0), int)
        for j in range(flat.shape[1]):
            lab = ", ".join(f"{d}={da[d].values[k]}" for d, k in zip(other, idx[j], strict=True))
            names.append(f"{var}[{lab}]" if lab else var)
            cols.append(flat[:, j])
    if not cols:
        raise ValueError("the selection left no posterior parameter")
    names, cols = names[:max_params], cols[:max_params]
    return names, np.stack(cols, axis=1).astype(float)


def plot_posterior_pairs(posterior, path=None, *, var_names=("flux",), coords=None,
                         max_params: int = 6, bins: int = 30, dpi: int = 100):
    """Pair (corner) plot of posterior draws: histograms and 2-D densities.

    Parameters
    ----------
    posterior : xarray.DataTree or xarray.Dataset
        See :func:`posterior_parameters`.
    path : str or Path, optional
        Output PNG; without it the Figure is returned.
    var_names : sequence of str
        Variables to plot (default ``("flux",)``).
    coords : dict, optional
        Selection, e.g. ``{"source": 0}`` for one source's spectrum.
    max_params : int
        At most this many parameters (a ``max_params`` x ``max_params`` grid).
    bins : int
        Histogram bins.
    dpi : int

    Returns
    -------
    Path or matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from scarlet_xr.viz import plot_posterior_pairs
    >>> rng = np.random.default_rng(0)
    >>> post = xr.Dataset({"flux": (("chain", "draw", "band"), rng.normal(size=(2, 200, 3)))},
    ...                   coords={"band": ["g", "r", "i"]})
    >>> fig = plot_posterior_pairs(post)
    >>> len(fig.axes)
    9
    """
    names, draws = posterior_parameters(posterior, var_names=list(var_names), coords=coords,
                                        max_params=max_params)
    k = len(names)
    fig = _figure((1.9 * k + 0.8, 1.9 * k + 0.8))
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                ax.hist(draws[:, i], bins=bins, color="C0", histtype="stepfilled", alpha=0.7)
                lo, med, hi = np.quantile(draws[:, i], [0.16, 0.5, 0.84])
                for v in (lo, med, hi):
                    ax.axvline(v, color="k", lw=0.8, ls="--" if v != med else "-")
                ax.set_yticks([])
            else:
                ax.hist2d(draws[:, j], draws[:, i], bins=bins, cmap="Blues")
            if i == k - 1:
                ax.set_xlabel(names[j], fontsize=7)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i], fontsize=7)
            elif j > 0:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
    if coords:
        fig.suptitle(", ".join(f"{k}={v}" for k, v in coords.items()), fontsize=9)
    fig.tight_layout()
    return _finish(fig, path, dpi)
