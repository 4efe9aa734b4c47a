"""Helpers shared by CLI sub-commands."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["enable_compile_cache", "write_tree", "format_summary", "check_output", "output_kind"]

logger = logging.getLogger(__name__)

RESULT, SURVEY, OTHER = "result", "survey", "other"
"""What :func:`output_kind` finds at a path (besides ``None``: nothing there)."""
_NETCDF_SUFFIXES = (".nc", ".h5", ".nc4")


def enable_compile_cache() -> None:
    """Turn on JAX's persistent compilation cache (``SCARLET_XR_CACHE`` or ~/.cache)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    path = os.environ.get("SCARLET_XR_CACHE", str(Path.home() / ".cache" / "scarlet_xr" / "jax"))
    if path.lower() in ("", "0", "off", "none"):
        return
    if jax.config.jax_compilation_cache_dir != path:
        # JAX opens its cache once per process, in the first directory it was given
        compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _root_attrs(path: Path) -> dict | None:
    """Root attributes of a Zarr group (directory) or netCDF-4/HDF5 file; None if neither."""
    try:
        if path.is_dir():
            for meta in (".zattrs", "zarr.json"):
                if (path / meta).is_file():
                    attrs = json.loads((path / meta).read_text())
                    return attrs.get("attributes", {}) if meta == "zarr.json" else attrs
            return {} if (path / ".zgroup").is_file() else None
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(8) != b"\x89HDF\r\n\x1a\n":
                    return None
            import h5py

            with h5py.File(path, "r") as f:
                return {str(k): f.attrs[k] for k in f.attrs}
    except (OSError, ValueError, UnicodeDecodeError):  # unreadable: not one of ours
        return None
    return None


def output_kind(path) -> str | None:
    """What lies at ``path``: None (nothing), ``"result"``, ``"survey"`` or ``"other"``.

    A *result* is a tree written by :func:`write_tree` (root attribute
    ``scarlet_xr_version``): a netCDF file when ``path`` ends in ``.nc``/``.h5``/``.nc4``,
    a Zarr directory otherwise. A *survey* store is a Zarr group with the root
    attribute ``catalog_fingerprint`` (see :mod:`scarlet_xr.survey`). Anything
    else (a file or directory of the user's) is *other*.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str or None
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return None
    attrs = _root_attrs(path)
    if not attrs:
        return OTHER
    if "catalog_fingerprint" in attrs and path.is_dir():
        return SURVEY
    if "scarlet_xr_version" in attrs and path.is_dir() == (path.suffix not in _NETCDF_SUFFIXES):
        return RESULT
    return OTHER


_KIND_WORDS = {RESULT: "a scarlet_xr result", SURVEY: "a scarlet_xr survey store",
               OTHER: "not a scarlet_xr output"}


def _describe(path: Path, kind: str) -> str:
    what = "directory" if path.is_dir() else "file"
    return f"a {what}, {_KIND_WORDS[kind]}"


def _probe_writable(folder: Path, path: Path, flag: str) -> None:
    """Create and delete a temporary file in ``folder`` (``os.access`` is always True for root)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".scarlet_xr-probe-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"{flag} {str(path)!r}: cannot write in {str(folder)!r} ({err.strerror or err}); expected a "
            "writable directory"
        ) from err


def check_output(
    path, *, overwrite: bool = False, expect: str = RESULT, inputs=(), flag: str = "--out"
) -> Path:
    """Check an output path before any work is done.

    Refuses (before a fit that may take hours) what would fail or lose data
    at the end: a parent directory that does not exist or is not writable, an
    existing path that is not a scarlet_xr output of the expected kind (unless
    ``overwrite``), and a path that is or contains one of the ``inputs``.

    Parameters
    ----------
    path : str or path-like
        The output path.
    overwrite : bool
        Replace whatever exists at ``path``: it is removed here, before the
        work starts (logged as a warning).
    expect : {"result", "survey"}
        What may be replaced (a fit result, written again) or resumed (a
        survey store) without ``overwrite``.
    inputs : sequence of path-like
        Input files; the output may neither be one of them nor contain one.
    flag : str
        Option name used in messages.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        The output's directory does not exist or is not a directory.
    PermissionError
        The output's directory (or an existing output) is not writable.
    FileExistsError
        ``path`` exists and is not a scarlet_xr output of the expected kind,
        and ``overwrite`` is False.
    ValueError
        ``path`` is an input file or a directory holding one.
    """
    if expect not in (RESULT, SURVEY):
        raise ValueError(f"expect must be 'result' or 'survey'; got {expect!r}")
    path = Path(path)
    parent = path.absolute().parent
    if not parent.exists():
        raise FileNotFoundError(
            f"{flag} {str(path)!r}: the directory {str(parent)!r} does not exist; expected an existing, "
            "writable directory (create it first)"
        )
    if not parent.is_dir():
        raise NotADirectoryError(f"{flag} {str(path)!r}: {str(parent)!r} is not a directory")
    _probe_writable(parent, path, flag)
    target = path.resolve()
    for inp in inputs:
        if inp is None:
            continue
        i = Path(inp).resolve()
        if i == target or target in i.parents:
            raise ValueError(
                f"{flag} {str(path)!r} would overwrite the input {str(inp)!r}; choose another output path"
            )
    kind = output_kind(path)
    if kind is None:
        return path
    if overwrite:
        if kind != expect or expect == SURVEY:
            logger.warning("%s %s: --overwrite: removing the existing %s", flag, path, _describe(path, kind))
            _remove(path)
        return path
    if kind != expect:
        raise FileExistsError(
            f"{flag} {str(path)!r} exists and is {_describe(path, kind)}; expected a new path or "
            f"{_KIND_WORDS[expect]} to {'replace' if expect == RESULT else 'resume'}. Refusing to "
            "overwrite it: choose another path, or pass --overwrite to replace it"
        )
    if path.is_dir():
        _probe_writable(path, path, flag)
    elif not os.access(path, os.W_OK):
        raise PermissionError(f"{flag} {str(path)!r}: the existing result is not writable")
    verb = "replacing" if expect == RESULT else "resuming"
    logger.info("%s %s: %s %s", flag, path, verb, _KIND_WORDS[kind])
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_tree(tree, path, *, overwrite: bool = False) -> Path:
    """Write a results DataTree to netCDF (``.nc``/``.h5``/``.nc4``) or Zarr (``.zarr``).

    The tree is written to a temporary sibling first and moved into place
    when complete, so an interrupted write never leaves a half-written result
    nor destroys the previous one. ``residual`` is not written (it is
    ``data - model``; see :func:`without_derived`).

    Parameters
    ----------
    tree : xarray.DataTree
    path : str or path-like
    overwrite : bool
        Replace ``path`` even if it is not a scarlet_xr result (see
        :func:`check_output`); an existing result is always replaced.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        Unknown suffix.
    FileExistsError
        ``path`` exists and is not a scarlet_xr result, and ``overwrite`` is False.
    """
    path = Path(path)
    if path.suffix != ".zarr" and path.suffix not in _NETCDF_SUFFIXES:
        raise ValueError(f"output must end in .nc or .zarr; got {path.name!r}")
    kind = output_kind(path)
    if kind not in (None, RESULT) and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} exists and is {_describe(path, kind)}; refusing to overwrite it "
            "(pass --overwrite to replace it)"
        )
    tree = without_derived(tree)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if tmp.exists():
        _remove(tmp)
    try:
        if path.suffix == ".zarr":
            tree.to_zarr(tmp, mode="w", zarr_format=2, consolidated=False)
        else:
            tree.to_netcdf(tmp, engine="h5netcdf", encoding=_compressed(tree))
        if path.exists() or path.is_symlink():
            _remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)
    return path


DERIVED = ("residual",)
"""Variables of ``/observations/<name>`` that files do not store: ``residual`` is ``data - model``."""


def without_derived(tree):
    """The tree as written to files: :data:`DERIVED` variables left out (recomputable).

    A residual is noise, which no compression shrinks: storing it would make
    a result about twice the size of the image it describes. Each
    observation node that had one gets the attribute ``residual`` saying how
    to recompute it (``node["data"] - node["model"]``).

    Parameters
    ----------
    tree : xarray.DataTree

    Returns
    -------
    xarray.DataTree
        A shallow copy (the input tree is unchanged).
    """
    if "observations" not in getattr(tree, "children", {}):
        return tree
    out = tree.copy()
    for name in list(out["observations"].children):
        node = out[f"observations/{name}"].to_dataset(inherit=False)
        drop = [v for v in DERIVED if v in node.data_vars]
        if drop:
            node = node.drop_vars(drop)
            node.attrs["residual"] = "not stored: data - model"
            out[f"observations/{name}"] = type(tree)(node)
    return out


def _compressed(tree) -> dict:
    """netCDF encoding: gzip (level 1, shuffled) for every image-like variable of every node.

    Per-source images (``/model``, ``/deblended``) are mostly zeros away from
    their source: compressed, a result is about the size of the data it
    describes rather than ``sources x`` that.
    """
    enc = {}
    for node in getattr(tree, "subtree", ()):
        ds = node.to_dataset(inherit=False)
        spec = {name: {"compression": "gzip", "compression_opts": 1, "shuffle": True}
                for name, var in ds.data_vars.items() if var.ndim >= 2 and var.dtype.kind in "fiub"}
        if spec:
            enc[node.path] = spec
    return enc


def format_summary(tree, wall_time: float | None = None) -> str:
    """Human-readable summary of a results tree: sources, fluxes, chi^2 per band."""
    src = tree["sources"].to_dataset()
    bands = [str(b) for b in src["band"].values]
    lines = []
    lines.append(f"{src.sizes['source']} sources, bands {' '.join(bands)}")
    head = f"{'source':>6} {'kind':>10} {'y':>7} {'x':>7} " + " ".join(f"{b:>10}" for b in bands)
    lines.append(head)
    for i in range(src.sizes["source"]):
        flux = src["flux"].values[i]
        lines.append(
            f"{i:>6} {str(src['kind'].values[i]):>10} {src['y'].values[i]:7.2f} {src['x'].values[i]:7.2f} "
            + " ".join(f"{f:10.4g}" for f in flux)
        )
    for name, node in tree["observations"].children.items():
        ds = node.to_dataset()
        chi2 = zip(ds["band"].values, ds["chi2_reduced"].values, strict=True)
        per = " ".join(f"{b}={c:.3f}" for b, c in chi2)
        lines.append(f"observation {name}: reduced chi2 {ds.attrs['chi2_reduced']:.3f} ({per})")
    fit = tree["fit"].to_dataset()
    lines.append(f"fit: {fit.attrs.get('status')} after {fit.attrs.get('num_steps')} steps")
    if wall_time is not None:
        lines.append(f"wall time: {wall_time:.2f} s")
    return "\n".join(lines)


def finite_or_nan(x):
    """Return a float, NaN for non-finite values."""
    x = float(x)
    return x if np.isfinite(x) else float("nan")
