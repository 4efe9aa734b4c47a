"""Save and load a whole Scene (structure, parameters, priors) without pickle.

File format: a NumPy ``.npz`` archive read with ``allow_pickle=False``:

- ``__scene__``: a JSON string ``{"format": "scarlet_xr.scene", "version": 3,
  "frame": {...}, "sources": [...]}``; every source is a tree of nodes
  (:mod:`._codec` lists them): Equinox modules named by their public import
  path (``{"class": "scarlet_xr:SersicMorphology", "fields": {...}}``),
  numpyro distributions by class and arguments, the shipped learned prior by
  a reference to its weights (never the weights), arrays by archive key,
- ``a0``, ``a1``, ...: the arrays (parameters in their raw, unconstrained
  form, PSF images ...), stored bit for bit, with shape and dtype recorded in
  the JSON and checked on load.

Loading validates the file against this schema and every source against the
frame (component shapes ``(band, h, w)`` with the frame's bands and the
morphology's box): a truncated or hand-edited file raises ``ValueError``
naming the entry (``__scene__``, ``frame.shape``, ``a3`` in
``source 2.components[0].morphology ...``), never another exception.

Classes defined outside scarlet_xr (a user's morphology, prior or spectrum)
are found only in modules the user has already imported (``sys.modules``);
a file naming any other module is refused, so a scene file never imports or
runs code the user did not load. Loading bypasses ``__init__`` (the saved
field values are restored as they were), which is why a loaded scene renders
bit-identically.

Versions: 3 (written), 2 and 1 (private dotted class names, scarlet_xr
classes only; migrated on load by :func:`._codec.migrate_v2`).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..core import Source
from ..wcs import Frame
from ._codec import Writer, decode, migrate_v2
from ._scene import Scene

__all__ = ["save_scene", "load_scene"]

FORMAT = "scarlet_xr.scene"
VERSION = 3
"""Version written; :data:`READ_VERSIONS` can be read (1 and 2 through :func:`migrate_v2`)."""
READ_VERSIONS = (1, 2, 3)


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
            ne = comp.num_epochs
            want = (nb * max(ne, 1), *box)
            if tuple(got.shape) != want:
                raise ValueError(
                    f"{where}.components[{k}] renders shape {tuple(got.shape)}; expected {want} "
                    f"({nb} bands of the frame{f' x {ne} epochs' if ne else ''}, the morphology's box {box})"
                )
    except ValueError:
        raise
    except Exception as err:  # a hand-edited tree can fail anywhere while tracing
        raise ValueError(f"{where} cannot be evaluated: {type(err).__name__}: {err}") from err


def _encode_epochs(epochs) -> list:
    """Epochs as JSON: ``{"mjd": "..."}`` numbers, ``{"date": "..."}`` datetime64, labels as strings."""
    out = []
    for e in epochs:
        if isinstance(e, str):
            out.append(e)
        elif isinstance(e, np.datetime64):
            out.append({"date": str(e)})
        else:
            out.append({"number": repr(float(e))})
    return out


def _decode_epochs(items) -> list:
    if not isinstance(items, list):
        raise ValueError(f"scene file entry 'frame.epochs': expected a list; got {items!r:.80}")
    out = []
    for e in items:
        try:
            if isinstance(e, str):
                out.append(e)
            elif isinstance(e, dict) and set(e) == {"date"}:
                out.append(np.datetime64(str(e["date"]), "ns"))
            elif isinstance(e, dict) and set(e) == {"number"}:
                out.append(float(e["number"]))
            else:
                raise ValueError("not a number, date or label")
        except (TypeError, ValueError) as err:
            raise ValueError(f"scene file entry 'frame.epochs': bad epoch {e!r:.80} ({err})") from None
    return out


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
    epochs = _decode_epochs(fd.get("epochs", []))
    try:
        return Frame(bands, tuple(shape), wcs=wcs, origin=tuple(origin), psf_sigma=psf_sigma, epochs=epochs)
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
        If a source holds something that cannot be saved without pickle (a
        plain function or lambda as prior, a class defined inside a function,
        an object that is not an Equinox module or numpyro distribution).

    Notes
    -----
    Saved: every scarlet_xr module (morphologies including Spergel and
    starlet, spectra, constraints, :class:`~scarlet_xr.NormalPrior`,
    :class:`~scarlet_xr.core.StarletSparsity`, a :class:`~scarlet_xr.ScorePrior`
    around an Equinox module), numpyro distributions (also ``to_event``,
    ``expand``, truncated), the shipped learned prior (by reference) and user
    Equinox modules (subclasses of ``AbstractMorphology``, ``AbstractPrior``
    ..., a network inside a prior) defined at module level, named
    ``module:QualName``; :func:`load_scene` needs that module imported.

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
    w = Writer()
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
            "epochs": _encode_epochs(frame.epochs),
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
        truncated, unknown format or version), names a class in a module
        that is not imported (the message says which to import), or does not
        match the schema (a missing or extra entry, an
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
    version = desc.get("version")
    if desc.get("format") != FORMAT or type(version) is not int or version not in READ_VERSIONS:
        raise ValueError(
            f"{path.name!r}: expected format {FORMAT!r} version {', '.join(map(str, READ_VERSIONS))}; "
            f"got {desc.get('format')!r} version {desc.get('version')!r}"
        )
    try:
        frame = _frame(desc.get("frame"))
        sources = desc.get("sources")
        if not isinstance(sources, list):
            raise ValueError(f"scene file entry 'sources': expected a list; got {sources!r:.80}")
        scene = Scene(frame)
        for i, node in enumerate(sources):
            if version < 3:
                node = migrate_v2(node, f"source {i}")
            src = decode(node, arrays, f"source {i}")
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
        want = frame.cube_shape
        if any(s.num_epochs for s in scene.sources):
            want = (len(frame.epochs), *want)
        if tuple(got.shape) != want:
            raise ValueError(
                f"{path.name!r}: the scene renders shape {tuple(got.shape)}; expected the frame's "
                f"{want}"
            )
    return scene
