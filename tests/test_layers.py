"""The layering of the package (README, docs/architecture.md) is checked, not just described.

Every import between the package's sub-packages — at module level or inside a
function — must go to a lower layer (or the same one), and only through the
other package's public face (its ``__init__``), never one of its private
``_modules``.
"""

import ast
from pathlib import Path

import pytest

import scarlet_xr

ROOT = Path(scarlet_xr.__file__).parent

#: Layer of each sub-package, lowest first (equal numbers: siblings that must not import each other).
LAYERS = {
    "core": 0,
    "infer": 1,
    "wcs": 1,
    "xr": 2,
    "scene": 3,
    "nn": 3,
    "survey": 4,
    "viz": 4,
    "datasets": 4,
    "widgets": 5,
    "accessor": 6,
    "cli": 7,
}


def _imports(path: Path):
    """(line, target sub-package, private module or None) for every intra-package import."""
    me = path.relative_to(ROOT).parts
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if not (node.module or "").startswith("scarlet_xr."):
                continue
            parts = node.module.split(".")[1:]
        else:
            base = list(me[:-1])[: len(me) - node.level]
            if len(base) != len(me) - node.level:
                continue
            parts = base + (node.module.split(".") if node.module else [])
        if not parts:
            names = [a.name for a in node.names]
            for n in names:
                yield node.lineno, n, None
            continue
        private = next((p for p in parts[1:] if p.startswith("_")), None)
        yield node.lineno, parts[0].removesuffix(".py"), private


def _violations():
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).parts
        if len(rel) < 2 or rel[0] not in LAYERS:
            continue
        me = rel[0]
        for line, target, private in _imports(path):
            if target not in LAYERS or target == me:
                continue
            where = f"{'/'.join(rel)}:{line}"
            if LAYERS[target] > LAYERS[me]:
                out.append(f"{where}: layer {me} imports the higher layer {target}")
            elif LAYERS[target] == LAYERS[me]:
                out.append(f"{where}: {me} imports its sibling layer {target}")
            if private is not None:
                out.append(f"{where}: {me} imports {target}.{private}, a private module")
    return out


def test_every_import_goes_down_through_a_public_face():
    assert _violations() == []


def test_the_check_catches_a_wrong_import(tmp_path, monkeypatch):
    """A core module importing xr (or a private scene module) is reported."""
    bad = ROOT / "core" / "_layer_probe.py"
    bad.write_text("from ..xr import make_observation\nfrom ..scene._auto import fit_sources\n")
    try:
        found = _violations()
    finally:
        bad.unlink()
    assert any("core/_layer_probe.py:1: layer core imports the higher layer xr" in v for v in found)
    assert any("core imports scene._auto, a private module" in v for v in found)


@pytest.mark.parametrize("module", ["scarlet_xr", "scarlet_xr.core", "scarlet_xr.infer", "scarlet_xr.wcs", "scarlet_xr.xr", "scarlet_xr.scene", "scarlet_xr.survey", "scarlet_xr.viz", "scarlet_xr.accessor"])
def test_public_faces_declare_all(module):
    import importlib

    mod = importlib.import_module(module)
    assert isinstance(getattr(mod, "__all__", None), list), f"{module} has no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == []
