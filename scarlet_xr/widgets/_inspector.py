"""The interactive inspector: panel widgets bound to holoviews plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..viz import check_tree, observation_names, save_inspector_html, source_labels

__all__ = ["Inspector", "inspect", "export_html"]


class Inspector:
    """Explore a results tree: bands, sources, residuals, spectra and the loss.

    Built by :func:`inspect`. Display it in Jupyter (it renders as a panel
    layout), serve it with ``inspector.panel.servable()``, or embed it in an
    ipywidgets layout with :meth:`ipywidget`.

    Attributes
    ----------
    observation, band, source : panel.widgets.Select
        The selectors. Setting ``.value`` (from code or the page) updates every
        plot; ``source.value`` is a source index.
    views : dict of holoviews.DynamicMap
        ``"rgb"`` (data, asinh RGB, sources marked, the selected one circled),
        ``"source_model"`` (the selected source's model alone), ``"spectrum"``
        (its flux per band, posterior intervals when ``/posterior`` exists),
        ``"data"``, ``"model"``, ``"residual"`` (one band; residual in units of
        the noise) and ``"loss"``.
    panel : panel.layout.Column
        The whole dashboard.
    """

    def __init__(self, tree, observation: str | None = None):
        import holoviews as hv
        import panel as pn

        from .. import viz as _holo  # the plots, by their public names

        check_tree(tree)
        self.tree = tree
        names = observation_names(tree)
        if observation is not None and observation not in names:
            raise ValueError(f"no observation {observation!r} in the results tree; expected one of {names}")
        self.observation = pn.widgets.Select(label="observation", options=names,
                                             value=observation or names[0])
        self.band = pn.widgets.Select(label="band", options=self._bands(self.observation.value))
        labels = source_labels(tree)
        self.source = pn.widgets.Select(label="source", options=dict(zip(labels, range(len(labels)),
                                                                        strict=True)), value=0)
        self.observation.param.watch(self._on_observation, "value")

        def panel_fn(which):
            def fn(name, band, source):
                if band not in self._bands(name):  # observation switched; band options follow
                    band = self._bands(name)[0]
                return _holo.observation_panel(tree, which, name, band, source)

            return fn

        obs, band, src = self.observation, self.band, self.source
        self.views = {
            "rgb": hv.DynamicMap(pn.bind(lambda name, s: _holo.rgb_view(tree, name, s), obs, src)),
            "source_model": hv.DynamicMap(pn.bind(lambda s: _holo.source_model_view(tree, s), src)),
            "spectrum": hv.DynamicMap(pn.bind(lambda s: _holo.spectrum_plot(tree, s), src)),
        }
        for which in _holo.PANELS:
            self.views[which] = hv.DynamicMap(pn.bind(panel_fn(which), obs, band, src))
        self.views["deblended"] = hv.DynamicMap(pn.bind(
            lambda name, b, s: _holo.deblended_view(tree, name, b if b in self._bands(name) else None, s),
            obs, band, src))
        self.catalog_row = pn.pane.HTML(pn.bind(lambda s: _holo.catalog_row_html(tree, s), src),
                                        max_height=400, styles={"overflow-y": "auto"})
        self.views["loss"] = _holo.loss_plot(tree)
        v = self.views
        controls = [self.band, self.source] if len(names) == 1 else [self.observation, self.band, self.source]
        self.panel = pn.Column(
            pn.Row(*controls),
            pn.Row(v["rgb"], v["source_model"], v["spectrum"]),
            pn.Row(v["data"], v["model"], v["residual"]),
            pn.Row(v["deblended"], self.catalog_row, v["loss"]),
        )

    def _bands(self, name) -> list[str]:
        return [str(b) for b in self.tree["observations"][name]["band"].values]

    def _on_observation(self, event) -> None:
        bands = self._bands(event.new)
        self.band.options = bands
        if self.band.value not in bands:
            self.band.value = bands[0]

    def displayed(self) -> dict:
        """The arrays the plots currently show (for tests and scripting).

        Returns
        -------
        dict
            ``"data"``, ``"model"``, ``"residual"``: ``(y, x)`` images of the
            selected band; ``"source_model"``: ``(y, x, 3)`` RGB of the selected
            source alone; ``"spectrum"``: its flux per band; ``"selected"``:
            ``(x, y)`` of the circled source; ``"deblended"``: ``(y, x)`` deblended
            image of the selected source and band; ``"band"`` and ``"source"``.
        """
        out = {"band": self.band.value, "source": self.source.value}
        for which in ("data", "model", "residual"):
            overlay = self.views[which][()]
            out[which] = np.asarray(overlay.get(0).dimension_values(2, flat=False))
        rgb = self.views["source_model"][()]
        out["source_model"] = np.dstack([rgb.dimension_values(d, flat=False) for d in (2, 3, 4)])
        out["spectrum"] = np.asarray(self.views["spectrum"][()].get(0).dimension_values(1))
        sel = self.views["rgb"][()].get(2)
        out["selected"] = (float(sel.dimension_values(0)[0]), float(sel.dimension_values(1)[0]))
        out["deblended"] = np.asarray(self.views["deblended"][()].dimension_values(2, flat=False))
        return out

    def ipywidget(self):
        """The dashboard as an ipywidgets widget (needs ``jupyter_bokeh``)."""
        import panel as pn

        return pn.ipywidget(self.panel)

    def save(self, path) -> Path:
        """Write the self-contained offline HTML page (see :func:`export_html`)."""
        return export_html(self.tree, path, observation=self.observation.value)

    def _repr_mimebundle_(self, include=None, exclude=None):
        _load_notebook_extension()
        return self.panel._repr_mimebundle_(include, exclude)

    def __repr__(self) -> str:
        n = len(self.source.options)
        return f"Inspector({n} sources, observation {self.observation.value!r}, band {self.band.value!r})"


def _load_notebook_extension() -> None:
    """Load panel's notebook JS once, inline (no CDN), when running in a kernel."""
    import panel as pn

    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return
    if not pn.extension._loaded:
        pn.extension(inline=True)


def inspect(tree, *, observation: str | None = None) -> Inspector:
    """Build the interactive inspector of a results tree.

    Parameters
    ----------
    tree : xarray.DataTree
        Results of :meth:`scarlet_xr.Scene.to_datatree` (or read back from
        netCDF/Zarr). A ``/posterior`` group with ``flux`` draws adds
        posterior intervals to the spectra.
    observation : str, optional
        The observation shown first (default: the first).

    Returns
    -------
    Inspector
        Displays as a dashboard in Jupyter: band, source (and observation)
        selectors; data RGB with the selected source circled; the source's
        model alone; its spectrum; data | model | residual/σ of the band;
        the loss curve.

    Raises
    ------
    ValueError
        If ``tree`` is not a results tree or ``observation`` is unknown.
    """
    return Inspector(tree, observation)


def export_html(tree, path, *, observation: str | None = None) -> Path:
    """Write the inspector as one self-contained HTML page that works offline.

    The page embeds BokehJS and all arrays (no CDN, server or kernel); its
    band and source selectors run in the browser.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree.
    path : str or Path
        Output path ending in ``.html``.
    observation : str, optional
        Observation to show (default: the first).

    Returns
    -------
    Path
    """
    return save_inspector_html(tree, path, observation)
