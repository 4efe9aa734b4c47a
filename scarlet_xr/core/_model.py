"""SceneModel: a tuple of sources rendered into the model frame (pure JAX)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._fft import fast_size, kernel_to_origin
from ._source import Source

__all__ = ["SceneModel", "component_boxes", "morphology_image"]


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


def _group_components(sources):
    """Components grouped by type, structure and box size: ``[(members, stacked, centers)]``.

    ``members``: indices of the components (in source order, then component
    order); ``stacked``: the group's components stacked leaf by leaf (the one
    component itself for a group of one); ``centers`` ``(m, 2)``: their
    sources' centres.
    """
    entries, groups = [], {}
    for src in sources:
        center = src.center.value
        for comp in src.components:
            key = _stack_key(comp)
            idx = len(entries)
            entries.append((center, comp))
            groups.setdefault(idx if key is None else key, []).append(idx)
    out = []
    for members in groups.values():
        centers = jnp.stack([entries[i][0] for i in members])
        comps = [entries[i][1] for i in members]
        stacked = comps[0] if len(comps) == 1 else jax.tree_util.tree_map(lambda *x: jnp.stack(x), *comps)
        out.append((members, stacked, centers))
    return out


def _group_map(fun, members, stacked, *args):
    """``fun(component, *args)`` over a group from :func:`_group_components` (leading axis m)."""
    if len(members) == 1:
        return fun(stacked, *(a[0] for a in args))[None]
    return jax.vmap(fun)(stacked, *args)


def _component_groups(sources):
    """Components evaluated group by group: one ``vmap``-ed call per type, structure and box size.

    Returns
    -------
    list of (members, centers, boxes, intrinsic)
        ``members``: indices of the components (in source order, then
        component order); ``centers`` ``(m, 2)``: their sources' centres;
        ``boxes`` ``(m, band, h, w)``: their images at the sub-pixel offset;
        ``intrinsic``: whether the morphology still needs the model PSF.
    """
    out = []
    for members, stacked, centers in _group_components(sources):
        offsets = centers - jnp.round(centers)
        boxes = _group_map(lambda c, o: c(o), members, stacked, offsets)
        out.append((members, centers, boxes, bool(stacked.morphology.intrinsic)))
    return out


def component_boxes(sources):
    """Evaluate every component's ``(band, h, w)`` box at its source's sub-pixel offset.

    Components of the same type, structure and box size are stacked and
    evaluated in one ``vmap``-ed call, so the compiled graph grows with the
    number of distinct component types, not with the number of sources.

    Returns
    -------
    list of (center, component, box)
        In source order, then component order.
    """
    comps = [comp for src in sources for comp in src.components]
    out = [None] * len(comps)
    for members, centers, boxes, _ in _component_groups(sources):
        for j, i in enumerate(members):
            out[i] = (centers[j], comps[i], boxes[j])
    return out


def _scatter(canvas, boxes, centers, pad):
    """Add ``boxes`` (m, band, h, w) to ``canvas`` (band, H, W) in one scatter-add.

    Each box is centred on the pixel nearest its centre (shifted by ``pad``)
    and, like ``lax.dynamic_update_slice``, moved inside the canvas when it
    would stick out. The compiled size does not depend on ``m``; the
    gradient is one gather.
    """
    m, b, h, w = boxes.shape
    hp, wp = canvas.shape[1:]
    iy = jnp.clip(jnp.round(centers[:, 0]).astype(jnp.int32) - h // 2 + pad, 0, hp - h)
    ix = jnp.clip(jnp.round(centers[:, 1]).astype(jnp.int32) - w // 2 + pad, 0, wp - w)
    rows = iy[:, None] + jnp.arange(h, dtype=jnp.int32)
    cols = ix[:, None] + jnp.arange(w, dtype=jnp.int32)
    flat = rows[:, :, None] * wp + cols[:, None, :]
    out = canvas.reshape(b, hp * wp).at[:, flat].add(
        jnp.moveaxis(boxes, 1, 0).astype(canvas.dtype), indices_are_sorted=False, unique_indices=False
    )
    return out.reshape(b, hp, wp)


def _place_group(canvas, boxes, centers, pad):
    """Add a group of boxes: ``dynamic_update_slice`` for one, a scatter-add for several."""
    if boxes.shape[0] == 1:
        return _place(canvas, boxes[0], centers[0], pad)
    return _scatter(canvas, boxes, centers, pad)


@eqx.filter_jit
def morphology_image(morphology, offset: Float[ArrayLike, " 2"]) -> Float[Array, "h w"]:
    """Evaluate ``morphology(offset)`` compiled once per morphology type and box size.

    For code outside a traced function (initialisation, linear solves) that
    evaluates many morphologies: eager evaluation would compile every
    operation of the profile anew for each new box size.
    """
    return morphology(offset)


def _component_weights(sources, active):
    """Per component, its source's ``active`` weight (None: all 1)."""
    if active is None:
        return None
    owner = np.array([k for k, s in enumerate(sources) for _ in s.components], np.int32)
    return active[owner]


def _render(sources, shape, pad, psf_fft, fft_shape, weights=None):
    """Sum of ``sources`` on the frame; intrinsic profiles convolved with the model PSF.

    ``weights`` (one per component, see :func:`_component_weights`) multiply the components.
    """
    b, hh, ww = shape
    dtype = sources[0].center.raw.dtype if sources else jnp.float32
    frame = jnp.zeros((b, hh + 2 * pad, ww + 2 * pad), dtype=dtype)
    intrinsic = None
    for members, centers, boxes, is_intrinsic in _component_groups(sources):
        if weights is not None:
            boxes = boxes * weights[np.asarray(members)][:, None, None, None].astype(boxes.dtype)
        if is_intrinsic and psf_fft is not None:
            if intrinsic is None:
                intrinsic = jnp.zeros_like(frame)
            intrinsic = _place_group(intrinsic, boxes, centers, pad)
        else:
            frame = _place_group(frame, boxes, centers, pad)
    if intrinsic is not None:
        conv = jnp.fft.irfft2(jnp.fft.rfft2(intrinsic, s=fft_shape) * psf_fft, s=fft_shape)
        frame = frame + conv[:, : frame.shape[1], : frame.shape[2]].astype(dtype)
    return frame[:, pad : pad + hh, pad : pad + ww]


class SceneModel(eqx.Module):
    """All sources of a scene and the model-frame shape.

    Calling it returns the model cube ``(band, y, x)`` in the model frame
    (convolved with the model PSF only).

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
        :data:`PAD_MARGIN`); a box that would stick out of the padded frame
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

    sources: tuple[Source, ...]
    psf_fft: jax.Array | None
    psf: jax.Array | None
    shape: tuple[int, int, int] = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)
    num_epochs: int = eqx.field(static=True)
    active: jax.Array | None = None

    def __init__(self, sources, shape, *, psf=None, pad: int | None = None, num_epochs: int = 0,
                 active=None):
        self.sources = tuple(sources)
        self.shape = tuple(int(s) for s in shape)
        self.num_epochs = int(num_epochs)
        if len(self.shape) != 3:
            raise ValueError(f"model shape must be (band, y, x); got {shape}")
        self.active = self._checked_active(active)
        for i, s in enumerate(self.sources):
            if s.num_bands != self.shape[0]:
                raise ValueError(
                    f"source {i} has {s.num_bands} bands but the model frame has {self.shape[0]}"
                )
            if s.num_epochs and s.num_epochs != self.num_epochs:
                raise ValueError(
                    f"source {i} has a light curve of {s.num_epochs} epochs but the model has "
                    f"{self.num_epochs} (the frame's epochs, from the observations' epoch coordinate)"
                )
        boxes = [max(c.morphology.shape) for s in self.sources for c in s.components]
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
            self.fft_shape = (fast_size(hp + psf.shape[0]), fast_size(wp + psf.shape[1]))
            k = np.fft.rfft2(kernel_to_origin(psf / psf.sum(), self.fft_shape))
            self.psf_fft = jnp.asarray(k, dtype=jnp.result_type(jnp.asarray(0.0).dtype, jnp.complex64))
            self.psf = jnp.asarray(psf / psf.sum(), dtype=jnp.asarray(0.0).dtype)

    def _checked_active(self, active):
        if active is None or isinstance(active, jax.core.Tracer):
            return active
        n = len(self.sources)
        if not n:
            raise ValueError("active weights need at least one source")
        active = np.asarray(active, dtype=float)
        if active.shape != (n,):
            raise ValueError(f"active must have shape ({n},) (one per source); got {active.shape}")
        if not np.all((active >= 0) & (active <= 1)):
            raise ValueError(f"active weights must lie in [0, 1]; got {active}")
        if any(s.num_epochs for s in self.sources):
            raise ValueError("active weights are not supported with variable sources")
        return jnp.asarray(active, dtype=self.sources[0].center.raw.dtype)

    @property
    def variable(self) -> tuple[bool, ...]:
        """Per source: whether it is variable (has light curves)."""
        return tuple(bool(s.num_epochs) for s in self.sources)

    def __call__(self) -> jax.Array:
        """Return the model cube ``(band, y, x)``; ``(epoch, band, y, x)`` with variable sources."""
        if not any(self.variable):
            return _render(self.sources, self.shape, self.pad, self.psf_fft, self.fft_shape,
                           _component_weights(self.sources, self.active))
        static = [s for s, v in zip(self.sources, self.variable, strict=True) if not v]
        varying = [s for s, v in zip(self.sources, self.variable, strict=True) if v]
        b, hh, ww = self.shape
        e = self.num_epochs
        # a variable component renders all its epochs at once, as bands of a longer spectrum
        light = _render(varying, (e * b, hh, ww), self.pad, self.psf_fft, self.fft_shape)
        light = light.reshape(e, b, hh, ww)
        if not static:
            return light
        return _render(static, self.shape, self.pad, self.psf_fft, self.fft_shape)[None] + light

    def light_curves(self) -> jax.Array:
        """Flux per source, epoch and band ``(source, epoch, band)``; static sources repeat their flux."""
        e = max(self.num_epochs, 1)
        return jnp.stack([s.light_curve() if s.num_epochs else jnp.broadcast_to(s.flux(), (e, self.shape[0]))
                          for s in self.sources])

    def render_sources(self) -> jax.Array:
        """Return each source rendered alone, ``(source, band, y, x)`` (variable: mean over epochs)."""
        out = jnp.stack([
            _render([s], self.shape, self.pad, self.psf_fft, self.fft_shape) if not s.num_epochs
            else self._mean_render(s) for s in self.sources
        ])
        return out if self.active is None else out * self.active[:, None, None, None].astype(out.dtype)

    def _mean_render(self, source):
        """A variable source rendered with its light curve's mean over epochs ``(band, y, x)``."""
        b, hh, ww = self.shape
        e = source.num_epochs
        out = _render([source], (e * b, hh, ww), self.pad, self.psf_fft, self.fft_shape)
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
        out = []
        weights = _component_weights(self.sources, self.active)
        for members, centers, boxes, intrinsic in _component_groups(self.sources):
            if weights is not None:
                boxes = boxes * weights[np.asarray(members)][:, None, None, None].astype(boxes.dtype)
            if boxes.shape[1] != self.shape[0]:
                # variable components (epoch * band): their mean over epochs
                m, eb, h, w = boxes.shape
                boxes = boxes.reshape(m, eb // self.shape[0], self.shape[0], h, w).mean(axis=1)
            if intrinsic and self.psf is not None:
                ph, pw = self.psf.shape
                _, _, h, w = boxes.shape
                fh, fw = h + ph - 1, w + pw - 1
                fs = (fast_size(fh), fast_size(fw))
                kf = jnp.fft.rfft2(self.psf.astype(boxes.dtype), s=fs)
                boxes = jnp.fft.irfft2(jnp.fft.rfft2(boxes, s=fs) * kf, s=fs)[..., :fh, :fw]
            out.append((members, centers, boxes))
        return out

    def fluxes(self) -> jax.Array:
        """Total flux per source and band ``(source, band)`` (one ``vmap``-ed call per component group).

        A variable source's flux is the mean of its light curve over epochs
        (see :meth:`light_curves`).
        """
        per_comp = [None] * sum(len(s.components) for s in self.sources)
        for members, stacked, _ in _group_components(self.sources):
            vals = _group_map(lambda c: c.flux(), members, stacked)
            for j, i in enumerate(members):
                per_comp[i] = vals[j]
        out, c = [], 0
        for src in self.sources:
            m = len(src.components)
            out.append(per_comp[c] if m == 1 else sum(per_comp[c : c + m]))
            c += m
        out = jnp.stack(out)
        return out if self.active is None else out * self.active[:, None].astype(out.dtype)
