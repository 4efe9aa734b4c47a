"""Static figures, holoviews builders, the offline HTML page and write_report, on a real fit."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from _fitted import hsc_fit_tree, with_posterior

from scarlet_xr import viz


@pytest.fixture(scope="module")
def tree():
    return hsc_fit_tree()


def _png(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def test_import_does_not_load_plotting_libraries():
    code = ("import sys, scarlet_xr, scarlet_xr.viz; "
            "print(sorted(m for m in ('holoviews', 'bokeh', 'panel', 'ipywidgets', 'matplotlib.pyplot') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lupton_rgb_maps_reddest_band_to_red():
    cube = np.zeros((5, 8, 9))
    cube[4, 3, 3] = 10.0  # only the reddest band (y) has light
    rgb = viz.lupton_rgb(cube)
    assert rgb.shape == (8, 9, 3)
    assert rgb[3, 3, 0] == pytest.approx(1.0) and rgb[3, 3, 1] == 0 and rgb[3, 3, 2] == 0
    with pytest.raises(ValueError, match=r"\(band, y, x\)"):
        viz.lupton_rgb(np.zeros((8, 9)))


def test_residual_sigma_is_in_units_of_noise(tree):
    node = tree["observations"]["hsc"].to_dataset()
    r = viz.residual_sigma(node)
    expected = (node["data"].values - node["model"].values) * np.sqrt(node["weight"].values)
    np.testing.assert_allclose(r, expected, rtol=1e-5)
    # a fitted model leaves residuals of about one sigma
    assert 0.7 < np.nanstd(r) < 1.5
    masked = node.copy(deep=True)
    masked["weight"][0, 0, 0] = 0
    assert np.isnan(viz.residual_sigma(masked)[0, 0, 0])


def test_observation_panels_show_the_selected_band(tree):
    node = tree["observations"]["hsc"].to_dataset()
    for band in ("g", "i"):
        img = viz.observation_panel(tree, "data", band=band).get(0)
        np.testing.assert_allclose(img.dimension_values(2, flat=False), node["data"].sel(band=band).values,
                                   rtol=1e-6)
    res = viz.observation_panel(tree, "residual", band="z", source=2)
    np.testing.assert_allclose(res.get(0).dimension_values(2, flat=False),
                               viz.residual_sigma(node)[3], rtol=1e-6)
    sel = res.get(2)  # red circle on source 2
    src = tree["sources"].to_dataset()
    assert sel.dimension_values(0)[0] == pytest.approx(src["x"].values[2])
    assert sel.dimension_values(1)[0] == pytest.approx(src["y"].values[2])
    assert len(viz.band_images(tree, band="r")) == 3
    with pytest.raises(ValueError, match="unknown band 'q'; expected one of"):
        viz.observation_panel(tree, "data", band="q")
    with pytest.raises(ValueError, match="which must be one of"):
        viz.observation_panel(tree, "chi", band="g")
    with pytest.raises(ValueError, match=r"source index must be in \[0, 6\]"):
        viz.rgb_view(tree, source=7)


def test_spectrum_plot_has_posterior_intervals_only_with_posterior(tree):
    plain = viz.spectrum_plot(tree, 1)
    assert len(plain) == 2
    np.testing.assert_allclose(plain.get(0).dimension_values(1), tree["sources"]["flux"].values[1])
    post = viz.spectrum_plot(with_posterior(tree), 1)
    assert len(post) == 3
    bars = post.get(2)
    draws = with_posterior(tree)["posterior"]["flux"].values[:, :, 1].reshape(-1, 5)
    np.testing.assert_allclose(bars.dimension_values(1), np.median(draws, axis=0), rtol=1e-12)


def test_plot_sources_and_loss(tree, tmp_path):
    fig = viz.plot_sources(tree)
    assert len(fig.axes) == 3 * 7
    # the spectrum panel shows the fitted fluxes
    np.testing.assert_allclose(fig.axes[5].lines[0].get_ydata(), tree["sources"]["flux"].values[1])
    png = _png(viz.plot_sources(tree, tmp_path / "s.png", max_sources=2))
    assert png[..., :3].std() > 0.05
    loss = viz.plot_loss(tree)
    np.testing.assert_allclose(loss.axes[0].lines[0].get_ydata(), tree["fit"]["loss"].values)
    assert loss.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="max_sources must be >= 1"):
        viz.plot_sources(tree, max_sources=0)


def test_posterior_parameters_and_pair_plot_on_known_draws(tmp_path):
    rng = np.random.default_rng(3)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    x = rng.multivariate_normal([5.0, -2.0], cov, size=(2, 500))  # (chain, draw, band)
    post = xr.Dataset({"flux": (("chain", "draw", "source", "band"), x[:, :, None, :])},
                      coords={"source": [0], "band": ["g", "r"]})
    names, draws = viz.posterior_parameters(post, coords={"source": 0})
    assert names == ["flux[band=g]", "flux[band=r]"]
    np.testing.assert_array_equal(draws, x.reshape(-1, 2))
    assert np.corrcoef(draws.T)[0, 1] == pytest.approx(0.8, abs=0.05)
    fig = viz.plot_posterior_pairs(post, coords={"source": 0}, bins=20)
    assert len(fig.axes) == 4
    counts = fig.axes[2].collections[0].get_array()  # 2-D histogram below the diagonal
    assert float(np.sum(counts)) == 1000
    marks = [line.get_xdata()[0] for line in fig.axes[3].lines]  # 16/50/84% of the r-band flux
    np.testing.assert_allclose(marks, np.quantile(x[..., 1], [0.16, 0.5, 0.84]))
    _png(viz.plot_posterior_pairs(post, tmp_path / "pairs.png"))
    with pytest.raises(ValueError, match="unknown posterior variables"):
        viz.posterior_parameters(post, var_names=["shape"])
    with pytest.raises(ValueError, match=r"dims \('chain', 'draw', ...\)"):
        viz.posterior_parameters(post.isel(chain=0))


def test_inspector_html_is_self_contained(tree, tmp_path):
    pytest.importorskip("panel")  # imported panel registers external scripts with bokeh; none may leak
    path = viz.save_inspector_html(tree, tmp_path / "insp.html")
    html = path.read_text()
    assert "scarlet_xr inspector" in html
    assert not re.search(r"<script[^>]+src=", html), "the page must not load scripts from elsewhere"
    assert not re.search(r"<link[^>]+href=\"?https?:", html)
    assert "Bokeh" in html and len(html) > 1_000_000  # BokehJS is inlined
    with pytest.raises(ValueError, match=r"must end in \.html"):
        viz.save_inspector_html(tree, tmp_path / "insp.png")


def test_write_report(tree, tmp_path):
    files = viz.write_report(with_posterior(tree), tmp_path / "report")
    names = sorted(p.name for p in files)
    assert names == ["catalog.ecsv", "catalog.html", "hsc_data_model_residual.png", "inspector.html",
                     "loss.png", "posterior_pairs.png", "sources.png"]
    for p in files:
        assert p.exists() and p.stat().st_size > (1_000 if p.name.startswith("catalog") else 10_000)
        if p.suffix == ".png":
            assert _png(p)[..., :3].std() > 0.05
    plain = viz.write_report(tree, tmp_path / "plain", html=False)
    assert "posterior_pairs.png" not in {p.name for p in plain}
    assert "inspector.html" not in {p.name for p in plain}


def test_bad_trees_are_rejected(tree, tmp_path):
    with pytest.raises(TypeError, match="expected a results xarray.DataTree; got Dataset"):
        viz.write_report(tree["sources"].to_dataset(), tmp_path)
    broken = xr.DataTree(children={"sources": tree["sources"].copy()})
    with pytest.raises(ValueError, match=r"missing \['model', 'observations'\]"):
        viz.plot_sources(broken)
    with pytest.raises(ValueError, match="no observation 'hst'"):
        viz.rgb_view(tree, "hst")
