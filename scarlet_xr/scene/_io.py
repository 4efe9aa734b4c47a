"""Save and load a whole Scene (structure and parameters) without pickle.

File format: a NumPy ``.npz`` archive read with ``allow_pickle=False``:

- ``__scene__``: a JSON string describing the frame and every source as a
  tree of nodes ``{"class": "scarlet_xr.core._morphology.SersicMorphology",
  "fields": {...}}``; array fields refer to archive entries by name,
- ``a0``, ``a1``, ...: the arrays (parameters in their raw, unconstrained
  form, PSF images ...), stored bit for bit; since version 2 the JSON records
  each array's shape and dtype, checked on load.

Loading validates the file against this schema and every source against the
frame (component shapes ``(band, h, w)`` with the frame's bands and the
morphology's box): a truncated or hand-edited file raises ``ValueError``
naming the entry (``__scene__``, ``frame.shape``, ``a3`` in
``source 2.components[0].morphology ...``), never another exception.

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
import sys
import zipfile
import zlib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core import Source
from ..wcs import Frame
from ._scene import Scene

__all__ = ["save_scene", "load_scene"]

FORMAT = "scarlet_xr.scene"
VERSION = 2
"""Version written; :data:`READ_VERSIONS` can be read."""
READ_VERSIONS = (1, 2)
_PACKAGE = "scarlet_xr."
_IMPORTABLE = ("scarlet_xr.core.", "scarlet_xr.scene.", "scarlet_xr.wcs.")
"""Modules a scene file may name that are imported if not loaded yet (others must be loaded)."""


class _Writer:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, value, kind: str) -> dict:
        key = f"a{len(self.arrays)}"
        arr = self.arrays[key] = np.asarray(value)
        return {"array": key, "kind": kind, "shape": list(arr.shape), "dtype": arr.dtype.str}

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


def _resolve(path, where: str):
    if not isinstance(path, str) or not path.startswith(_PACKAGE):
        raise ValueError(f"scene file names a class outside scarlet_xr: {path!r} (at {where})")
    module, _, name = path.rpartition(".")
    mod = sys.modules.get(module)
    if mod is None and module.startswith(_IMPORTABLE):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            mod = None
    cls = getattr(mod, name, None) if mod is not None else None
    if cls is None:
        raise ValueError(f"scene file names an unknown class {path!r} (at {where})")
    if not (isinstance(cls, type) and issubclass(cls, eqx.Module)):
        raise ValueError(f"scene file names {path!r}, which is not an Equinox module (at {where})")
    return cls


def _entry(node: dict, arrays, where: str):
    """The archive array a node refers to, checked against the recorded shape and dtype."""
    key = node["array"]
    if not isinstance(key, str) or key not in arrays:
        raise ValueError(f"scene file entry {key!r} (for {where}) is missing from the archive")
    arr = arrays[key]
    if arr.dtype.kind not in "biufc":
        raise ValueError(
            f"scene file entry {key!r} (for {where}): expected a numeric array; got dtype {arr.dtype}"
        )
    if "shape" in node and list(arr.shape) != list(node["shape"]):
        raise ValueError(
            f"scene file entry {key!r} (for {where}): expected shape {tuple(node['shape'])}; got {arr.shape}"
        )
    if "dtype" in node and arr.dtype.str != node["dtype"]:
        raise ValueError(
            f"scene file entry {key!r} (for {where}): expected dtype {node['dtype']!r}; got {arr.dtype.str!r}"
        )
    if node.get("kind") not in ("jax", "numpy"):
        raise ValueError(f"scene file entry {key!r} (for {where}): unknown array kind {node.get('kind')!r}")
    return jnp.asarray(arr) if node["kind"] == "jax" else np.array(arr)


def _decode(node, arrays, where: str):
    if node is None or isinstance(node, (bool, str, int)):
        return node
    if not isinstance(node, dict):
        raise ValueError(f"corrupt scene file: unexpected value {node!r} at {where}")
    if "float" in node:
        try:
            return float(node["float"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"corrupt scene file: {where} is not a number: {node['float']!r}") from err
    if "array" in node:
        return _entry(node, arrays, where)
    for seq, kind in (("tuple", tuple), ("list", list)):
        if seq in node:
            if not isinstance(node[seq], list):
                raise ValueError(f"corrupt scene file: {where} must be a list; got {node[seq]!r:.80}")
            return kind(_decode(v, arrays, f"{where}[{i}]") for i, v in enumerate(node[seq]))
    if "class" in node:
        cls = _resolve(node["class"], where)
        fields = node.get("fields")
        if not isinstance(fields, dict):
            raise ValueError(f"corrupt scene file: {where} has no field mapping")
        obj = object.__new__(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        if set(fields) != names:
            raise ValueError(
                f"scene file fields {sorted(fields)} at {where} do not match {cls.__name__} "
                f"fields {sorted(names)} (saved by another scarlet_xr version?)"
            )
        for key, value in fields.items():
            object.__setattr__(obj, key, _decode(value, arrays, f"{where}.{key}"))
        return obj
    raise ValueError(f"corrupt scene file: unexpected node {node!r:.120} at {where}")


def _check_source(src, frame: Frame, where: str) -> None:
    """Shapes of a decoded source against the frame (traced with ``jax.eval_shape``, no compute)."""
    if not isinstance(src, Source):
        raise ValueError(f"{where}: expected a scarlet_xr Source; got {type(src).__name__}")
    nb = len(frame.bands)
    try:
        center = jax.eval_shape(lambda: src.center.value)
        if tuple(center.shape) != (2,):
            raise ValueError(f"{where}.center: expected shape (2,); got {tuple(center.shape)}")
        if not isinstance(src.components, tuple) or not src.components:
            raise ValueError(f"{where}.components: expected a non-empty tuple of components")
        for k, comp in enumerate(src.components):
            got = jax.eval_shape(lambda c=comp: c(jnp.zeros(2)))
            box = tuple(getattr(comp.morphology, "shape", ()))
            want = (nb, *box)
            if tuple(got.shape) != want:
                raise ValueError(
                    f"{where}.components[{k}] renders shape {tuple(got.shape)}; expected {want} "
                    f"({nb} bands of the frame, the morphology's box {box})"
                )
    except ValueError:
        raise
    except Exception as err:  # a hand-edited tree can fail anywhere while tracing
        raise ValueError(f"{where} cannot be evaluated: {type(err).__name__}: {err}") from err


def _frame(fd) -> Frame:
    if not isinstance(fd, dict):
        raise ValueError(f"scene file entry 'frame': expected a mapping; got {fd!r:.80}")
    missing = [k for k in ("bands", "shape", "origin", "psf_sigma", "wcs_header") if k not in fd]
    if missing:
        raise ValueError(f"scene file entry 'frame' is missing {missing}")
    bands, shape, origin = fd["bands"], fd["shape"], fd["origin"]
    if not (isinstance(bands, list) and bands and all(isinstance(b, str) for b in bands)):
        raise ValueError(f"scene file entry 'frame.bands': expected a list of band names; got {bands!r:.80}")
    for key, val in (("shape", shape), ("origin", origin)):
        if not (isinstance(val, list) and len(val) == 2 and all(type(v) is int for v in val)):
            raise ValueError(f"scene file entry 'frame.{key}': expected two integers; got {val!r:.80}")
    try:
        psf_sigma = float(fd["psf_sigma"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"scene file entry 'frame.psf_sigma': expected a number; got {fd['psf_sigma']!r}"
        ) from err
    if not (np.isfinite(psf_sigma) and psf_sigma > 0):
        raise ValueError(f"scene file entry 'frame.psf_sigma': expected > 0; got {psf_sigma}")
    wcs = None
    if fd["wcs_header"] is not None:
        from astropy.io import fits
        from astropy.wcs import WCS

        try:
            wcs = WCS(fits.Header.fromstring(str(fd["wcs_header"])), relax=True)
        except Exception as err:  # astropy raises many types for bad headers
            raise ValueError(f"scene file entry 'frame.wcs_header' is not a valid WCS header: {err}") from err
    try:
        return Frame(bands, tuple(shape), wcs=wcs, origin=tuple(origin), psf_sigma=psf_sigma)
    except ValueError as err:
        raise ValueError(f"scene file entry 'frame': {err}") from err


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
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a readable scarlet_xr scene file (garbage,
        truncated, unknown format or version), names classes outside
        scarlet_xr, or does not match the schema (a missing or extra entry, an
        array of the wrong shape or dtype, a source that does not fit the
        frame). The message names the entry.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such scene file: {str(path)!r}")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path.name!r} is not a readable scene file: {err}") from err
    if "__scene__" not in arrays:
        raise ValueError(f"{path.name!r} is not a scarlet_xr scene file (no '__scene__' entry)")
    raw = arrays.pop("__scene__")
    try:
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise ValueError(f"expected a JSON string; got a {raw.dtype} array of shape {raw.shape}")
        desc = json.loads(str(raw))
    except ValueError as err:
        raise ValueError(f"{path.name!r}: scene file entry '__scene__' is corrupt: {err}") from err
    if not isinstance(desc, dict):
        raise ValueError(f"{path.name!r}: scene file entry '__scene__' must be a JSON object")
    if desc.get("format") != FORMAT or desc.get("version") not in READ_VERSIONS:
        raise ValueError(
            f"{path.name!r}: expected format {FORMAT!r} version {' or '.join(map(str, READ_VERSIONS))}; "
            f"got {desc.get('format')!r} version {desc.get('version')!r}"
        )
    try:
        frame = _frame(desc.get("frame"))
        sources = desc.get("sources")
        if not isinstance(sources, list):
            raise ValueError(f"scene file entry 'sources': expected a list; got {sources!r:.80}")
        scene = Scene(frame)
        for i, node in enumerate(sources):
            src = _decode(node, arrays, f"source {i}")
            _check_source(src, frame, f"source {i}")
            scene.add(src)
    except ValueError as err:
        raise ValueError(f"{path.name!r}: {err}") from err
    except (TypeError, KeyError, AttributeError, IndexError) as err:  # anything the checks missed
        raise ValueError(f"{path.name!r}: corrupt scene file ({type(err).__name__}: {err})") from err
    if sources:
        try:
            got = jax.eval_shape(scene.model())
        except Exception as err:  # tracing a hand-edited model can fail anywhere
            raise ValueError(
                f"{path.name!r}: the scene cannot be rendered: {type(err).__name__}: {err}"
            ) from err
        if tuple(got.shape) != frame.cube_shape:
            raise ValueError(
                f"{path.name!r}: the scene renders shape {tuple(got.shape)}; expected the frame's "
                f"{frame.cube_shape}"
            )
    return scene
