"""Fewer box sizes per scene: small stacks of profiles moved up to the next box size used.

Components of one type and box size render in one vmapped call, and each such
stack is compiled into every program of a fit (the step, the linear solves,
the χ² tests): on a 300-source cutout the extended sources used 7-11 box sizes
per stage, about 20 stacks with the bulge + disk kinds. A stack of a few
sources costs its compile in full but few pixels per step; moved up to the next
larger box that its kind already uses, it costs more pixels per step and no
compile. :func:`consolidated_boxes` makes that trade where the extra pixels
are few (:data:`MERGE_BOX_PIXELS`). Boxes only grow: no profile is cut shorter.
"""

from __future__ import annotations

import equinox as eqx
import jax

from ..core import SceneModel, SersicMorphology

__all__ = ["consolidated_boxes", "MERGE_BOX_PIXELS"]

MERGE_BOX_PIXELS = 40_000
"""Most box pixels (summed over a stack's sources) added by moving a stack to the next box size.

A pixel of Sersic box costs about 32 ns per step (value and gradient), a fit takes a few hundred
steps, and a stack about a second of compiling over a fit's programs: 40 000 pixels cost about
1.3 ms per step, 0.4-0.8 s over a fit of 300-600 steps, less than the stack's compile."""

_REFERENCE_BOX = 9  # any fixed size: the stack key of a component with its box size taken out


def _resized(m: SersicMorphology, size: int) -> SersicMorphology:
    """The same profile (same parameters, same sampling) on a ``size`` box."""
    return SersicMorphology(m.n, m.r_e, m.ellipticity, shape=size, oversample=m.oversample)


def _structure(tree):
    """Stack key of ``tree``: its tree structure and leaf shapes (None: not stackable)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
        return None
    return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _kind_key(comp, cache: dict):
    """Stack key of ``comp`` with its box size left out (None: not a resizable profile);
    ``cache`` maps full stack keys to it (one profile rebuilt per structure, not per source)."""
    m = comp.morphology
    if type(m) is not SersicMorphology or m.shape[0] != m.shape[1]:
        return None
    full = _structure(comp)
    if full is None:
        return None
    if full not in cache:
        cache[full] = _structure(eqx.tree_at(lambda c: c.morphology, comp, _resized(m, _REFERENCE_BOX)))
    return cache[full]


def consolidated_boxes(model: SceneModel, max_pixels: int = MERGE_BOX_PIXELS) -> SceneModel:
    """``model`` with small stacks of Sersic profiles moved up to the next box size their kind uses.

    For each kind of profile (the same structure but for the box), the box sizes
    are taken from the smallest up: the components of a size move to the next
    larger size of their kind when that adds at most ``max_pixels`` box pixels
    (counting the components moved there before). No box shrinks and none
    grows beyond the largest its kind already has.

    Parameters
    ----------
    model : SceneModel
        An unpacked scene model (one source per entry).
    max_pixels : int
        Most box pixels one move may add (:data:`MERGE_BOX_PIXELS`).

    Returns
    -------
    SceneModel
        The same model when nothing moves, else a new one with the moved
        components on their larger boxes.
    """
    sources = list(model.sources)
    kinds: dict = {}
    cache: dict = {}
    for i, src in enumerate(sources):
        for j, comp in enumerate(src.components):
            key = _kind_key(comp, cache)
            if key is not None:
                kinds.setdefault(key, {}).setdefault(comp.morphology.shape[0], []).append((i, j))
    target = {}
    for by_size in kinds.values():
        sizes = sorted(by_size)
        moving: list = []
        for s, s_next in zip(sizes[:-1], sizes[1:], strict=True):
            moving = moving + by_size[s]
            if len(moving) * (s_next**2 - s**2) <= max_pixels:
                continue  # all of them go on to s_next (and maybe further)
            for ij in moving[: len(moving) - len(by_size[s])]:
                target[ij] = s
            moving = []
        for ij in moving:
            target[ij] = sizes[-1]
    target = {ij: s for ij, s in target.items()
              if sources[ij[0]].components[ij[1]].morphology.shape[0] != s}
    if not target:
        return model
    for (i, j), s in target.items():
        comps = list(sources[i].components)
        comps[j] = eqx.tree_at(lambda c: c.morphology, comps[j], _resized(comps[j].morphology, s))
        sources[i] = eqx.tree_at(lambda src: src.components, sources[i], tuple(comps))
    return eqx.tree_at(lambda m: m.sources, model, tuple(sources))
