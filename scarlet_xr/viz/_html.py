"""A self-contained, offline HTML inspector built directly with bokeh.

All arrays are embedded once (per band and per source) and bokeh ``Select``
widgets swap them in the browser with small ``CustomJS`` callbacks, so the
file is written in about a second and needs neither a server nor a CDN
(bokeh's inline resources).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..xr import source_image
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

__all__ = ["inspector_document", "save_inspector_html"]

RESIDUAL_RANGE = 5.0
"""Colour range of residual panels, in units of the noise (±)."""

_BAND_JS = """
const i = bands.indexOf(band.value);
img_data.data = {image: [store.data.data[i]]};
img_model.data = {image: [store.data.model[i]]};
img_resid.data = {image: [store.data.resid[i]]};
mapper.low = store.data.low[i];
mapper.high = store.data.high[i];
for (const [f, t] of [[f_data, 'data'], [f_model, 'model'], [f_resid, '(data-model)/σ']]) {
    f.title.text = t + ' (' + band.value + ')';
}
"""

_SOURCE_JS = """
const i = parseInt(source.value);
sel.data = {x: [all_pts.data.x[i]], y: [all_pts.data.y[i]]};
alone.data = {image: [sstore.data.rgba[i]]};
spec.data = {band: bands, flux: sstore.data.flux[i], lo: sstore.data.lo[i], hi: sstore.data.hi[i]};
f_alone.title.text = 'model of ' + labels[i];
f_spec.title.text = 'spectrum of ' + labels[i];
"""


def _rgba(rgb: np.ndarray) -> np.ndarray:
    """(y, x, 3) floats in [0, 1] -> (y, x) uint32 RGBA for bokeh ``image_rgba``."""
    u8 = np.empty(rgb.shape[:2] + (4,), np.uint8)
    u8[..., :3] = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    u8[..., 3] = 255
    return u8.view(np.uint32).reshape(rgb.shape[:2])


def _image_figure(title, xs, ys, x_range=None, y_range=None, width=260):
    from bokeh.plotting import figure

    ny, nx = len(ys), len(xs)
    kw = {}
    if x_range is not None:
        kw = {"x_range": x_range, "y_range": y_range}
    else:
        kw = {"x_range": (xs[0] - 0.5, xs[-1] + 0.5), "y_range": (ys[0] - 0.5, ys[-1] + 0.5)}
    fig = figure(title=title, frame_width=width, frame_height=int(round(width * ny / nx)),
                 match_aspect=True, tools="pan,wheel_zoom,box_zoom,reset,hover", **kw)
    fig.xaxis.axis_label, fig.yaxis.axis_label = "x", "y"
    return fig


def inspector_document(tree, name: str | None = None, *, q: float = 8.0):
    """Build the bokeh layout of the static inspector.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree (see :mod:`scarlet_xr.xr`).
    name : str, optional
        Observation to show (default: the first).
    q : float
        Asinh softening of the RGB views.

    Returns
    -------
    bokeh.models.LayoutDOM
        A column with band and source selectors, the RGB view with source
        markers, the selected source's model alone, its spectrum, the
        data | model | residual/σ panels and the loss curve.
    """
    from bokeh.layouts import column, row
    from bokeh.models import (
        ColorBar,
        ColumnDataSource,
        CustomJS,
        Div,
        LinearColorMapper,
        Select,
        Whisker,
    )
    from bokeh.plotting import figure

    check_tree(tree)
    node = observation_node(tree, name)
    obs_name = str(node.attrs.get("name", name or ""))
    bands = [str(b) for b in node["band"].values]
    xs, ys = node["x"].values.astype(float), node["y"].values.astype(float)
    x0, y0, nx, ny = xs[0] - 0.5, ys[0] - 0.5, len(xs), len(ys)
    data = np.asarray(node["data"].values, np.float32)
    model = np.asarray(node["model"].values, np.float32)
    resid = residual_sigma(node).astype(np.float32)
    lows = [float(np.nanpercentile(d, 1)) for d in data]
    highs = [float(np.nanpercentile(d, 99.7)) for d in data]
    store = ColumnDataSource({"data": list(data), "model": list(model), "resid": list(resid),
                              "low": lows, "high": highs})

    src = tree["sources"].to_dataset()
    labels = source_labels(tree)
    n = len(labels)
    py, px = source_pixels(tree, name)
    stretch = rgb_stretch(data)
    mod = tree["model"].to_dataset()
    mx, my = mod["x"].values.astype(float), mod["y"].values.astype(float)
    alone_rgba = []
    for i in range(n):
        cube = source_image(mod, "model", i).astype(float)
        rgb = lupton_rgb(cube, stretch=stretch, q=q) if np.any(cube > 0) else np.zeros(cube.shape[1:] + (3,))
        alone_rgba.append(_rgba(rgb))
    flux = np.asarray(src["flux"].values, float)
    iv = flux_intervals(tree)
    lo, hi = (flux, flux) if iv is None else (iv[1], iv[2])
    sstore = ColumnDataSource({"rgba": alone_rgba, "flux": list(flux), "lo": list(lo), "hi": list(hi)})

    all_pts = ColumnDataSource({"x": px, "y": py, "label": [lab.split(":")[0] for lab in labels]})
    sel = ColumnDataSource({"x": px[:1], "y": py[:1]})

    f_rgb = _image_figure(f"{obs_name} data (RGB, asinh)", xs, ys)
    f_rgb.image_rgba(image=[_rgba(lupton_rgb(data, stretch=stretch, q=q))], x=x0, y=y0, dw=nx, dh=ny)
    rng = {"x_range": f_rgb.x_range, "y_range": f_rgb.y_range}
    mapper = LinearColorMapper(palette="Greys256", low=lows[0], high=highs[0])
    from bokeh.palettes import RdBu11

    # bokeh's RdBu11 runs from blue (low) to red (high)
    rmapper = LinearColorMapper(palette=RdBu11, low=-RESIDUAL_RANGE, high=RESIDUAL_RANGE)
    panels = {}
    for key, arr, title in (("data", data, "data"), ("model", model, "model"),
                            ("resid", resid, "(data-model)/σ")):
        fig = _image_figure(f"{title} ({bands[0]})", xs, ys, **rng)
        cds = ColumnDataSource({"image": [arr[0]]})
        fig.image(image="image", source=cds, x=x0, y=y0, dw=nx, dh=ny,
                  color_mapper=rmapper if key == "resid" else mapper)
        fig.add_layout(ColorBar(color_mapper=rmapper if key == "resid" else mapper, width=8), "right")
        panels[key] = (fig, cds)
    for fig in (f_rgb, panels["data"][0], panels["model"][0], panels["resid"][0]):
        fig.scatter("x", "y", source=all_pts, marker="x", size=9, color="white", line_width=2)
        fig.scatter("x", "y", source=sel, marker="circle", size=24, fill_alpha=0,
                    line_color="red", line_width=2)

    f_alone = _image_figure(f"model of {labels[0]}", mx, my, **rng)
    alone = ColumnDataSource({"image": [alone_rgba[0]]})
    f_alone.image_rgba(image="image", source=alone, x=mx[0] - 0.5, y=my[0] - 0.5, dw=len(mx), dh=len(my))

    spec = ColumnDataSource({"band": bands, "flux": flux[0], "lo": lo[0], "hi": hi[0]})
    f_spec = figure(title=f"spectrum of {labels[0]}", x_range=bands, frame_width=300, frame_height=220,
                    tools="pan,wheel_zoom,reset,hover")
    f_spec.line("band", "flux", source=spec, line_width=2, legend_label="fit")
    f_spec.scatter("band", "flux", source=spec, size=8)
    if iv is not None:
        f_spec.add_layout(Whisker(base="band", lower="lo", upper="hi", source=spec, line_color="red"))
        f_spec.title.text += " (68% posterior intervals)"
    f_spec.yaxis.axis_label = "flux"
    f_spec.legend.location = "top_left"

    fit = tree["fit"].to_dataset() if "fit" in tree.children else None
    loss = np.asarray(fit["loss"].values, float) if fit is not None and "loss" in fit else np.array([])
    loss = loss[np.isfinite(loss)]
    positive = bool(loss.size) and bool(np.all(loss > 0))
    status = fit.attrs.get("status", "") if fit is not None else ""
    f_loss = figure(title=f"loss ({status})", frame_width=300, frame_height=220,
                    y_axis_type="log" if positive else "linear", tools="pan,wheel_zoom,reset,hover")
    f_loss.line(np.arange(loss.size), loss, line_width=2)
    f_loss.xaxis.axis_label = "step"

    band = Select(title="band", value=bands[0], options=bands)
    source = Select(title="source", value="0", options=[(str(i), lab) for i, lab in enumerate(labels)])
    band.js_on_change("value", CustomJS(code=_BAND_JS, args=dict(
        band=band, bands=bands, store=store, mapper=mapper, img_data=panels["data"][1],
        img_model=panels["model"][1], img_resid=panels["resid"][1], f_data=panels["data"][0],
        f_model=panels["model"][0], f_resid=panels["resid"][0])))
    source.js_on_change("value", CustomJS(code=_SOURCE_JS, args=dict(
        source=source, bands=bands, labels=labels, sel=sel, all_pts=all_pts, alone=alone,
        sstore=sstore, spec=spec, f_alone=f_alone, f_spec=f_spec)))
    chi2 = node.attrs.get("chi2_reduced")
    head = Div(text=(f"<b>scarlet_xr inspector</b> — observation <code>{obs_name}</code>, {n} sources"
                     + (f", reduced χ² {float(chi2):.3f}" if chi2 is not None else "")))
    return column(
        head,
        row(band, source),
        row(f_rgb, f_alone, f_spec),
        row(panels["data"][0], panels["model"][0], panels["resid"][0]),
        row(f_loss),
        name="scarlet_xr_inspector",
    )


def _inline_resources():
    """``bokeh.resources.INLINE`` without other packages' external scripts.

    bokeh adds the ``__javascript__``/``__css__`` files of every imported
    model class; once panel is imported those include relative URLs that do
    not exist next to a standalone file. The page uses bokeh models only.
    """
    from bokeh.resources import Resources

    class _Inline(Resources):
        def _collect_external_resources(self, resource_attr):
            return []

        def clone(self, *, components=None):
            out = super().clone(components=components)  # bokeh's clone builds a plain Resources
            out.__class__ = _Inline
            return out

    return _Inline(mode="inline")


def save_inspector_html(tree, path, name: str | None = None, *, q: float = 8.0) -> Path:
    """Write the inspector as one self-contained HTML file that works offline.

    BokehJS and every array are embedded (bokeh's inline resources): no CDN,
    server or kernel is needed. The band and source selectors work in the page.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree.
    path : str or Path
        Output path ending in ``.html``.
    name : str, optional
        Observation to show (default: the first).
    q : float
        Asinh softening of the RGB views.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.html`` or ``tree`` is not a results tree.
    """
    from bokeh.embed import file_html

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path must end in .html; got {path.name!r}")
    layout = inspector_document(tree, name, q=q)
    html = file_html(layout, resources=_inline_resources(), title="scarlet_xr inspector")
    path.write_text(html, encoding="utf-8")
    return path
