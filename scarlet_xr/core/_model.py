"""SceneModel: a tuple of sources rendered into the model frame (pure JAX)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._constraints import Identity, Positive
from ._context import reverse_mode_only
from ._device import to_device
from ._fft import fast_size, kernel_to_origin
from ._jit import filter_jit
from ._morphology import FreeFormMorphology, PointSourceMorphology, SersicMorphology
from ._parameter import Parameter, default_complex, default_float, is_parameter
from ._source import Component, Source
from ._spectrum import num_epochs_of
from ._template import _TemplateMorphology
from ._value_form import VALUE_FORM_TYPES, host_images, host_value, value_form

__all__ = ["SceneModel", "evaluate_morphologies", "morphology_image", "morphology_images"]


PAD_MARGIN = 8
"""Pixels beyond half the largest box by which the model frame is padded while rendering."""


def _place(canvas, box, center, pad):
    """Add ``box`` (band, h, w) to ``canvas`` centred on the pixel nearest ``center``."""
    h, w = box.shape[-2:]
    iy = jnp.round(center[0]).astype(jnp.int32)
    ix = jnp.round(center[1]).astype(jnp.int32)
    start = (jnp.zeros((), jnp.int32), iy - h // 2 + pad, ix - w // 2 + pad)
    cur = jax.lax.dynamic_slice(canvas, start, box.shape)
    return jax.lax.dynamic_update_slice(canvas, cur + box, start)


def _stack_key(comp):
    """Components with equal keys can be evaluated in one vmapped call (None: never)."""
    leaves, treedef = jax.tree_util.tree_flatten(comp)
    if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
        return None
    return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _scatter(canvas, boxes, centers, pad):
    """Add ``boxes`` (m, band, h, w) to ``canvas`` (band, H, W).

    Each box is centred on the pixel nearest its centre (shifted by ``pad``)
    and, like ``lax.dynamic_update_slice``, moved inside the canvas when it
    would stick out. The compiled size does not depend on ``m``: the boxes are
    added one after the other in a loop of in-place slice updates, and the
    gradient is one gather.
    """
    m, b, h, w = boxes.shape
    hp, wp = canvas.shape[1:]
    iy = jnp.clip(jnp.round(centers[:, 0]).astype(jnp.int32) - h // 2 + pad, 0, hp - h)
    ix = jnp.clip(jnp.round(centers[:, 1]).astype(jnp.int32) - w // 2 + pad, 0, wp - w)
    return _add_boxes(canvas, boxes.astype(canvas.dtype), iy, ix)


def _scatter_add(canvas, boxes, iy, ix):
    """``canvas`` plus ``boxes`` at rows ``iy`` and columns ``ix``, in one scatter-add (its
    transpose, the gradient, is one gather)."""
    m, b, h, w = boxes.shape
    hp, wp = canvas.shape[1:]
    flat = ((iy[:, None] + jnp.arange(h, dtype=jnp.int32))[:, :, None] * wp
            + (ix[:, None] + jnp.arange(w, dtype=jnp.int32))[:, None, :])
    out = canvas.reshape(b, hp * wp).at[:, flat].add(
        jnp.moveaxis(boxes, 1, 0), indices_are_sorted=False, unique_indices=False)
    return out.reshape(b, hp, wp)


@jax.custom_jvp
def _add_boxes(canvas, boxes, iy, ix):
    # (values by a loop of in-place slice updates, derivatives by the scatter-add, whose
    # transpose is a gather: XLA's CPU scatter took 4.4 ms for 130 boxes of 59 x 59 x 5
    # pixels, the loop 0.5 ms; the loop's own reverse pass was slower than the gather)
    zero = jnp.zeros((), jnp.int32)

    def add(c, item):
        box, y0, x0 = item
        cur = jax.lax.dynamic_slice(c, (zero, y0, x0), box.shape)
        return jax.lax.dynamic_update_slice(c, cur + box, (zero, y0, x0)), None

    out, _ = jax.lax.scan(add, canvas, (boxes, iy, ix))
    return out


@_add_boxes.defjvp
def _add_boxes_jvp(primals, tangents):
    canvas, boxes, iy, ix = primals
    d_canvas, d_boxes = tangents[:2]
    return _add_boxes(canvas, boxes, iy, ix), _scatter_add(d_canvas, d_boxes, iy, ix)


@jax.custom_vjp
def _add_products(canvas, morphs, spectra, iy, ix):
    """``canvas`` plus ``spectra[k, :, None, None] * morphs[k][None]`` at rows ``iy[k]`` and
    columns ``ix[k]`` for every ``k``, without forming the ``(m, band, h, w)`` boxes.

    Values by a loop of in-place slice updates; the gradient by a loop that
    reads each box's slice of the canvas's cotangent once. Against the boxes
    formed and placed by :func:`_add_boxes`, a stack of 88 Sersic profiles on
    75 px boxes in 5 bands took 6.2 ms instead of 19.7 ms for value and
    gradient. Reverse mode only (see :class:`~scarlet_xr.core.reverse_mode_rendering`).
    """
    return _add_products_fwd(canvas, morphs, spectra, iy, ix)[0]


def _add_products_fwd(canvas, morphs, spectra, iy, ix):
    zero = jnp.zeros((), jnp.int32)
    b = canvas.shape[0]
    h, w = morphs.shape[1:]
    m_, s_ = morphs.astype(canvas.dtype), spectra.astype(canvas.dtype)

    def add(c, item):
        mm, ss, y0, x0 = item
        cur = jax.lax.dynamic_slice(c, (zero, y0, x0), (b, h, w))
        return jax.lax.dynamic_update_slice(c, cur + ss[:, None, None] * mm[None], (zero, y0, x0)), None

    out, _ = jax.lax.scan(add, canvas, (m_, s_, iy, ix))
    return out, (morphs, spectra, iy, ix)


def _add_products_bwd(res, g):
    morphs, spectra, iy, ix = res
    zero = jnp.zeros((), jnp.int32)
    b = g.shape[0]
    h, w = morphs.shape[1:]

    def one(item):
        mm, ss, y0, x0 = item
        gg = jax.lax.dynamic_slice(g, (zero, y0, x0), (b, h, w))
        return (jnp.einsum("b,bhw->hw", ss.astype(g.dtype), gg),
                jnp.einsum("hw,bhw->b", mm.astype(g.dtype), gg))

    d_morphs, d_spectra = jax.lax.map(one, (morphs, spectra, iy, ix))
    return (g, d_morphs.astype(morphs.dtype), d_spectra.astype(spectra.dtype),
            np.zeros(iy.shape, jax.dtypes.float0), np.zeros(ix.shape, jax.dtypes.float0))


_add_products.defvjp(_add_products_fwd, _add_products_bwd)


FUSED_MIN_MEMBERS = 8
"""Stacks of at least this many components are placed by :func:`_add_products` in reverse-mode
rendering (smaller stacks, most of a small scene's: :func:`_add_boxes`, whose sums the small
scenes' fits were tuned on: on the HSC cutout of ``tests/test_cli_fit.py`` the pixel stage, started
from a state that differed by float32 rounding, left its path and stopped at reduced chi2 1.77
instead of 1.47)."""


def _place_products(canvas, morphs, spectra, centers, pad):
    """:func:`_scatter` of the boxes ``spectra[:, :, None, None] * morphs[:, None]``, formed box by box."""
    h, w = morphs.shape[1:]
    hp, wp = canvas.shape[1:]
    iy = jnp.clip(jnp.round(centers[:, 0]).astype(jnp.int32) - h // 2 + pad, 0, hp - h)
    ix = jnp.clip(jnp.round(centers[:, 1]).astype(jnp.int32) - w // 2 + pad, 0, wp - w)
    return _add_products(canvas, morphs, spectra, iy, ix)


class _Stack(NamedTuple):
    """Trees of one structure stacked leaf by leaf (see :func:`_stack`).

    ``members`` name the trees (a source index for centres, ``(source,
    component)`` for components). With several members every leaf of
    ``tree`` has a new leading axis, except leaves that are one object in all
    members (``shared``: e.g. a learned prior's network), kept once; with one
    member (``shared`` None) ``tree`` is that member's own tree.
    """

    members: tuple
    tree: Any
    shared: tuple[bool, ...] | None


def _stack(members, trees, min_shared_size: int = 0, host: bool = False) -> _Stack:
    if len(trees) == 1:
        return _Stack(tuple(members), trees[0], None)
    flat = [jax.tree_util.tree_flatten(t) for t in trees]
    treedef = flat[0][1]
    cols = list(zip(*(leaves for leaves, _ in flat), strict=True))
    shared = tuple(all(x is col[0] for x in col) and int(np.size(col[0])) >= min_shared_size
                   for col in cols)
    leaves = [col[0] if sh else _stacked(col, host) for col, sh in zip(cols, shared, strict=True)]
    return _Stack(tuple(members), treedef.unflatten(leaves), shared)


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _stacked(col, host: bool = False):
    """``jnp.stack(col)``; concrete arrays are stacked on the host (no compiled op per shape), and
    left there with ``host``."""
    if all(_concrete(x) for x in col):
        out = np.stack([np.asarray(x) for x in col])
        return out if host else to_device(out)
    return jnp.stack(col)


def _stacks_by_structure(items, min_shared_size: int = 0, host: bool = False) -> list[_Stack]:
    """``items`` ``[(member, tree)]`` grouped by structure (types, leaf shapes, dtypes) and stacked
    (concrete leaves as numpy arrays with ``host``)."""
    buckets = {}
    for k, (member, tree) in enumerate(items):
        key = _stack_key(tree)
        buckets.setdefault(("single", k) if key is None else key, []).append((member, tree))
    return [_stack([m for m, _ in b], [t for _, t in b], min_shared_size, host) for b in buckets.values()]


def _groups_of(sources, min_shared_size: int = 0, host: bool = False):
    """``(centres, components)``: the sources' centres and components stacked by structure.

    Components of one type and box size are evaluated in one ``vmap``-ed
    call, so the compiled graph grows with the number of distinct component
    structures, not with the number of sources. Names do not split groups.
    Leaves that are one object in every member are kept once when they have
    at least ``min_shared_size`` elements. With ``host``, stacked concrete leaves stay numpy arrays
    (for work on the host: nothing is copied to the device).
    """
    centers = _stacks_by_structure([(i, s.center) for i, s in enumerate(sources)], min_shared_size, True)
    comps = _stacks_by_structure([((i, j), c) for i, s in enumerate(sources)
                                  for j, c in enumerate(s.components)], min_shared_size, True)
    if host:
        return centers, comps
    return _stacks_to_device(centers, comps)


def _stacks_to_device(*stack_lists):
    """The stacks with the numpy leaves that stacking made copied to the device in one transfer
    (one ``device_put`` per array cost about 0.1 ms: a third of the time of packing a small scene)."""
    flat = [(jax.tree_util.tree_flatten(st.tree), st) for stacks in stack_lists for st in stacks]
    host = [x for (leaves, _), st in flat if st.shared is not None
            for x, sh in zip(leaves, st.shared, strict=True) if not sh and isinstance(x, np.ndarray)]
    put = iter(jax.device_put(host)) if host else iter(())
    out, k = [], 0
    for stacks in stack_lists:
        done = []
        for st in stacks:
            (leaves, treedef), _ = flat[k]
            k += 1
            if st.shared is not None:
                leaves = [next(put) if not sh and isinstance(x, np.ndarray) else x
                          for x, sh in zip(leaves, st.shared, strict=True)]
                st = st._replace(tree=treedef.unflatten(leaves))
            done.append(st)
        out.append(done)
    return tuple(out)


CANONICAL_MAX_COUNT = 16
"""Stacks of at most this many sources are padded to a power of two by :meth:`SceneModel.canonical`."""

CANONICAL_MIN_SHARED = 4096
"""In the canonical layout only leaves of at least this many elements are stored once when shared
(a learned prior's network), so that the layout does not depend on which small arrays happen to
be one object."""


def _count_bucket(n: int, max_count: int = CANONICAL_MAX_COUNT) -> int:
    """The canonical number of members of a stack of ``n``: the next power of two up to ``max_count``."""
    if n > max_count:
        return n
    k = 1
    while k < n:
        k *= 2
    return k


CANONICAL_TEMPLATE_PIXELS = 200_000
"""Most pixels (placeholders times their components' box areas) that :meth:`SceneModel.canonical`
spends on its ``templates``: above it the layout holds only the scene's own structures.

On 40 simulated survey blends (``simulate_blends`` seed 2026, stamps 31-75 px, 1-6 sources, one
process) the templates made the second twenty fit in 13.3 s instead of 26.5 s (compiling 2.8 s
instead of 15.4 s), the fluxes unchanged (median error 0.06563 both); the placeholders of the
largest of them (8 sources' worth per structure in 75 px boxes, about 150 000 pixels) cost less than
the compile they save. Blends whose programs are compiled already run 40-70 % longer with them."""


def _menu(templates, num_sources: int, max_count: int) -> dict:
    """``{stack key: template}`` of the unnamed templates the canonical layout holds (see
    :data:`CANONICAL_TEMPLATE_PIXELS`); empty when they would cost too much."""
    if not templates or num_sources > max_count:
        return {}
    menu = {}
    for t in templates:
        t = _renamed(t, None)
        key = _stack_key(t)
        if key is not None:
            menu.setdefault(key, t)
    count = _count_bucket(num_sources, max_count)
    area = sum(math.prod(c.morphology.shape) for t in menu.values() for c in t.components)
    return menu if count * area <= CANONICAL_TEMPLATE_PIXELS else {}


def _renamed(src: Source, name) -> Source:
    """``src`` with another ``name`` (a static field: part of a compiled program's key)."""
    if src.name == name:
        return src
    new = object.__new__(type(src))
    for f in dataclasses.fields(src):
        object.__setattr__(new, f.name, name if f.name == "name" else getattr(src, f.name))
    return new


def _copied(src: Source, min_size: int = CANONICAL_MIN_SHARED) -> Source:
    """A copy of ``src`` whose leaves of at least ``min_size`` elements are its own arrays.

    Packing stores a leaf once only when it is one object in every member and
    has at least :data:`CANONICAL_MIN_SHARED` elements: smaller leaves are
    stacked whoever owns them, so copying them (an operation per leaf, most
    of a survey blend's canonical layouts) would change nothing.
    """
    def copy(x):
        if int(np.size(x)) < min_size:
            return x
        if isinstance(x, jax.Array):
            return jnp.array(x, copy=True)
        return np.array(x, copy=True) if isinstance(x, np.ndarray) else x

    return jax.tree_util.tree_map(copy, src)


def _apply(fun, stack: _Stack, *args):
    """``fun(tree, *args)`` for every member of ``stack``, stacked on a new leading axis.

    ``args`` carry a leading member axis.
    """
    if stack.shared is None:
        out = fun(stack.tree, *(a[0] for a in args))
        return jax.tree_util.tree_map(lambda x: x[None], out)
    axes = jax.tree_util.tree_structure(stack.tree).unflatten([None if s else 0 for s in stack.shared])
    return jax.vmap(fun, in_axes=(axes, *(0,) * len(args)))(stack.tree, *args)


def _member_trees(stack: _Stack, wanted=None):
    """Each member's own tree, in ``stack.members`` order (None for members where ``wanted``,
    one bool per member, is False)."""
    if stack.shared is None:
        return [stack.tree] if wanted is None or wanted[0] else [None]
    leaves, treedef = jax.tree_util.tree_flatten(stack.tree)
    # concrete leaves are cut on the host (no compiled op per shape; a private copy, as
    # to_device makes) and all cuts go to the device in one transfer
    host = [np.array(x) if not s and _concrete(x) else None
            for x, s in zip(leaves, stack.shared, strict=True)]
    members = [j for j in range(len(stack.members)) if wanted is None or wanted[j]]
    cuts = [h[j] for j in members for h in host if h is not None]
    put = iter(jax.device_put(cuts)) if cuts else iter(())
    out = [None] * len(stack.members)
    for j in members:
        out[j] = treedef.unflatten([x if s else (x[j] if h is None else next(put))
                                    for x, s, h in zip(leaves, stack.shared, host, strict=True)])
    return out


def _owners(stack: _Stack) -> np.ndarray:
    return np.array([i for i, _ in stack.members], np.int32)


def _num_epochs(stack: _Stack) -> int:
    """Epochs of a component stack (0: static)."""
    spectrum = stack.tree.spectrum
    if not num_epochs_of(spectrum):
        return 0
    return int(spectrum.values.raw.shape[0 if stack.shared is None else 1])


def _all_centers(center_stacks, n):
    """Centres ``(source, 2)`` from the centre stacks."""
    if len(center_stacks) == 1 and center_stacks[0].members == tuple(range(n)):
        return _apply(lambda c: c.value, center_stacks[0])
    out = None
    for st in center_stacks:
        vals = _apply(lambda c: c.value, st)
        if out is None:
            out = jnp.zeros((n, 2), vals.dtype)
        out = out.at[np.asarray(st.members)].set(vals)
    return out


def _host_centers(center_stacks, n) -> np.ndarray:
    """:func:`_all_centers` as a numpy array, computed on the host where the centres are concrete
    (the eager scatter compiled four small programs for each new number of sources)."""
    out = None
    for st in center_stacks:
        vals = np.asarray(host_value(st.tree)).reshape(-1, 2)
        out = np.zeros((n, 2), vals.dtype) if out is None else out
        out[np.asarray(st.members)] = vals
    return np.zeros((n, 2)) if out is None else out


def _boxes(comp_stack: _Stack, centers):
    """``(centers (m, 2), boxes (m, band, h, w))`` of a component stack at its owners' centres."""
    c = centers[_owners(comp_stack)]
    return c, _apply(lambda comp, o: comp(o), comp_stack, c - jnp.round(c))


def _place_group(canvas, boxes, centers, pad):
    """Add a group of boxes: ``dynamic_update_slice`` for one, a scatter-add for several."""
    if boxes.shape[0] == 1:
        return _place(canvas, boxes[0], centers[0], pad)
    return _scatter(canvas, boxes, centers, pad)


def morphology_image(morphology, offset: Float[ArrayLike, " 2"]) -> Float[Array, "h w"]:
    """Evaluate ``morphology(offset)`` on the host or compiled once per morphology type and box size.

    For code outside a traced function (initialisation, linear solves) that
    evaluates many morphologies: eager evaluation would compile every
    operation of the profile anew for each new box size. A free-form pixel
    array with its default (softplus) constraint is evaluated on the host
    instead: nothing to compile for each of its box sizes (the HSC demo's
    first results tree compiled five such programs, 0.2 s); so are Sersic
    profiles and points with a Gaussian model PSF
    (:func:`~scarlet_xr.core._value_form.host_images`).

    Parameters
    ----------
    morphology : AbstractMorphology
    offset : array (2,)
        Sub-pixel offset ``(dy, dx)`` of the centre.

    Returns
    -------
    jax.Array (h, w)
    """
    raw = _host_pixels(morphology)
    if raw is not None:
        return to_device(np.logaddexp(raw, 0.0).astype(raw.dtype))
    plain = value_form(morphology)
    host = None if isinstance(offset, jax.core.Tracer) else host_images(plain, np.asarray(offset)[None])
    if host is not None:
        return to_device(host[0])
    return _morphology_image(_on_device(plain), offset)


def _host_pixels(morphology):
    """The unconstrained pixels of a concrete softplus-constrained free-form morphology, else None."""
    if type(morphology) is not FreeFormMorphology or type(morphology.image.constraint) is not Positive:
        return None
    raw = morphology.image.raw
    return None if isinstance(raw, jax.core.Tracer) else np.asarray(raw)


@filter_jit(quick=True)
def _morphology_image(morphology, offset):
    return morphology(offset)


BATCH_IMAGES_MIN = 8
""":func:`morphology_images` evaluates stacks of at least this many components
:data:`BATCH_IMAGES` at a time (smaller stacks: one call per component), unless their
images are computed on the host (Sersic profiles, Gaussian-PSF points: one numpy batch
per stack, whatever its size)."""

BATCH_IMAGES = 16
"""Components per compiled call of :func:`morphology_images` (the last call of a stack is padded
with repeats): one program per morphology type and box size, whatever a stack's count."""


def morphology_images(model, centered: bool = False) -> list[np.ndarray]:
    """Every component's morphology image, evaluated stack by stack.

    The same images as :func:`morphology_image` called component by
    component, but the components of a stack (one type and box size, at least
    :data:`BATCH_IMAGES_MIN` of them) are evaluated :data:`BATCH_IMAGES` per
    ``vmap``-ed call: a crowded scene's linear solves and measurements made one
    call per component (a millisecond each, mostly the call: 4000 calls on a
    300-source cutout). Stacks of Sersic profiles or Gaussian-PSF points, of
    any size, are computed on the host in one numpy batch each (nothing
    compiled, nothing copied to the device).

    Parameters
    ----------
    model : SceneModel
    centered : bool
        Evaluate at a zero offset (the profile centred on its box's central
        pixel) instead of at each source centre's sub-pixel offset.

    Returns
    -------
    list of numpy.ndarray (h, w)
        One per component, sources in order and each source's components in order.
    """
    center_stacks, comp_stacks = model._groups(host=True)
    centers = _host_centers(center_stacks, model.num_sources)
    offsets = np.zeros_like(centers) if centered else centers - np.round(centers)
    out = {}
    for st in comp_stacks:
        off = offsets[_owners(st)]
        host = _host_stack_images(st, off)
        if host is not None:
            out.update(zip(st.members, host, strict=True))
            continue
        if st.shared is not None and len(st.members) >= BATCH_IMAGES_MIN:
            out.update(zip(st.members, _batched_images(st, off), strict=True))
            continue
        # (one call per component: morphology_image's value form shares programs across stacks)
        for member, tree, o in zip(st.members, _member_trees(st), off, strict=True):
            out[member] = np.asarray(morphology_image(tree.morphology, to_device(o, o.dtype)))
    return [out[k] for k in sorted(out)]


def evaluate_morphologies(morphologies, offsets) -> list[np.ndarray]:
    """Images of separate morphologies, the many of one structure evaluated in batches.

    The same images as :func:`morphology_image` called one by one, but
    morphologies of one structure (type, box and parameter layout), at least
    :data:`BATCH_IMAGES_MIN` of them, are evaluated :data:`BATCH_IMAGES` per
    compiled call (initialising a crowded scene made one call per source);
    Sersic profiles and Gaussian-PSF points in one numpy batch per structure,
    whatever their number.

    Parameters
    ----------
    morphologies : sequence of AbstractMorphology
    offsets : array (n, 2)
        Sub-pixel offset ``(dy, dx)`` of each centre.

    Returns
    -------
    list of numpy.ndarray (h, w)
        In the order of ``morphologies``.
    """
    offsets = np.asarray(offsets)
    if offsets.shape != (len(morphologies), 2):
        raise ValueError(f"offsets must have shape ({len(morphologies)}, 2); got {offsets.shape}")
    groups: dict = {}
    for k, m in enumerate(morphologies):
        leaves, treedef = jax.tree_util.tree_flatten(m)
        key = (treedef, tuple((np.shape(x), str(getattr(x, "dtype", np.result_type(x)))) for x in leaves))
        groups.setdefault(key, []).append(k)
    out: list = [None] * len(morphologies)
    for (treedef, _), ks in groups.items():
        first = morphologies[ks[0]]
        if _host_pixels(first) is not None or (len(ks) < BATCH_IMAGES_MIN and not _host_evaluable(first)):
            for k in ks:
                out[k] = np.asarray(morphology_image(morphologies[k], to_device(offsets[k], offsets.dtype)))
            continue
        host = [np.stack(xs) for xs in zip(*(map(np.asarray, jax.tree_util.tree_leaves(morphologies[k]))
                                               for k in ks), strict=True)]
        for k, img in zip(ks, _value_form_batches(treedef, host, offsets[ks]), strict=True):
            out[k] = img
    return out


def _host_evaluable(morphology) -> bool:
    """Whether :func:`~scarlet_xr.core._value_form.host_images` evaluates this type of morphology."""
    t = type(morphology)
    return t is SersicMorphology or (t is PointSourceMorphology and morphology.sigma is not None)


def _host_stack_images(stack: _Stack, offsets):
    """A stack's images computed on the host in one batch, whatever its size, or None.

    For the types :func:`~scarlet_xr.core._value_form.host_images` evaluates
    (Sersic profiles, points with a Gaussian model PSF) with concrete leaves:
    nothing is compiled and nothing goes to the device (a survey blend's few
    sources, each evaluated on its own, cost a device transfer per leaf and per
    call: 1.9 ms per image, 3 s over 60 blends).
    """
    morph = stack.tree.morphology
    if not _host_evaluable(morph):
        return None
    leaves, treedef = jax.tree_util.tree_flatten(morph)
    if not all(_concrete(x) for x in leaves):
        return None
    m = len(stack.members)
    if stack.shared is None:
        host = [np.asarray(x)[None] for x in leaves]
    else:
        shared = _morphology_shared(stack)
        host = [np.broadcast_to(np.asarray(x), (m, *np.shape(x))) if s else np.asarray(x)
                for x, s in zip(leaves, shared, strict=True)]
    images = host_images(value_form(treedef.unflatten(host)), offsets)
    return None if images is None else list(images)


def _value_form_batches(treedef, host, offsets) -> list[np.ndarray]:
    """Images of ``m`` profiles given as stacked host leaves ``(m, ...)``, :data:`BATCH_IMAGES` per
    call of one program (the last call padded with repeats of the last profile)."""
    m = len(offsets)
    images = host_images(value_form(treedef.unflatten(host)), offsets)
    if images is not None:
        return list(images)
    out = []
    for a in range(0, m, BATCH_IMAGES):
        take = np.minimum(np.arange(a, a + BATCH_IMAGES), m - 1)
        morph = _on_device(value_form(treedef.unflatten([h[take] for h in host])))
        imgs = np.asarray(_stack_images(morph, to_device(offsets[take], offsets.dtype)))
        out.extend(imgs[: min(BATCH_IMAGES, m - a)])
    return out


def _batched_images(stack: _Stack, offsets) -> list[np.ndarray]:
    """The images of a stack's members, :data:`BATCH_IMAGES` per call (cut and padded on the host).

    Each call evaluates the :func:`~scarlet_xr.core._value_form.value_form` of
    :data:`BATCH_IMAGES` members (their constraints applied before the call,
    on arrays of that fixed length): stacks that differ only in their
    parameters' constraints, steps or priors share one program.
    """
    leaves, treedef = jax.tree_util.tree_flatten(stack.tree.morphology)
    shared = _morphology_shared(stack)
    m = len(stack.members)
    # other types keep their shared leaves (e.g. a learned prior's network) once, unbatched
    parametric = type(stack.tree.morphology) in VALUE_FORM_TYPES
    host = [None if s and not parametric else np.asarray(x) for x, s in zip(leaves, shared, strict=True)]
    if parametric:  # (small shared leaves, e.g. a point's PSF: batched like the rest)
        host = [np.broadcast_to(h, (m, *h.shape)) if s else h for h, s in zip(host, shared, strict=True)]
        return _value_form_batches(treedef, host, offsets)
    out = []
    for a in range(0, m, BATCH_IMAGES):
        take = np.minimum(np.arange(a, a + BATCH_IMAGES), m - 1)  # (repeats of the last member)
        morph = treedef.unflatten([x if h is None else to_device(h[take])
                                   for x, h in zip(leaves, host, strict=True)])
        imgs = np.asarray(_shared_stack_images(morph, tuple(shared), to_device(offsets[take], offsets.dtype)))
        out.extend(imgs[: min(BATCH_IMAGES, m - a)])
    return out


def _on_device(tree):
    """``tree`` with its host (numpy) leaves copied to the device (nothing compiled)."""
    return jax.tree_util.tree_map(lambda x: to_device(x) if isinstance(x, np.ndarray) else x, tree)


def _morphology_shared(stack: _Stack) -> list[bool]:
    """``stack.shared`` restricted to the leaves of its components' morphology (same order)."""
    flags = jax.tree_util.tree_structure(stack.tree).unflatten(list(stack.shared))
    return jax.tree_util.tree_leaves(flags.morphology)


@filter_jit(quick=True)
def _stack_images(morphology, offsets):
    return jax.vmap(lambda m, o: m(o))(morphology, offsets)


@filter_jit(quick=True)
def _shared_stack_images(morphology, shared, offsets):
    axes = jax.tree_util.tree_structure(morphology).unflatten([None if s else 0 for s in shared])
    return jax.vmap(lambda m, o: m(o), in_axes=(axes, 0))(morphology, offsets)


def _convolve_full(images, psf):
    """Full convolution of ``images`` (..., h, w) with ``psf``: boxes grow by the PSF's size minus one
    and stay centred on the same pixel."""
    ph, pw = psf.shape
    h, w = images.shape[-2:]
    fh, fw = h + ph - 1, w + pw - 1
    fs = (fast_size(fh), fast_size(fw))
    kf = jnp.fft.rfft2(psf.astype(images.dtype), s=fs)
    return jnp.fft.irfft2(jnp.fft.rfft2(images, s=fs) * kf, s=fs)[..., :fh, :fw]


def _canvases(center_stacks, comp_stacks, n, shape, pad, psf_fft, active=None):
    """The component stacks placed on padded canvases: ``(light, intrinsic, used)``.

    ``light`` ``(band, y + 2 pad, x + 2 pad)`` holds morphologies already in the frame's
    resolution, ``intrinsic`` (None when there are none, or no model PSF) the intrinsic
    profiles before the model PSF; ``used`` says whether any stack went into ``light``.
    ``active`` (one weight per source, or None) multiplies each source's light.
    """
    b, hh, ww = shape
    centers = _all_centers(center_stacks, n) if comp_stacks else None
    dtype = centers.dtype if centers is not None else jnp.float32
    frame = jnp.zeros((b, hh + 2 * pad, ww + 2 * pad), dtype=dtype)
    intrinsic = None
    used = False
    fused = reverse_mode_only()
    for st in comp_stacks:
        into_intrinsic = st.tree.morphology.intrinsic and psf_fft is not None
        used = used or not into_intrinsic
        if into_intrinsic and intrinsic is None:
            intrinsic = jnp.zeros_like(frame)
        if fused and type(st.tree) is Component and len(st.members) >= FUSED_MIN_MEMBERS:
            # (reverse mode only: boxes formed one by one inside the placement, see _add_products)
            c = centers[_owners(st)]
            morphs = _apply(lambda comp, o: comp.morphology(o), st, c - jnp.round(c))
            spectra = _apply(lambda comp: comp.spectrum(), st)
            if active is not None:
                spectra = spectra * active[_owners(st)][:, None].astype(spectra.dtype)
            if into_intrinsic:
                intrinsic = _place_products(intrinsic, morphs, spectra, c, pad)
            else:
                frame = _place_products(frame, morphs, spectra, c, pad)
            continue
        c, boxes = _boxes(st, centers)
        if active is not None:
            boxes = boxes * active[_owners(st)][:, None, None, None].astype(boxes.dtype)
        if into_intrinsic:
            intrinsic = _place_group(intrinsic, boxes, c, pad)
        else:
            frame = _place_group(frame, boxes, c, pad)
    return frame, intrinsic, used


def _render(center_stacks, comp_stacks, n, shape, pad, psf_fft, fft_shape, active=None, psf_half=(0, 0)):
    """Sum of the component stacks on the frame; intrinsic profiles convolved with the model PSF.

    ``active`` (one weight per source, or None) multiplies each source's light;
    ``psf_half`` is the model PSF's half-size ``(ry, rx)`` (at most ``pad``).
    """
    _, hh, ww = shape
    frame, intrinsic, _ = _canvases(center_stacks, comp_stacks, n, shape, pad, psf_fft, active)
    dtype = frame.dtype
    frame = frame[:, pad : pad + hh, pad : pad + ww]
    if intrinsic is not None:
        # the canvas cropped to the frame plus the PSF's half-width (light further out does not
        # reach the frame): no wrap-around on an FFT grid of at least that size
        ry, rx = psf_half
        near = intrinsic[:, pad - ry : pad + hh + ry, pad - rx : pad + ww + rx]
        conv = jnp.fft.irfft2(jnp.fft.rfft2(near, s=fft_shape) * psf_fft, s=fft_shape)
        frame = frame + conv[:, ry : ry + hh, rx : rx + ww].astype(dtype)
    return frame


class SceneModel(eqx.Module):
    """All sources of a scene and the model-frame shape.

    Calling it returns the model cube ``(band, y, x)`` in the model frame
    (convolved with the model PSF only). Sources of one structure (types,
    box sizes) are evaluated in one ``vmap``-ed call and placed with one
    scatter-add, so the compiled graph grows with the number of distinct
    structures, not with the number of sources; :meth:`packed` also stores
    them stacked, so that a fit's parameters are a few arrays, not a few per
    source.

    Parameters
    ----------
    sources : sequence of Source
    shape : (band, y, x)
        Model-frame shape.
    psf : array (h, w), optional
        Model-frame PSF; intrinsic profiles (Gaussian, Sersic) are convolved
        with it. Without it every morphology is taken to be in the frame already.
    pad : int, optional
        Border added while placing boxes (default: half the largest box plus
        :data:`PAD_MARGIN`; never less than the model PSF's half-width, the
        reach of the PSF convolution); a box that would stick out of the padded frame
        (a centre more than ``PAD_MARGIN`` pixels outside the frame) is moved
        inside it.
    num_epochs : int
        Epochs of the observations (0: no time axis). With variable sources
        (:class:`~scarlet_xr.core.LightCurve` spectra) the model is
        ``(epoch, band, y, x)``: the static sources plus each epoch's
        variable light; a likelihood picks its observation's epoch.
    active : array (source,), optional
        Weights in [0, 1] multiplying each source's light (not fitted; default
        all 1). Batched fitting (``jax.vmap`` over blends) needs every blend of
        a batch to have the same sources and boxes: blends with fewer sources
        are padded with placeholders of weight 0, which render to nothing and
        get zero gradients. Not with variable sources.

    Examples
    --------
    >>> import numpy as np
    >>> from scarlet_xr.core import GaussianMorphology, SceneModel, Source
    >>> src = [Source((10, 10), np.ones(2), GaussianMorphology(1.5)) for _ in range(2)]
    >>> round(float(SceneModel(src, (2, 21, 21), active=[1.0, 0.0])().sum()), 3)
    2.0
    """

    _sources: tuple[Source, ...]
    psf_fft: jax.Array | None
    psf: jax.Array | None
    shape: tuple[int, int, int] = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)
    num_epochs: int = eqx.field(static=True)
    active: jax.Array | None = None
    _stacks: tuple | None = None
    _layout: tuple | None = eqx.field(static=True, default=None)
    _treedefs: tuple | None = eqx.field(static=True, default=None)

    def __init__(self, sources, shape, *, psf=None, pad: int | None = None, num_epochs: int = 0,
                 active=None):
        self._sources = tuple(sources)
        self._stacks = self._layout = self._treedefs = None
        self.shape = tuple(int(s) for s in shape)
        self.num_epochs = int(num_epochs)
        if len(self.shape) != 3:
            raise ValueError(f"model shape must be (band, y, x); got {shape}")
        self.active = self._checked_active(active)
        for i, s in enumerate(self._sources):
            if s.num_bands != self.shape[0]:
                raise ValueError(
                    f"source {i} has {s.num_bands} bands but the model frame has {self.shape[0]}"
                )
            if s.num_epochs and s.num_epochs != self.num_epochs:
                raise ValueError(
                    f"source {i} has a light curve of {s.num_epochs} epochs but the model has "
                    f"{self.num_epochs} (the frame's epochs, from the observations' epoch coordinate)"
                )
        boxes = [max(c.morphology.shape) for s in self._sources for c in s.components]
        # boxes are centred on their sources, which lie in or near the frame: half the largest
        # box plus a margin holds them (a smaller canvas: cheaper FFTs at every step)
        self.pad = int(pad) if pad is not None else (max(boxes) // 2 if boxes else 0) + PAD_MARGIN
        hp, wp = self.shape[1] + 2 * self.pad, self.shape[2] + 2 * self.pad
        if psf is None:
            self.psf_fft = None
            self.psf = None
            self.fft_shape = (hp, wp)
        else:
            psf = np.asarray(psf, float)
            if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
                raise ValueError(f"model PSF must be a 2-D odd-sized image; got shape {psf.shape}")
            # only light within the PSF's half-width of the frame reaches it: the padded canvas
            # is cropped to that before the FFT (on a 54 x 56 blend frame with 45 px boxes and a
            # 9 px model PSF the transforms were 135 x 135, now 64 x 64)
            self.fft_shape = (fast_size(self.shape[1] + psf.shape[0] - 1),
                              fast_size(self.shape[2] + psf.shape[1] - 1))
            k = np.fft.rfft2(kernel_to_origin(psf / psf.sum(), self.fft_shape))
            self.psf_fft = to_device(k, dtype=default_complex())
            self.psf = to_device(psf / psf.sum(), dtype=default_float())
            self.pad = max(self.pad, psf.shape[0] // 2, psf.shape[1] // 2)

    @property
    def margin(self) -> tuple[int, int]:
        """Half-widths ``(ry, rx)`` of the model PSF (``(0, 0)`` without one): the margin around
        the frame of :meth:`layers`."""
        return self._psf_half

    @property
    def _psf_half(self) -> tuple[int, int]:
        """Half-size ``(ry, rx)`` of the model PSF (``(0, 0)`` without one)."""
        if self.psf is None:
            return (0, 0)
        return (self.psf.shape[0] // 2, self.psf.shape[1] // 2)

    def _checked_active(self, active):
        if active is None or isinstance(active, jax.core.Tracer):
            return active
        n = len(self._sources)
        if not n:
            raise ValueError("active weights need at least one source")
        active = np.asarray(active, dtype=float)
        if active.shape != (n,):
            raise ValueError(f"active must have shape ({n},) (one per source); got {active.shape}")
        if not np.all((active >= 0) & (active <= 1)):
            raise ValueError(f"active weights must lie in [0, 1]; got {active}")
        if any(s.num_epochs for s in self._sources):
            raise ValueError("active weights are not supported with variable sources")
        return to_device(active, dtype=self._sources[0].center.raw.dtype)

    # -- layout ------------------------------------------------------------------------------

    @property
    def is_packed(self) -> bool:
        """Whether the sources are stored stacked by structure (see :meth:`packed`)."""
        return self._stacks is not None

    def _replace(self, **fields):
        new = object.__new__(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, fields.get(f.name, getattr(self, f.name)))
        return new

    def packed(self) -> SceneModel:
        """The same model with its sources stored stacked: one array per parameter and structure.

        Centres are stacked by structure, components by type and box size.
        The packed model renders exactly as the unpacked one; fitting it sees
        a few stacked arrays instead of a few arrays per source, so the
        compiled optimisation step does not grow with the number of sources
        (:func:`scarlet_xr.infer.fit` packs scene models itself). Leaves that
        are one object in every member of a stack (e.g. a learned prior's
        network) are stored once. :attr:`sources` unstacks on access.
        """
        if self.is_packed:
            return self
        return self._packed_with(0)

    def _packed_with(self, min_shared_size: int) -> SceneModel:
        """:meth:`packed`, sharing only leaves of at least ``min_shared_size`` elements."""
        centers, comps = _groups_of(self._sources, min_shared_size)
        return self._replace(
            _sources=(),
            _stacks=(tuple(st.tree for st in centers), tuple(st.tree for st in comps)),
            _layout=(tuple((st.members, st.shared) for st in centers),
                     tuple((st.members, st.shared) for st in comps)),
            _treedefs=tuple(jax.tree_util.tree_structure(s) for s in self._sources),
        )

    def canonical(self, max_count: int = CANONICAL_MAX_COUNT, templates=()):
        """The same scene in a canonical order and number of sources, to reuse compiled fits.

        A compiled fit step is keyed on the scene's structure: the order of
        its sources' types and box sizes, their number and their names. Here
        the sources are sorted by structure, their names dropped, and each
        structure's count padded to a power of two (up to ``max_count``;
        larger stacks keep their count) with placeholder copies of weight 0
        (``active``: they render to nothing and get no gradient from the
        data). Scenes of one frame shape whose sources fall in the same
        buckets then share one compiled step (``fit(..., canonical=True)``
        fits this form and returns the scene as given, see :meth:`restored`).

        With ``templates``, the layout also depends less on which structures
        the scene holds: every template's structure is present (as
        placeholders when no source has it) and padded to the scene's count,
        the number of sources rounded up to a power of two. Blends of one
        stamp size that differ only in which sources are points, Sersics or
        bulges + disks then share one program (a survey's blends compiled one
        or two programs each otherwise). Only when the placeholders stay
        small: at most ``max_count`` sources and :data:`CANONICAL_TEMPLATE_PIXELS`
        pixels of template boxes in all.

        Parameters
        ----------
        max_count : int
            Stacks of at most this many sources are padded.
        templates : sequence of Source
            Sources whose structures the layout always holds (their values
            do not matter: placeholders have weight 0).

        Returns
        -------
        model : SceneModel
            The canonical scene, packed; ``self`` when it cannot be made
            canonical (already packed, with ``active`` weights or variable
            sources, or a source with a leaf that is not an array).
        restore : tuple or None
            ``(order, names)`` for :meth:`restored`; None when ``model`` is ``self``.
        """
        if self.is_packed or self.active is not None or self.num_epochs or not self._sources:
            return self, None
        sources = [_renamed(s, None) for s in self._sources]
        groups = {}
        for i, s in enumerate(sources):
            key = _stack_key(s)
            if key is None:
                return self, None
            groups.setdefault(key, []).append(i)
        menu = _menu(templates, len(sources), max_count)
        for key in menu:
            groups.setdefault(key, [])
        order, out = [], []
        for key in sorted(groups, key=repr):
            idx = groups[key]
            count = _count_bucket(len(idx), max_count)
            if key in menu:
                count = max(count, _count_bucket(len(sources), max_count))
            order += idx + [-1] * (count - len(idx))
            out += [sources[i] for i in idx]
            base = sources[idx[0]] if idx else menu[key]
            out += [_copied(base) for _ in range(len(order) - len(out))]
        active = np.asarray([1.0 if i >= 0 else 0.0 for i in order])
        model = self._replace(_sources=tuple(out), active=to_device(active, dtype=out[0].center.raw.dtype))
        return model._packed_with(CANONICAL_MIN_SHARED), (tuple(order), tuple(s.name for s in self._sources))

    def restored(self, order, names) -> SceneModel:
        """The scene of :meth:`canonical` back in its given order, names and number of sources (unpacked)."""
        # (placeholders are not unstacked: with templates they are most of a blend's layout)
        srcs = self._unstacked([i >= 0 for i in order]) if self.is_packed else self._sources
        out = [None] * len(names)
        for pos, i in enumerate(order):
            if i >= 0:
                out[i] = _renamed(srcs[pos], names[i])
        return self._replace(_sources=tuple(out), active=None, _stacks=None, _layout=None, _treedefs=None)

    def unpacked(self) -> SceneModel:
        """The same model with one :class:`~scarlet_xr.core.Source` per source (inverse of :meth:`packed`)."""
        if not self.is_packed:
            return self
        return self._replace(_sources=self.sources, _stacks=None, _layout=None, _treedefs=None)

    def _groups(self, host: bool = False):
        """``(centre stacks, component stacks)``, stored (packed) or stacked now (with ``host``,
        concrete leaves stacked now stay numpy arrays)."""
        if self._stacks is None:
            return _groups_of(self._sources, host=host)
        return tuple([_Stack(m, tree, shared) for tree, (m, shared) in zip(trees, lay, strict=True)]
                     for trees, lay in zip(self._stacks, self._layout, strict=True))

    @property
    def num_sources(self) -> int:
        """Number of sources."""
        return len(self._treedefs) if self.is_packed else len(self._sources)

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources, in the order given (a packed model unstacks them on each access)."""
        if not self.is_packed:
            return self._sources
        return self._unstacked()

    def _unstacked(self, wanted=None) -> tuple:
        """The sources of a packed model; None in place of those where ``wanted`` (one bool per
        source) is False."""
        n = self.num_sources
        wanted = [True] * n if wanted is None else list(wanted)
        centers, comps = self._groups()
        center_of, parts = [None] * n, [{} for _ in range(n)]
        for st in centers:
            for i, tree in zip(st.members, _member_trees(st, [wanted[i] for i in st.members]), strict=True):
                center_of[i] = tree
        for st in comps:
            for (i, j), tree in zip(st.members, _member_trees(st, [wanted[i] for i, _ in st.members]),
                                    strict=True):
                parts[i][j] = tree
        out = []
        for i in range(n):
            if not wanted[i]:
                out.append(None)
                continue
            comps_i = tuple(parts[i][j] for j in range(len(parts[i])))
            leaves = jax.tree_util.tree_leaves((center_of[i], comps_i))
            out.append(self._treedefs[i].unflatten(leaves))
        return tuple(out)

    def _num_components(self) -> np.ndarray:
        if not self.is_packed:
            return np.array([len(s.components) for s in self._sources], np.int64)
        counts = np.zeros(self.num_sources, np.int64)
        for st in self._groups()[1]:
            for i, j in st.members:
                counts[i] = max(counts[i], j + 1)
        return counts

    @property
    def variable(self) -> tuple[bool, ...]:
        """Per source: whether it is variable (has light curves)."""
        if not self.is_packed:
            return tuple(bool(s.num_epochs) for s in self._sources)
        flags = [False] * self.num_sources
        for st in self._groups()[1]:
            if _num_epochs(st):
                for i, _ in st.members:
                    flags[i] = True
        return tuple(flags)

    def log_prior(self) -> jax.Array:
        """Sum of the log priors of all non-fixed parameters (one ``vmap``-ed call per stack).

        Sources of weight 0 (``active``: placeholders) contribute nothing.
        """
        total = jnp.zeros(())
        for stacks in self._groups():
            for st in stacks:
                if any(p.prior is not None and not p.fixed for p in _parameters(st.tree)):
                    vals = _apply(_tree_log_prior, st)
                    if self.active is not None:
                        owners = np.array([m if np.ndim(m) == 0 else m[0] for m in st.members], np.int32)
                        vals = jnp.where(self.active[owners] > 0, vals, 0.0)
                    total = total + jnp.sum(vals)
        return total

    # -- rendering ---------------------------------------------------------------------------

    def __call__(self) -> jax.Array:
        """Return the model cube ``(band, y, x)``; ``(epoch, band, y, x)`` with variable sources."""
        centers, comps = self._groups()
        n = self.num_sources
        static = [st for st in comps if not _num_epochs(st)]
        varying = [st for st in comps if _num_epochs(st)]
        if not varying:
            return _render(centers, static, n, self.shape, self.pad, self.psf_fft, self.fft_shape,
                           self.active, self._psf_half)
        b, hh, ww = self.shape
        e = self.num_epochs
        # a variable component renders all its epochs at once, as bands of a longer spectrum
        light = _render(centers, varying, n, (e * b, hh, ww), self.pad, self.psf_fft, self.fft_shape,
                        psf_half=self._psf_half)
        light = light.reshape(e, b, hh, ww)
        if not static:
            return light
        return _render(centers, static, n, self.shape, self.pad, self.psf_fft, self.fft_shape,
                       psf_half=self._psf_half)[None] + light

    def layers(self):
        """The light before the observations' renderers, on the frame with the model PSF's margin.

        Returns
        -------
        (light, intrinsic) : arrays (band, y + 2 ry, x + 2 rx) or None
            ``ry, rx`` are the model PSF's half-widths (0 without a PSF).
            ``light`` holds the morphologies already in the frame's
            resolution (None when there are none), ``intrinsic`` the
            intrinsic profiles before the model PSF (None when there are
            none). The model cube is ``light + psf * intrinsic`` cropped to
            the frame; a :class:`~scarlet_xr.core.ConvolutionRenderer`
            renders both with one transform
            (:meth:`~scarlet_xr.core.ConvolutionRenderer.render_layers`), and
            keeps the light that the model PSF spreads just beyond the frame.

        Raises
        ------
        ValueError
            For models with variable sources (use ``model()``).
        """
        if self.num_epochs:
            raise ValueError("layers() is for static models; this one has variable sources")
        centers, comps = self._groups()
        _, hh, ww = self.shape
        ry, rx = self._psf_half
        p = self.pad
        frame, intrinsic, used = _canvases(centers, comps, self.num_sources, self.shape, p, self.psf_fft,
                                           self.active)
        if intrinsic is None and not used:  # no sources: an empty canvas
            used = True
        light = frame[:, p - ry : p + hh + ry, p - rx : p + ww + rx] if used else None
        if intrinsic is not None:
            intrinsic = intrinsic[:, p - ry : p + hh + ry, p - rx : p + ww + rx]
        return light, intrinsic

    def cube_from_layers(self, light, intrinsic) -> jax.Array:
        """The model cube ``model()`` from :meth:`layers` (without placing the sources again).

        Parameters
        ----------
        light, intrinsic : arrays (band, y + 2 ry, x + 2 rx) or None
            As returned by :meth:`layers`.

        Returns
        -------
        jax.Array (band, y, x)
        """
        _, hh, ww = self.shape
        ry, rx = self._psf_half
        frame = None if light is None else light[:, ry : ry + hh, rx : rx + ww]
        if intrinsic is not None:
            conv = jnp.fft.irfft2(jnp.fft.rfft2(intrinsic, s=self.fft_shape) * self.psf_fft, s=self.fft_shape)
            conv = conv[:, ry : ry + hh, rx : rx + ww].astype(intrinsic.dtype)
            frame = conv if frame is None else frame + conv
        return jnp.zeros(self.shape, default_float()) if frame is None else frame

    def _sum_components(self, fun, trailing):
        """``fun(component)`` ``trailing``-shaped per component, summed into ``(source, *trailing)``."""
        out = None
        for st in self._groups()[1]:
            vals = _apply(fun, st)
            if out is None:
                out = jnp.zeros((self.num_sources, *trailing), vals.dtype)
            out = out.at[_owners(st)].add(vals)
        return out if out is not None else jnp.zeros((self.num_sources, *trailing))

    def light_curves(self) -> jax.Array:
        """Flux per source, epoch and band ``(source, epoch, band)``; static sources repeat their flux."""
        e, b = max(self.num_epochs, 1), self.shape[0]

        def curve(c):
            return c.light_curve() if num_epochs_of(c.spectrum) else jnp.broadcast_to(c.flux(), (e, b))

        return self._sum_components(curve, (e, b))

    def render_sources(self) -> jax.Array:
        """Return each source rendered alone, ``(source, band, y, x)`` (variable: mean over epochs)."""
        out = jnp.stack([
            _render(*_groups_of([s]), 1, self.shape, self.pad, self.psf_fft, self.fft_shape,
                    psf_half=self._psf_half)
            if not s.num_epochs else self._mean_render(s) for s in self.sources
        ])
        return out if self.active is None else out * self.active[:, None, None, None].astype(out.dtype)

    def _mean_render(self, source):
        """A variable source rendered with its light curve's mean over epochs ``(band, y, x)``."""
        b, hh, ww = self.shape
        e = source.num_epochs
        out = _render(*_groups_of([source]), 1, (e * b, hh, ww), self.pad, self.psf_fft, self.fft_shape,
                      psf_half=self._psf_half)
        return out.reshape(e, b, hh, ww).mean(axis=0)

    def component_stamps(self):
        """Each component's image with the model PSF, on its own box, group by group.

        Components of one type and box size are evaluated in one ``vmap``-ed
        call (see :meth:`__call__`); intrinsic profiles are convolved with the
        model PSF in full, so their boxes grow by the PSF's size minus one and
        stay centred on the same pixel. Nothing is placed on the frame.

        Returns
        -------
        list of (members, centers, images)
            ``members``: component indices (source order, then component
            order); ``centers`` ``(m, 2)``: the sources' centres (each image is
            centred on the pixel nearest its centre); ``images`` ``(m, band,
            h, w)`` (a variable component: its light curve's mean over epochs).
        """
        start = np.concatenate([[0], np.cumsum(self._num_components())])
        center_stacks, comps = self._groups()
        all_centers = _all_centers(center_stacks, self.num_sources) if comps else None
        out = []
        for st in comps:
            centers, boxes = _boxes(st, all_centers)
            if self.active is not None:
                boxes = boxes * self.active[_owners(st)][:, None, None, None].astype(boxes.dtype)
            if boxes.shape[1] != self.shape[0]:
                # variable components (epoch * band): their mean over epochs
                m, eb, h, w = boxes.shape
                boxes = boxes.reshape(m, eb // self.shape[0], self.shape[0], h, w).mean(axis=1)
            if st.tree.morphology.intrinsic and self.psf is not None:
                boxes = _convolve_full(boxes, self.psf)
            out.append(([int(start[i]) + j for i, j in st.members], centers, boxes))
        return out

    def frozen(self, *, morphology: bool = True, fix_centers: bool = False, selected=None,
               margin: int = 3) -> SceneModel:
        """The same scene with morphologies (and unselected sources) frozen at their current state.

        With ``morphology=True`` each component's morphology becomes a fixed
        image (the model PSF included, with ``margin`` pixels of zeros around
        it) that the source's centre moves by a Fourier phase ramp: at the
        current centres the frozen model renders as this one, and it is smooth
        in the centres for every kind of morphology, free-form pixels included
        (whose fixed centre is then freed: with the pixels frozen, the centre
        carries the position). Spectra and centres stay free. Used to sample
        fluxes and positions at fixed shapes.

        Parameters
        ----------
        morphology : bool
            Freeze the morphologies (False: keep them as they are, only fix
            what ``fix_centers`` and ``selected`` say).
        fix_centers : bool
            Keep all centres fixed.
        selected : collection of int, optional
            Sources whose spectra and centres stay free; every parameter of the
            others is fixed (default: all sources).
        margin : int
            Zero pixels around each frozen image (the phase ramp moves it by
            less than a pixel; the box follows the centre's nearest pixel).

        Returns
        -------
        SceneModel
            Unpacked, with the same shape, PSF, epochs and active weights.
        """
        base = self.unpacked()
        sources = base.sources
        chosen = set(range(len(sources)) if selected is None else (int(i) for i in selected))
        if not morphology:
            return base._replace(_sources=tuple(
                _fix_all(s) if i not in chosen
                else s if not fix_centers else eqx.tree_at(lambda x: x.center, s, _fixed(s.center))
                for i, s in enumerate(sources)))
        images = {}
        centers_stacks, comps = _groups_of(sources)
        all_centers = _all_centers(centers_stacks, len(sources)) if comps else None
        for st in comps:
            c = all_centers[_owners(st)]
            imgs = _apply(lambda comp, o: comp.morphology(o), st, c - jnp.round(c))
            if st.tree.morphology.intrinsic and self.psf is not None:
                imgs = _convolve_full(imgs, self.psf)
            imgs = np.pad(np.asarray(imgs), ((0, 0), (margin, margin), (margin, margin)))
            off = np.asarray(c - jnp.round(c))
            for k, member in enumerate(st.members):
                images[member] = (imgs[k], off[k])
        out = []
        for i, src in enumerate(sources):
            center = src.center
            if fix_centers or i not in chosen:
                center = _fixed(center)
            elif center.fixed:
                center = Parameter(np.asarray(center.value, np.float64), Identity(), prior=center.prior,
                                   step=center.step)
            new_comps = []
            for j, comp in enumerate(src.components):
                img, off = images[(i, j)]
                dt = jnp.asarray(comp.spectrum()).dtype
                moves = not center.fixed
                stored = (to_device(np.fft.rfft2(img), jnp.result_type(dt, jnp.complex64)) if moves
                          else to_device(img, dt))
                morph = _TemplateMorphology(image=stored, offset0=to_device(off, dt), shape=img.shape,
                                            moves=moves)
                spectrum = comp.spectrum if i in chosen else _fix_all(comp.spectrum)
                new_comps.append(type(comp)(spectrum, morph))
            out.append(eqx.tree_at(lambda s: (s.center, s.components), src, (center, tuple(new_comps))))
        return base._replace(_sources=tuple(out))

    def fluxes(self) -> jax.Array:
        """Total flux per source and band ``(source, band)`` (one ``vmap``-ed call per component stack).

        A variable source's flux is the mean of its light curve over epochs
        (see :meth:`light_curves`).
        """
        out = self._sum_components(lambda c: c.flux(), (self.shape[0],))
        return out if self.active is None else out * self.active[:, None].astype(out.dtype)


def _parameters(tree):
    return [p for p in jax.tree_util.tree_leaves(tree, is_leaf=is_parameter) if isinstance(p, Parameter)]


def _fixed(p: Parameter) -> Parameter:
    """``p`` with ``fixed=True`` (the same value, constraint, prior and step)."""
    if p.fixed:
        return p
    return Parameter(np.asarray(p.value, np.float64), p.constraint, prior=p.prior, fixed=True, step=p.step)


def _fix_all(tree):
    """``tree`` with every parameter fixed."""
    return jax.tree_util.tree_map(lambda x: _fixed(x) if isinstance(x, Parameter) else x, tree,
                                  is_leaf=is_parameter)


def _tree_log_prior(tree):
    total = jnp.zeros(())
    for p in _parameters(tree):
        if not p.fixed and p.prior is not None:
            total = total + p.log_prior()
    return total
