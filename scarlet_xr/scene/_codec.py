"""The JSON + arrays encoding of scene files (used by :mod:`._io`); no pickle, no imports by name.

A scene tree is written as JSON nodes; arrays go into the archive and the
node refers to them by key:

``None``, ``bool``, ``int``, ``str``
    as themselves;
``{"float": "1.5"}``
    a float (``repr`` keeps every bit, also ``inf``/``nan``);
``{"array": "a3", "kind": "jax"|"numpy", "shape": [...], "dtype": "<f4"}``
    an archive entry, checked against shape and dtype on load;
``{"tuple": [...]}``, ``{"list": [...]}``
    sequences;
``{"class": "scarlet_xr:SersicMorphology", "fields": {...}}``
    an Equinox module, named by its public import path ``module:QualName``
    and rebuilt field by field without calling ``__init__``;
``{"distribution": "numpyro.distributions:Normal", "args": {...}}``
    a numpyro distribution, rebuilt by calling the class with its arguments;
``{"call": "scarlet_xr.nn:learned_prior", "kwargs": {...}}``
    an object stored as a reference (the shipped learned prior: the name of
    its factory and arguments, never the network weights); only functions
    marked ``__scene_loader__ = True`` may be named.

Classes are resolved only from modules already imported (``sys.modules``),
except public :mod:`scarlet_xr` modules and ``numpyro.distributions``, which
may be imported. A file naming a module the user has not imported is refused
with a ``ValueError`` that says to import it first: a scene file can never
make Python import or run code the user did not load.

Version 1 and 2 files named classes by their private dotted path
(``scarlet_xr.core._morphology.SersicMorphology``, ``scarlet_xr`` classes
only); :func:`migrate_v2` rewrites them to version 3 names.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Writer", "decode", "migrate_v2", "public_name"]

_PACKAGE = "scarlet_xr"
_TRUSTED = ("numpyro.distributions",)
"""Modules outside scarlet_xr that a scene file may import (dependencies whose classes are rebuilt)."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _lookup(module, qualname: str):
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_private(module: str) -> bool:
    return any(p.startswith("_") for p in module.split("."))


def public_name(obj) -> str:
    """Return the public import path ``module:QualName`` of a class or function.

    The shortest public parent module that exports ``obj`` under its name is
    preferred (``scarlet_xr:SersicMorphology``, not
    ``scarlet_xr.core._morphology:SersicMorphology``); otherwise the defining
    module (for classes defined in a user module).

    Parameters
    ----------
    obj : type or function

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If ``obj`` is defined inside a function (``<locals>``) or cannot be
        found again under its module and name.

    Examples
    --------
    >>> from scarlet_xr.core import SersicMorphology
    >>> public_name(SersicMorphology)
    'scarlet_xr:SersicMorphology'
    """
    qual = obj.__qualname__
    if "<locals>" in qual or "<lambda>" in qual:
        raise ValueError(
            f"{qual} is defined inside a function; define it at module level of an importable module"
        )
    parts = obj.__module__.split(".")
    for n in range(1, len(parts) + 1):
        name = ".".join(parts[:n])
        mod = sys.modules.get(name)
        if mod is not None and not _is_private(name) and _lookup(mod, qual) is obj:
            return f"{name}:{qual}"
    mod = sys.modules.get(obj.__module__)
    if mod is None or _lookup(mod, qual) is not obj:
        raise ValueError(f"{obj.__module__}.{qual} cannot be found again under its module and name")
    return f"{obj.__module__}:{qual}"


def _module(name: str, path: str, where: str):
    """An imported module (public scarlet_xr and trusted modules are imported if needed)."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    ours = (name == _PACKAGE or name.startswith(_PACKAGE + ".")) and not _is_private(name)
    if ours or name in _TRUSTED:
        try:
            return importlib.import_module(name)
        except ImportError as err:
            raise ValueError(
                f"scene file names {path!r} (at {where}); {name} cannot be imported: {err}"
            ) from err
    raise ValueError(
        f"scene file names the class {path!r} (at {where}), but module {name!r} is not imported. "
        f"Scene files never import modules: run `import {name}` (the module that defines the class) "
        "before load_scene."
    )


def _resolve(path, where: str, kind: str = "class"):
    """The object a version-3 public path ``module:QualName`` names."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"scene file entry {kind} at {where}: expected 'module:QualName'; got {path!r:.80}")
    name, qual = path.split(":")
    if not (_NAME.match(name) and _NAME.match(qual)):
        raise ValueError(f"scene file entry {kind} at {where}: expected 'module:QualName'; got {path!r:.80}")
    obj = _lookup(_module(name, path, where), qual)
    if obj is None:
        raise ValueError(f"scene file names an unknown {kind} {path!r} (at {where})")
    return obj


def _resolve_class(path, where: str):
    cls = _resolve(path, where)
    if not (isinstance(cls, type) and issubclass(cls, eqx.Module)):
        raise ValueError(f"scene file names {path!r}, which is not an Equinox module (at {where})")
    return cls


# -- writing -------------------------------------------------------------------------------------


def _distribution_args(obj, where: str) -> dict:
    """Constructor arguments of a numpyro distribution, checked by rebuilding it."""
    cls = type(obj)
    args = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "validate_args") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(obj, name):
            args[name] = getattr(obj, name)
        elif p.default is p.empty:
            raise ValueError(f"cannot save {where}: {cls.__name__} does not keep its argument {name!r}")
    try:
        again = cls(**args)
        a_leaves, a_def = jax.tree_util.tree_flatten(obj)
        b_leaves, b_def = jax.tree_util.tree_flatten(again)
        same = a_def == b_def and all(
            np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
            for a, b in zip(a_leaves, b_leaves, strict=True)
        )
    except Exception as err:  # numpyro constructors raise many types
        raise ValueError(f"cannot save {where}: {cls.__name__} cannot be rebuilt from its arguments "
                         f"({type(err).__name__}: {err})") from err
    if not same:
        raise ValueError(
            f"cannot save {where}: {cls.__name__} cannot be rebuilt from its arguments {sorted(args)}"
        )
    return args


class Writer:
    """Collects the arrays of a scene tree while encoding it to JSON nodes (see the module docstring)."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, value, kind: str) -> dict:
        """Store an array in the archive and return its node."""
        key = f"a{len(self.arrays)}"
        arr = self.arrays[key] = np.asarray(value)
        return {"array": key, "kind": kind, "shape": list(arr.shape), "dtype": arr.dtype.str}

    def encode(self, obj, where: str):
        """Return the JSON node of ``obj``; ``where`` names it in error messages."""
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, np.integer)):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            return {"float": repr(float(obj))}
        if isinstance(obj, jax.Array):
            return self.array(obj, "jax")
        if isinstance(obj, np.ndarray):
            return self.array(obj, "numpy")
        if isinstance(obj, tuple):
            return {"tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return {"list": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        hook = getattr(obj, "__scene_reference__", None)
        ref = hook() if callable(hook) else None
        if ref is not None:
            factory, kwargs = ref
            return {"call": public_name(factory),
                    "kwargs": {k: self.encode(v, f"{where}.{k}") for k, v in kwargs.items()}}
        if type(obj).__module__.startswith("numpyro.distributions"):
            args = _distribution_args(obj, where)
            return {"distribution": self._name(type(obj), where),
                    "args": {k: self.encode(v, f"{where}.{k}") for k, v in args.items()}}
        if isinstance(obj, eqx.Module):
            cls = type(obj)
            fields = {
                f.name: self.encode(getattr(obj, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(obj)
            }
            return {"class": self._name(cls, where), "fields": fields}
        kind = "function" if callable(obj) else type(obj).__name__
        raise ValueError(
            f"cannot save {where}: values of type {kind} are not supported (priors and models must be "
            "Equinox modules defined at module level, numpyro distributions or the shipped learned "
            "prior; wrap a function in an AbstractPrior subclass)"
        )

    @staticmethod
    def _name(cls, where: str) -> str:
        try:
            return public_name(cls)
        except ValueError as err:
            raise ValueError(f"cannot save {where}: {err}") from err


# -- reading -------------------------------------------------------------------------------------


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


def _mapping(node, key: str, where: str) -> dict:
    value = node.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"corrupt scene file: {where} has no {key!r} mapping")
    return value


def decode(node, arrays, where: str):
    """Rebuild the object of a version-3 JSON node (arrays from the archive ``arrays``).

    Parameters
    ----------
    node : JSON value
    arrays : mapping of str to numpy.ndarray
    where : str
        Name of the node in error messages.

    Returns
    -------
    object

    Raises
    ------
    ValueError
        On any node that does not match the schema, names the entry.
    """
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
            return kind(decode(v, arrays, f"{where}[{i}]") for i, v in enumerate(node[seq]))
    if "call" in node:
        fn = _resolve(node["call"], where, "function")
        if getattr(fn, "__scene_loader__", False) is not True:
            raise ValueError(
                f"scene file names {node['call']!r}, which is not a scene-file loader (at {where})"
            )
        kwargs = {k: decode(v, arrays, f"{where}.{k}") for k, v in _mapping(node, "kwargs", where).items()}
        try:
            return fn(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"scene file entry {where}: {node['call']} refused its arguments: {err}"
            ) from err
    if "distribution" in node:
        cls = _resolve(node["distribution"], where, "distribution")
        if not (isinstance(cls, type) and cls.__module__.startswith("numpyro.distributions")):
            raise ValueError(f"scene file names {node['distribution']!r}, which is not a numpyro "
                             f"distribution (at {where})")
        args = {k: decode(v, arrays, f"{where}.{k}") for k, v in _mapping(node, "args", where).items()}
        try:
            return cls(**args)
        except Exception as err:  # numpyro constructors raise many types
            raise ValueError(f"scene file entry {where}: {node['distribution']} refused its arguments "
                             f"({type(err).__name__}: {err})") from err
    if "class" in node:
        cls = _resolve_class(node["class"], where)
        fields = _mapping(node, "fields", where)
        names = {f.name for f in dataclasses.fields(cls)}
        # a field added to a class later, with a default, may be absent from older files
        defaults = {f.name: f.default for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING}
        if not set(fields) <= names or not names - set(fields) <= set(defaults):
            raise ValueError(
                f"scene file fields {sorted(fields)} at {where} do not match {cls.__name__} "
                f"fields {sorted(names)} (saved by another version of the class?)"
            )
        obj = object.__new__(cls)
        for key in names - set(fields):
            object.__setattr__(obj, key, defaults[key])
        for key, value in fields.items():
            object.__setattr__(obj, key, decode(value, arrays, f"{where}.{key}"))
        return obj
    raise ValueError(f"corrupt scene file: unexpected node {node!r:.120} at {where}")


def _legacy_class(path, where: str):
    """A version 1/2 class name: the dotted private path of a scarlet_xr class."""
    if not isinstance(path, str) or not path.startswith(_PACKAGE + "."):
        raise ValueError(f"scene file names a class outside scarlet_xr: {path!r} (at {where})")
    module, _, name = path.rpartition(".")
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            mod = None
    cls = getattr(mod, name, None) if mod is not None else None
    if cls is None:
        raise ValueError(f"scene file names an unknown class {path!r} (at {where})")
    return cls


def migrate_v2(node, where: str):
    """Rewrite a version 1 or 2 node tree to version 3 (class names ``module:QualName``).

    Parameters
    ----------
    node : JSON value
        A source node of a version 1 or 2 file.
    where : str
        Name of the node in error messages.

    Returns
    -------
    JSON value
        The same tree with every ``"class"`` renamed to its public path.

    Raises
    ------
    ValueError
        If a class is outside scarlet_xr or unknown.
    """
    if isinstance(node, list):
        return [migrate_v2(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "class":
            cls = _legacy_class(value, where)
            try:
                out[key] = public_name(cls)
            except ValueError as err:
                raise ValueError(f"scene file names {value!r} (at {where}): {err}") from err
        elif key == "fields" and isinstance(value, dict):
            out[key] = {k: migrate_v2(v, f"{where}.{k}") for k, v in value.items()}
        elif key in ("tuple", "list") and isinstance(value, list):
            out[key] = [migrate_v2(v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            out[key] = value
    return out
