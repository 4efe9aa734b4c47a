"""Headless Chromium opens the exported inspector page offline and drives its selectors.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them) and selenium.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from _fitted import hsc_fit_tree

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian chromium + chromium-driver (apt-get install -y chromium chromium-driver)",
)

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--window-size=1200,1100",
        # offline: every host name fails to resolve, so a CDN reference would show as an error
        "--host-resolver-rules=MAP * ~NOTFOUND"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    from scarlet_xr.widgets import export_html

    tree = hsc_fit_tree()
    path = export_html(tree, tmp_path_factory.mktemp("html") / "inspector.html")
    opts = webdriver.ChromeOptions()
    for a in ARGS:
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(path.as_uri())
        yield driver, tree, path
    finally:
        driver.quit()


def _wait_rendered(driver, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        n = driver.execute_script(
            "return (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0].roots().length : 0")
        if n:
            # wait until every plot has painted its canvas
            idle = driver.execute_script("return Bokeh.documents[0].is_idle")
            if idle:
                return n
        time.sleep(0.2)
    raise AssertionError("bokeh did not render the page within the timeout")


def _screenshot(driver, path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    driver.save_screenshot(str(path))
    return mpimg.imread(path)[..., :3]


def _check_not_blank(img):
    assert img.shape[0] > 500 and img.shape[1] > 500
    non_white = np.mean(np.any(img < 0.95, axis=-1))
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert non_white > 0.15, f"only {non_white:.1%} of the screenshot is not white"
    assert colours > 200, f"only {colours} distinct colours: plots did not render"


def _errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


_IMAGE_SUMS = """
const doc = Bokeh.documents[0];
const out = [];
for (const m of doc.all_models) {
    if (m.data && m.data.image && m.data.image.length && m.data.image[0].length !== undefined) {
        const a = m.data.image[0];
        let s = 0;
        for (let i = 0; i < a.length; i++) { if (Number.isFinite(a[i])) s += a[i]; }
        out.push(s);
    }
}
return out;
"""


def test_inspector_page_renders_offline_without_js_errors(page, tmp_path):
    driver, tree, path = page
    assert _wait_rendered(driver) == 1
    img = _screenshot(driver, tmp_path / "inspector.png")
    assert (tmp_path / "inspector.png").stat().st_size > 20_000
    _check_not_blank(img)
    assert _errors(driver) == []
    # no resource was fetched from the network: everything is inline
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in urls if not u.startswith(("data:", "blob:", "file:"))] == []


def test_selectors_work_in_the_browser(page, tmp_path):
    driver, tree, path = page
    _wait_rendered(driver)
    node = tree["observations"]["hsc"].to_dataset()
    first = _screenshot(driver, tmp_path / "g.png")
    sums = driver.execute_script(_IMAGE_SUMS)
    assert any(np.isclose(s, float(node["data"].sel(band="g").sum()), rtol=1e-4) for s in sums)
    driver.execute_script("""
        const doc = Bokeh.documents[0];
        for (const m of doc.all_models) {
            if (m.title === 'band') m.value = 'i';
            if (m.title === 'source') m.value = '3';
        }""")
    time.sleep(0.5)
    _wait_rendered(driver)
    sums = driver.execute_script(_IMAGE_SUMS)
    assert any(np.isclose(s, float(node["data"].sel(band="i").sum()), rtol=1e-4) for s in sums)
    assert not any(np.isclose(s, float(node["data"].sel(band="g").sum()), rtol=1e-4) for s in sums)
    titles = driver.execute_script(
        "return [...Bokeh.documents[0].all_models].filter(m => m.type == 'Title' || "
        "(m.text !== undefined && m.constructor.name == 'Title')).map(m => m.text)")
    assert any("spectrum of 3:" in t for t in titles)
    second = _screenshot(driver, tmp_path / "i.png")
    _check_not_blank(second)
    assert np.mean(np.any(np.abs(first - second) > 0.05, axis=-1)) > 0.02  # the page changed
    assert _errors(driver) == []
