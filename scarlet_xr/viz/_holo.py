"""HoloViews (bokeh) plot builders for results trees.

Every builder returns a holoviews element or overlay for one choice of band
and source; the panel inspector in :mod:`scarlet_xr.widgets` binds them to its
selectors. holoviews is imported inside the functions.
"""

from __future__ import annotations

import numpy as np

from ..xr import source_image
from ._html import RESIDUAL_RANGE
from ._static import lupton_rgb
from ._tree import (
    check_tree,
    flux_intervals,
    observation_node,
    residual_sigma,
    rgb_stretch,
    source_labels,
    source_pixels,
)

__all__ = [
    "PANELS",
    "observation_panel",
    "band_images",
    "rgb_view",
    "source_model_view",
    "spectrum_plot",
    "loss_plot",
]

_SIZE = {"frame_width": 240, "aspect": "equal"}


def _hv():
    """Import holoviews with its bokeh plotting registered, without notebook output."""
    import holoviews as hv

    if "bokeh" not in hv.Store.renderers:
        import holoviews.plotting.bokeh  # noqa: F401  (registers the backend and its options)
    return hv


def _band(node, band) -> int:
    bands = [str(b) for b in node["band"].values]
    if band is None:
        return 0
    if str(band) not in bands:
        raise ValueError(f"unknown band {band!r}; expected one of {bands}")
    return bands.index(str(band))


def _source(tree, source) -> int | None:
    n = tree["sources"].to_dataset().sizes["source"]
    if source is None:
        return None
    i = int(source)
    if not 0 <= i < n:
        raise ValueError(f"source index must be in [0, {n - 1}]; got {source}")
    return i


def _markers(tree, name, source, node):
    """Overlay: all source centres (white crosses) and the selected one (red circle)."""
    hv = _hv()
    py, px = source_pixels(tree, name)
    labels = [lab.split(":")[0] for lab in source_labels(tree)]
    pts = hv.Points((px, py, labels), kdims=["x", "y"], vdims=["source"]).opts(
        backend="bokeh",
        marker="x", color="white", size=8, tools=["hover"]
    )
    sel_y = [py[source]] if source is not None else []
    sel_x = [px[source]] if source is not None else []
    sel = hv.Points((sel_x, sel_y), kdims=["x", "y"]).opts(
        backend="bokeh",
        marker="circle", fill_alpha=0, line_color="red", line_width=2, size=22
    )
    return pts * sel


PANELS = ("data", "model", "residual")
"""Names of the per-band observation panels."""


def observation_panel(tree, which: str, name: str | None = None, band=None, source=None):
    """One per-band panel of an observation: ``"data"``, ``"model"`` or ``"residual"``.

    Data and model share one linear colour scale (1st to 99.7th percentile of
    the data); the residual is ``(data - model) / σ`` on ±5.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree.
    which : {"data", "model", "residual"}
        The panel.
    name : str, optional
        Observation name (default: the first).
    band : str, optional
        Band name (default: the first band).
    source : int, optional
        Index of a source to highlight with a red circle.

    Returns
    -------
    holoviews.Overlay
        The image with source markers.
    """
    hv = _hv()
    if which not in PANELS:
        raise ValueError(f"which must be one of {PANELS}; got {which!r}")
    check_tree(tree)
    node = observation_node(tree, name)
    b = _band(node, band)
    bname = str(node["band"].values[b])
    xs, ys = node["x"].values, node["y"].values
    data = np.asarray(node["data"].values[b], float)
    marks = _markers(tree, name, _source(tree, source), node)
    if which == "residual":
        lim = RESIDUAL_RANGE
        img = hv.Image((xs, ys, residual_sigma(node)[b]), kdims=["x", "y"], vdims=["residual_sigma"])
        img = img.opts(backend="bokeh", title=f"(data-model)/σ ({bname})", cmap="RdBu_r", clim=(-lim, lim),
                       colorbar=True, tools=["hover"], **_SIZE)
        return img * marks
    lo, hi = np.nanpercentile(data, [1, 99.7])
    arr = data if which == "data" else np.asarray(node["model"].values[b], float)
    img = hv.Image((xs, ys, arr), kdims=["x", "y"], vdims=["flux"])
    img = img.opts(backend="bokeh", title=f"{which} ({bname})", cmap="gray", clim=(float(lo), float(hi)),
                   colorbar=True, tools=["hover"], **_SIZE)
    return img * marks


def band_images(tree, name: str | None = None, band=None, source=None):
    """Data | model | residual (in units of the noise) panels of one band.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree.
    name : str, optional
        Observation name (default: the first).
    band : str, optional
        Band name (default: the first band).
    source : int, optional
        Index of a source to highlight with a red circle.

    Returns
    -------
    holoviews.Layout
        The three panels of :func:`observation_panel`.
    """
    panels = [observation_panel(tree, which, name, band, source) for which in PANELS]
    return panels[0] + panels[1] + panels[2]


def rgb_view(tree, name: str | None = None, source=None, *, q: float = 8.0):
    """Lupton asinh RGB of the observed data with source markers.

    Parameters
    ----------
    tree : xarray.DataTree
    name : str, optional
        Observation name (default: the first).
    source : int, optional
        Source to highlight.
    q : float
        Asinh softening of :func:`~scarlet_xr.viz.lupton_rgb`.

    Returns
    -------
    holoviews.Overlay
    """
    hv = _hv()
    check_tree(tree)
    node = observation_node(tree, name)
    data = node["data"].values
    rgb = lupton_rgb(data, stretch=rgb_stretch(data), q=q)
    xs, ys = node["x"].values, node["y"].values
    img = hv.RGB((xs, ys, rgb[..., 0], rgb[..., 1], rgb[..., 2]), kdims=["x", "y"]).opts(
        backend="bokeh",
        title="data (RGB, asinh)", **_SIZE
    )
    return img * _markers(tree, name, _source(tree, source), node)


def source_model_view(tree, source: int, *, q: float = 8.0):
    """RGB of one source's model alone on the model frame (same stretch as the data)."""
    hv = _hv()
    check_tree(tree)
    i = _source(tree, 0 if source is None else source)
    mod = tree["model"].to_dataset()
    cube = source_image(mod, "model", i).astype(float)
    stretch = rgb_stretch(observation_node(tree)["data"].values)
    rgb = lupton_rgb(cube, stretch=stretch, q=q) if np.any(cube > 0) else np.zeros(cube.shape[1:] + (3,))
    xs, ys = mod["x"].values, mod["y"].values
    label = source_labels(tree)[i]
    return hv.RGB((xs, ys, rgb[..., 0], rgb[..., 1], rgb[..., 2]), kdims=["x", "y"]).opts(
        backend="bokeh",
        title=f"model of {label}", **_SIZE
    )


def deblended_view(tree, name: str | None = None, band=None, source=None):
    """One source's deblended image (its share of the data) in one band of an observation.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree with ``/deblended`` (trees from older versions: an
        empty image titled accordingly).
    name : str, optional
        Observation name (default: the first).
    band : str, optional
    source : int, optional

    Returns
    -------
    holoviews.Image
    """
    hv = _hv()
    check_tree(tree)
    node = observation_node(tree, name)
    b = _band(node, band)
    bname = str(node["band"].values[b])
    i = _source(tree, 0 if source is None else source)
    xs, ys = node["x"].values, node["y"].values
    obs_name = name or next(iter(tree["observations"].children))
    if "deblended" in tree.children and obs_name in tree["deblended"].children:
        arr = source_image(tree["deblended"][obs_name], "image", i)[b].astype(float)
        title = f"deblended {source_labels(tree)[i]} ({bname})"
    else:
        arr = np.zeros((len(ys), len(xs)))
        title = "no deblended images in this tree"
    lo, hi = np.nanpercentile(np.asarray(node["data"].values[b], float), [1, 99.7])
    return hv.Image((xs, ys, arr), kdims=["x", "y"], vdims=["flux"]).opts(
        backend="bokeh", title=title, cmap="gray", clim=(float(lo), float(hi)), colorbar=True,
        tools=["hover"], **_SIZE)


def catalog_row_html(tree, source) -> str:
    """The catalog row of one source as an HTML table (column, value, unit)."""
    from ..xr import catalog_from_tree

    try:
        table = catalog_from_tree(tree)
    except ValueError as err:
        return f"<p>{err}</p>"
    i = _source(tree, 0 if source is None else source)
    rows = []
    for name in table.colnames:
        v = table[name][i]
        text = f"{v:.5g}" if isinstance(v, (float, np.floating)) else str(v)
        unit = "" if table[name].unit is None else str(table[name].unit)
        rows.append(f"<tr><td>{name}</td><td>{text}</td><td>{unit}</td></tr>")
    return ("<table><tr><th>column</th><th>value</th><th>unit</th></tr>" + "".join(rows) + "</table>")


def spectrum_plot(tree, source: int, *, prob: float = 0.68):
    """Flux per band of one source, with posterior intervals when ``/posterior`` exists.

    Returns
    -------
    holoviews.Overlay
        The fitted spectrum (line and points) and, if available, the
        posterior median with its central ``prob`` interval as error bars.
    """
    hv = _hv()
    check_tree(tree)
    i = _source(tree, 0 if source is None else source)
    src = tree["sources"].to_dataset()
    bands = [str(b) for b in src["band"].values]
    flux = np.asarray(src["flux"].values[i], float)
    label = source_labels(tree)[i]
    kd, vd = hv.Dimension("band"), hv.Dimension("flux")
    out = hv.Curve((bands, flux), kd, vd, label="fit") * hv.Scatter((bands, flux), kd, vd, label="fit").opts(
        backend="bokeh",
        size=7
    )
    iv = flux_intervals(tree, prob)
    if iv is not None:
        med, lo, hi = (a[i] for a in iv)
        out = out * hv.ErrorBars(
            (bands, med, med - lo, hi - med), kd, [vd, "neg", "pos"], label=f"posterior {prob:.0%}"
        ).opts(backend="bokeh", color="red", line_width=2)
    return out.opts(backend="bokeh", title=f"spectrum of {label}", frame_width=300, frame_height=200,
                    show_legend=True)


def loss_plot(tree):
    """The fit's loss per optimizer step (log scale); an empty plot when there is no history."""
    hv = _hv()
    check_tree(tree)
    loss = np.asarray(tree["fit"]["loss"].values, float) if "fit" in tree.children else np.array([])
    loss = loss[np.isfinite(loss)]
    status = tree["fit"].attrs.get("status", "") if "fit" in tree.children else ""
    curve = hv.Curve((np.arange(loss.size), loss), "step", "loss")
    return curve.opts(backend="bokeh", title=f"loss ({status})", logy=bool(loss.size and np.all(loss > 0)),
                      frame_width=300, frame_height=200)
