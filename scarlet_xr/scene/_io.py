"""Save and load a whole Scene (structure and parameters) without pickle.

File format: a NumPy ``.npz`` archive read with ``allow_pickle=False``:

- ``__scene__``: a JSON string describing the frame and every source as a
  tree of nodes ``{"class": "scarlet_xr.core._morphology.SersicMorphology",
  "fields": {...}}``; array fields refer to archive entries by name,
- ``a0``, ``a1``, ...: the arrays (parameters in their raw, unconstrained
  form, PSF images ...), stored bit for bit.

Only Equinox modules defined inside :mod:`scarlet_xr` can be rebuilt (the
class is looked up by name in that package; no other code is ever imported),
so a scene file cannot run arbitrary code. Loading bypasses ``__init__``
(the saved field values are restored as they were), which is why a loaded
scene renders bit-identically.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..wcs import Frame
from ._scene import Scene

__all__ = ["save_scene", "load_scene"]

FORMAT = "scarlet_xr.scene"
VERSION = 1
_PACKAGE = "scarlet_xr."


class _Writer:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, value, kind: str) -> dict:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.asarray(value)
        return {"array": key, "kind": kind}

    def encode(self, obj, where: str):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, np.integer)):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            return {"float": repr(float(obj))}  # repr keeps every bit (also inf/nan)
        if isinstance(obj, jax.Array):
            return self.array(obj, "jax")
        if isinstance(obj, np.ndarray):
            return self.array(obj, "numpy")
        if isinstance(obj, tuple):
            return {"tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return {"list": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, eqx.Module):
            cls = type(obj)
            path = f"{cls.__module__}.{cls.__qualname__}"
            if not path.startswith(_PACKAGE) or "<locals>" in path:
                raise ValueError(
                    f"cannot save {where}: only scarlet_xr classes can be saved without pickle; "
                    f"got {path}"
                )
            fields = {
                f.name: self.encode(getattr(obj, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(obj)
            }
            return {"class": path, "fields": fields}
        raise ValueError(
            f"cannot save {where}: values of type {type(obj).__name__} are not supported "
            "(priors must be None; only scarlet_xr modules, arrays and plain numbers can be saved)"
        )


def _resolve(path: str):
    if not path.startswith(_PACKAGE):
        raise ValueError(f"scene file names a class outside scarlet_xr: {path!r}")
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"scene file names an unknown class {path!r}") from err
    if not (isinstance(cls, type) and issubclass(cls, eqx.Module)):
        raise ValueError(f"scene file names {path!r}, which is not an Equinox module")
    return cls


def _decode(node, arrays):
    if node is None or isinstance(node, (bool, str, int)):
        return node
    if "float" in node:
        return float(node["float"])
    if "array" in node:
        arr = arrays[node["array"]]
        return jnp.asarray(arr) if node["kind"] == "jax" else np.array(arr)
    if "tuple" in node:
        return tuple(_decode(v, arrays) for v in node["tuple"])
    if "list" in node:
        return [_decode(v, arrays) for v in node["list"]]
    if "class" in node:
        cls = _resolve(node["class"])
        obj = object.__new__(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        if set(node["fields"]) != names:
            raise ValueError(
                f"scene file fields {sorted(node['fields'])} do not match {cls.__name__} "
                f"fields {sorted(names)} (saved by another scarlet_xr version?)"
            )
        for key, value in node["fields"].items():
            object.__setattr__(obj, key, _decode(value, arrays))
        return obj
    raise ValueError(f"corrupt scene file: unexpected node {node!r}")


def save_scene(scene: Scene, path) -> Path:
    """Write a scene (frame, sources, parameters) to ``path`` (``.npz``), without pickle.

    Parameters
    ----------
    scene : Scene
    path : str or path-like
        Output file; ``.npz`` is appended when missing.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If a source holds something that cannot be saved without pickle
        (a prior distribution, a user-defined morphology class).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from scarlet_xr import Frame, Scene, Source, FreeFormMorphology
    >>> from scarlet_xr.scene import save_scene, load_scene
    >>> with Scene(Frame(["g"], (15, 15))) as scene:
    ...     _ = Source((7.0, 7.0), np.array([3.0]), FreeFormMorphology(np.ones((5, 5))))
    >>> path = save_scene(scene, os.path.join(tempfile.mkdtemp(), "scene.npz"))
    >>> bool(np.array_equal(load_scene(path).render(), scene.render()))
    True
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"expected a Scene; got {type(scene).__name__}")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    w = _Writer()
    frame = scene.frame
    desc = {
        "format": FORMAT,
        "version": VERSION,
        "frame": {
            "bands": list(frame.bands),
            "shape": list(frame.shape),
            "origin": list(frame.origin),
            "psf_sigma": repr(frame.psf_sigma),
            "wcs_header": None if frame.wcs is None else frame.wcs.to_header_string(relax=True),
        },
        "sources": [w.encode(s, f"source {i}") for i, s in enumerate(scene.sources)],
    }
    np.savez(path, __scene__=np.array(json.dumps(desc)), **w.arrays)
    return path


def load_scene(path) -> Scene:
    """Read a scene written by :func:`save_scene`.

    The loaded scene renders bit-identically to the saved one and can be fit
    again (``load_scene(p).fit(obs)``).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    Scene

    Raises
    ------
    ValueError
        If the file is not a scarlet_xr scene file or names classes outside
        scarlet_xr.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path.name!r} is not a readable scene file: {err}") from err
    if "__scene__" not in arrays:
        raise ValueError(f"{path.name!r} is not a scarlet_xr scene file (no '__scene__' entry)")
    desc = json.loads(str(arrays.pop("__scene__")))
    if desc.get("format") != FORMAT or desc.get("version") != VERSION:
        raise ValueError(
            f"{path.name!r}: expected format {FORMAT!r} version {VERSION}; "
            f"got {desc.get('format')!r} version {desc.get('version')!r}"
        )
    fd = desc["frame"]
    wcs = None
    if fd["wcs_header"] is not None:
        from astropy.io import fits
        from astropy.wcs import WCS

        wcs = WCS(fits.Header.fromstring(fd["wcs_header"]), relax=True)
    frame = Frame(
        fd["bands"], tuple(fd["shape"]), wcs=wcs, origin=tuple(fd["origin"]),
        psf_sigma=float(fd["psf_sigma"]),
    )
    scene = Scene(frame)
    for node in desc["sources"]:
        scene.add(_decode(node, arrays))
    return scene
