"""SceneModel: a tuple of sources rendered into the model frame (pure JAX)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._fft import fast_size, kernel_to_origin
from ._source import Source

__all__ = ["SceneModel", "render_source", "component_boxes", "morphology_image"]


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
    entries, groups = [], {}
    for src in sources:
        center = src.center.value
        offset = center - jnp.round(center)
        for comp in src.components:
            key = _stack_key(comp)
            idx = len(entries)
            entries.append([center, comp, offset, None])
            groups.setdefault(idx if key is None else key, []).append(idx)
    for members in groups.values():
        if len(members) == 1:
            e = entries[members[0]]
            e[3] = e[1](e[2])
            continue
        stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[entries[i][1] for i in members])
        offsets = jnp.stack([entries[i][2] for i in members])
        out = jax.vmap(lambda c, o: c(o))(stacked, offsets)
        for j, i in enumerate(members):
            entries[i][3] = out[j]
    return [(c, comp, box) for c, comp, _, box in entries]


@eqx.filter_jit
def morphology_image(morphology, offset) -> jax.Array:
    """Evaluate ``morphology(offset)`` compiled once per morphology type and box size.

    For code outside a traced function (initialisation, linear solves) that
    evaluates many morphologies: eager evaluation would compile every
    operation of the profile anew for each new box size.
    """
    return morphology(offset)


def _render(sources, shape, pad, psf_fft, fft_shape):
    """Sum of ``sources`` on the frame; intrinsic profiles convolved with the model PSF."""
    b, hh, ww = shape
    dtype = sources[0].center.raw.dtype if sources else jnp.float32
    frame = jnp.zeros((b, hh + 2 * pad, ww + 2 * pad), dtype=dtype)
    intrinsic = None
    for center, comp, box in component_boxes(sources):
        if comp.morphology.intrinsic and psf_fft is not None:
            if intrinsic is None:
                intrinsic = jnp.zeros_like(frame)
            intrinsic = _place(intrinsic, box, center, pad)
        else:
            frame = _place(frame, box, center, pad)
    if intrinsic is not None:
        conv = jnp.fft.irfft2(jnp.fft.rfft2(intrinsic, s=fft_shape) * psf_fft, s=fft_shape)
        frame = frame + conv[:, : frame.shape[1], : frame.shape[2]].astype(dtype)
    return frame[:, pad : pad + hh, pad : pad + ww]


def render_source(source: Source, shape: tuple[int, int, int], pad: int, psf=None) -> jax.Array:
    """Render one source into a zero frame of ``shape`` (band, y, x).

    ``psf`` is the model-frame PSF applied to intrinsic profiles (optional).
    """
    return SceneModel([source], shape, psf=psf, pad=pad)()


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
        Border added while placing boxes (default: largest box + 2).
    """

    sources: tuple[Source, ...]
    psf_fft: jax.Array | None
    shape: tuple[int, int, int] = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, sources, shape, *, psf=None, pad: int | None = None):
        self.sources = tuple(sources)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"model shape must be (band, y, x); got {shape}")
        for i, s in enumerate(self.sources):
            if s.num_bands != self.shape[0]:
                raise ValueError(
                    f"source {i} has {s.num_bands} bands but the model frame has {self.shape[0]}"
                )
        boxes = [max(c.morphology.shape) for s in self.sources for c in s.components]
        self.pad = int(pad) if pad is not None else (max(boxes) if boxes else 1) + 2
        hp, wp = self.shape[1] + 2 * self.pad, self.shape[2] + 2 * self.pad
        if psf is None:
            self.psf_fft = None
            self.fft_shape = (hp, wp)
        else:
            psf = np.asarray(psf, float)
            if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
                raise ValueError(f"model PSF must be a 2-D odd-sized image; got shape {psf.shape}")
            self.fft_shape = (fast_size(hp + psf.shape[0]), fast_size(wp + psf.shape[1]))
            k = np.fft.rfft2(kernel_to_origin(psf / psf.sum(), self.fft_shape))
            self.psf_fft = jnp.asarray(k, dtype=jnp.result_type(jnp.asarray(0.0).dtype, jnp.complex64))

    def __call__(self) -> jax.Array:
        """Return the model cube (band, y, x)."""
        return _render(self.sources, self.shape, self.pad, self.psf_fft, self.fft_shape)

    def render_sources(self) -> jax.Array:
        """Return each source rendered alone, ``(source, band, y, x)``."""
        return jnp.stack(
            [_render([s], self.shape, self.pad, self.psf_fft, self.fft_shape) for s in self.sources]
        )

    def fluxes(self) -> jax.Array:
        """Total flux per source and band ``(source, band)``."""
        return jnp.stack([s.flux() for s in self.sources])
