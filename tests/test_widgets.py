"""The interactive inspector on a real fit: drive its controls, check what the plots show."""

from __future__ import annotations

import numpy as np
import pytest
from _fitted import hsc_fit_tree, with_posterior

pytest.importorskip("panel")
pytest.importorskip("holoviews")

from bokeh.models import GlyphRenderer  # noqa: E402

from scarlet_xr import viz  # noqa: E402
from scarlet_xr.widgets import Inspector, export_html, inspect  # noqa: E402


@pytest.fixture(scope="module")
def tree():
    return hsc_fit_tree()


def _rendered(root):
    """Image arrays and point sets of the bokeh models panel rendered, in document order."""
    images, points = [], []
    for r in root.select({"type": GlyphRenderer}):
        data = r.data_source.data
        if "image" in data:
            images.append(np.asarray(data["image"][0]))
        elif "x" in data and "y" in data:
            points.append((np.asarray(data["x"], float), np.asarray(data["y"], float)))
    return images, points


def test_inspector_follows_band_and_source_selection(tree):
    node = tree["observations"]["hsc"].to_dataset()
    src = tree["sources"].to_dataset()
    insp = inspect(tree)
    assert isinstance(insp, Inspector)
    assert insp.band.options == ["g", "r", "i", "z", "y"]
    assert len(insp.source.options) == 7
    root = insp.panel.get_root()  # the bokeh document a browser would show

    shown = insp.displayed()
    np.testing.assert_allclose(shown["data"], node["data"].sel(band="g").values, rtol=1e-6)
    np.testing.assert_allclose(shown["model"], node["model"].sel(band="g").values, rtol=1e-6)

    def data_image():
        images, _ = _rendered(root)
        matches = [im for im in images if im.shape == (58, 48) and np.allclose(
            im, node["data"].values[insp.band.options.index(insp.band.value)], rtol=1e-6)]
        return matches

    assert len(data_image()) == 1
    before = [im.copy() for im in _rendered(root)[0]]

    insp.band.value = "i"
    shown = insp.displayed()
    np.testing.assert_allclose(shown["data"], node["data"].sel(band="i").values, rtol=1e-6)
    np.testing.assert_allclose(shown["residual"], viz.residual_sigma(node)[2], rtol=1e-6)
    assert len(data_image()) == 1, "the rendered data panel must show the i band now"
    after = _rendered(root)[0]
    changed = sum(not np.array_equal(a, b, equal_nan=True) for a, b in zip(before, after, strict=True))
    assert changed == 4  # data, model, residual and deblended panels; the RGB views do not depend on the band

    assert shown["selected"] == pytest.approx((src["x"].values[0], src["y"].values[0]))
    insp.source.value = 3
    shown = insp.displayed()
    assert shown["selected"] == pytest.approx((src["x"].values[3], src["y"].values[3]))
    np.testing.assert_allclose(shown["spectrum"], src["flux"].values[3])
    # the source's model alone: its own light only, at its own position
    alone = shown["source_model"].sum(-1)
    peak = np.unravel_index(np.argmax(alone), alone.shape)
    assert abs(peak[0] - src["y"].values[3]) <= 3 and abs(peak[1] - src["x"].values[3]) <= 3
    assert alone[int(src["y"].values[0]), int(src["x"].values[0])] == 0  # the star is not in it
    # the red circle in every rendered image panel moved to source 3
    circles = [p for p in _rendered(root)[1] if p[0].size == 1]
    assert len(circles) == 4
    for x, y in circles:
        assert (x[0], y[0]) == pytest.approx((src["x"].values[3], src["y"].values[3]))


def test_inspector_spectrum_shows_posterior_intervals(tree):
    insp = inspect(with_posterior(tree, rel_sigma=0.1))
    insp.source.value = 1
    spec = insp.views["spectrum"][()]
    assert len(spec) == 3  # fit line, fit points, posterior error bars
    bars = spec.get(2)
    flux = tree["sources"]["flux"].values[1]
    # 68% interval of a 10% Gaussian: half-width about 0.1 * flux
    half = 0.5 * (bars.dimension_values(2) + bars.dimension_values(3))
    np.testing.assert_allclose(half, 0.1 * flux, rtol=0.2)


def test_inspector_observation_selector_switches_bands(tree):
    two = tree.copy()
    hsc = tree["observations"]["hsc"].to_dataset()
    two["observations/blue"] = hsc.sel(band=["g", "r"])
    insp = inspect(two, observation="blue")
    assert insp.band.options == ["g", "r"]
    insp.band.value = "r"
    np.testing.assert_allclose(insp.displayed()["data"], hsc["data"].sel(band="r").values, rtol=1e-6)
    insp.observation.value = "hsc"
    assert insp.band.options == ["g", "r", "i", "z", "y"]
    with pytest.raises(ValueError, match="no observation 'hst' in the results tree"):
        inspect(tree, observation="hst")


def test_inspector_as_ipywidget_and_html(tree, tmp_path):
    import ipywidgets

    widget = inspect(tree).ipywidget()
    assert isinstance(widget, ipywidgets.DOMWidget)
    path = export_html(tree, tmp_path / "insp.html")
    assert path.stat().st_size > 1_000_000
    assert inspect(tree).save(tmp_path / "again.html").exists()


def test_results_accessor_inspect(tree):
    insp = tree.scarlet.inspect()
    insp.band.value = "z"
    np.testing.assert_allclose(insp.displayed()["data"],
                               tree["observations"]["hsc"]["data"].sel(band="z").values, rtol=1e-6)


def test_inspect_rejects_non_results():
    import xarray as xr

    with pytest.raises(ValueError, match="not a scarlet_xr results tree"):
        inspect(xr.DataTree())


def test_inspector_shows_the_deblended_image_and_catalog_row(tree):
    insp = inspect(tree)
    insp.source.value = 1
    insp.band.value = "i"
    shown = insp.displayed()
    deb = tree.scarlet.deblended("hsc", source=1)["image"].values
    np.testing.assert_allclose(shown["deblended"], deb[2], rtol=1e-6)
    insp.panel.get_root()
    html = viz._holo.catalog_row_html(tree, 1)
    cat = tree.scarlet.catalog()
    assert f"<td>flux_i</td><td>{cat['flux_i'][1]:.5g}</td>" in html
    assert "<td>r_half</td>" in html and "<td>pix</td>" in html
