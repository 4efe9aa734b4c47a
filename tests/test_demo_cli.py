"""`scarlet-xr demo` end to end and the package's import boundaries."""

import subprocess
import sys

import xarray as xr

from scarlet_xr.cli import main


def test_demo_writes_results_png_and_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reduced chi2" in out and "wall time" in out
    tree = xr.open_datatree(tmp_path / "result.nc", engine="h5netcdf")
    assert tree["observations/hsc"].attrs["chi2_reduced"] <= 1.32
    assert dict(tree["sources"].sizes) == {"source": 7, "band": 5}
    png = tmp_path / "hsc_data_model_residual.png"
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _modules_after(stmt):
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_scarlet_xr_stays_light():
    mods = _modules_after("import scarlet_xr")
    for heavy in ("holoviews", "panel", "ipywidgets", "bokeh", "arviz", "dask", "reproject", "matplotlib"):
        assert heavy not in mods, heavy
    # astropy (0.25 s) comes in where FITS files or a WCS are used, not with the package
    assert "astropy" not in mods and "astropy.wcs" not in mods


LAYERS = {"core": 0, "infer": 1, "wcs": 1, "xr": 2, "scene": 3, "viz": 4, "widgets": 5}
THIRD_PARTY_BANNED_IN_CORE = {"xarray", "astropy", "optax", "numpyro", "scipy", "holoviews", "ipywidgets"}


def _imports(path):
    import ast

    tree = ast.parse(path.read_text())
    for node in tree.body:  # module level; lazy imports inside functions may go upwards
        if isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or ""


def test_layers_import_only_lower_layers():
    from pathlib import Path

    import scarlet_xr

    root = Path(scarlet_xr.__file__).parent
    for layer, rank in LAYERS.items():
        for path in (root / layer).glob("*.py"):
            for level, mod in _imports(path):
                if level == 0 and layer == "core":
                    assert mod.split(".")[0] not in THIRD_PARTY_BANNED_IN_CORE, (path, mod)
                if level == 2 and mod:  # from ..other import x
                    other = mod.split(".")[0]
                    if other in LAYERS:
                        assert LAYERS[other] < rank or other == layer, (path, mod)
