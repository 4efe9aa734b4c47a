"""Refit only the neighbourhood of changed sources, the rest of the scene held as a fixed image.

After the default path's later stages change a few sources of a large scene
(a bright misfit made pixels, a bulge + disk back to one Sersic), refitting
every source costs a whole optimisation of the scene for a local change (a
crowded 300-source cutout: 307 steps of 300 sources for one source made
pixels). Instead the changed sources and every source whose box overlaps
theirs are fitted against the data less the other sources' model, rendered
once on the host: the same loss as the whole scene's with those sources held
fixed (block coordinate descent), at the cost of the neighbourhood's boxes.
"""

from __future__ import annotations

import numpy as np

from ..core import GaussianLikelihood
from ._host import host_products, render_on_host

__all__ = ["LOCAL_FRACTION", "local_problem", "merged", "neighbourhood"]

LOCAL_FRACTION = 0.5
"""The neighbourhood is refitted alone when it holds at most this fraction of the sources."""


def _half_extent(src, psf_size: int) -> float:
    """Half the side of the square holding a source's boxes after PSF convolution (pixels)."""
    return max(max(c.morphology.shape) for c in src.components) / 2 + psf_size / 2


def neighbourhood(sources, changed, psf_size: int = 0) -> list[int]:
    """Indices of ``changed`` and of every source whose box overlaps one of theirs.

    Parameters
    ----------
    sources : sequence of Source
    changed : iterable of int
    psf_size : int
        Side of the model PSF (the boxes grow by it when convolved).

    Returns
    -------
    list of int
        Sorted indices.
    """
    changed = sorted(set(changed))
    c = np.array([np.asarray(s.center.value, float) for s in sources])
    r = np.array([_half_extent(s, psf_size) for s in sources])
    near = set(changed)
    for k in changed:
        d = np.abs(c - c[k]).max(axis=1)
        near.update(np.flatnonzero(d < r + r[k]).tolist())
    return sorted(near)


def local_problem(model, changed, likelihoods, psf):
    """The neighbourhood of ``changed`` as a scene of its own against the data less the rest.

    Parameters
    ----------
    model : SceneModel
        The whole scene (after the change).
    changed : iterable of int
        Indices of the sources that changed.
    likelihoods : sequence of GaussianLikelihood
        The observations (without sky models or epochs; see Returns).
    psf : array or None
        The model PSF.

    Returns
    -------
    tuple or None
        ``(indices, sub_model, sub_likelihoods)``: the neighbourhood's indices
        into ``model.sources``, its scene model and the likelihoods of the
        data less the other sources' model. None when the neighbourhood holds
        more than :data:`LOCAL_FRACTION` of the sources, or the rest cannot be
        rendered on the host or subtracted from the data (variable sources,
        epochs, a fitted sky, likelihoods other than
        :class:`~scarlet_xr.core.GaussianLikelihood`).
    """
    sources = model.sources
    # (other likelihood types, e.g. correlated noise, would not survive being rebuilt here)
    if any(type(lik) is not GaussianLikelihood or lik.sky is not None or lik.epoch is not None
           for lik in likelihoods):
        return None
    psf_size = 0 if psf is None else int(np.shape(psf)[-1])
    idx = neighbourhood(sources, changed, psf_size)
    if len(idx) > LOCAL_FRACTION * len(sources):
        return None
    keep = set(idx)
    rest = type(model)([s for k, s in enumerate(sources) if k not in keep], model.shape, psf=psf)
    products = host_products(rest)
    if products is None:
        return None
    images = render_on_host(products[2], likelihoods, rest.margin)
    if images is None:
        return None
    sub_liks = [GaussianLikelihood(np.asarray(lik.data) - im, np.asarray(lik.weights), lik.renderer)
                for lik, im in zip(likelihoods, images, strict=True)]
    sub = type(model)([sources[k] for k in idx], model.shape, psf=psf)
    return idx, sub, sub_liks


def merged(model, idx, sub, psf):
    """``model`` with the sources ``idx`` replaced by those of ``sub`` (in order).

    Parameters
    ----------
    model : SceneModel
        The whole scene.
    idx : sequence of int
        Indices into ``model.sources`` (from :func:`local_problem`).
    sub : SceneModel
        The neighbourhood's scene, one source per index.
    psf : array or None
        The model PSF.

    Returns
    -------
    SceneModel
    """
    sources = list(model.sources)
    for k, src in zip(idx, sub.sources, strict=True):
        sources[k] = src
    return type(model)(sources, model.shape, psf=psf)
