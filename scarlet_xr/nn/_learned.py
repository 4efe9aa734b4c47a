"""The learned galaxy-morphology prior shipped with the package.

``learned_prior()`` loads a :class:`~scarlet_xr.nn.ScoreNet` denoiser trained
on GalSim galaxies (``scarlet_xr/data/morphology_prior.eqx``, settings in
``morphology_prior.json``; retrain with ``python -m scarlet_xr.nn.train``) and
wraps it as an :class:`~scarlet_xr.core.AbstractPrior` for the ``image``
parameter of :class:`~scarlet_xr.core.FreeFormMorphology`.

Stamp sizes. The network sees square stamps of ``size`` (31) pixels with the
galaxy on the central pixel. A free-form image of shape ``(h, w)`` (odd, the
box anchored on the source) is first zero-padded to a square of side
``n = max(h, w)``; if ``n <= size`` it is zero-padded to ``size`` (the box
centre stays the stamp centre), otherwise it is resampled to ``size`` with
antialiased linear interpolation (centres map to centres; the galaxy looks
smaller, which the training range of sizes covers). Pixels are divided by the
stamp maximum, since training stamps have peak 1. All steps are
differentiable, so the gradient reaches every pixel of the image.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core import AbstractPrior, FreeFormMorphology, Parameter, score_line_integral
from ._network import ScoreNet

__all__ = ["LearnedMorphologyPrior", "learned_prior", "load_network", "with_morphology_prior",
           "DEFAULT_WEIGHTS"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "morphology_prior.eqx"
"""Weights shipped with the package (settings in the ``.json`` beside them)."""


@functools.lru_cache(maxsize=8)
def _load(path: str) -> ScoreNet:
    meta_path = Path(path).with_suffix(".json")
    if not Path(path).is_file() or not meta_path.is_file():
        raise ValueError(f"expected weights {path} and settings {meta_path}; at least one is missing")
    meta = json.loads(meta_path.read_text())
    skeleton = ScoreNet(int(meta["size"]), width=int(meta["width"]),
                        dilations=tuple(meta["dilations"]), key=jax.random.PRNGKey(0))
    return eqx.tree_deserialise_leaves(path, skeleton)


@functools.lru_cache(maxsize=32)
def _row_projector(n: int, size: int) -> np.ndarray:
    """Orthogonal projector onto the row space of the 1-D resampling ``n -> size``."""
    with jax.ensure_compile_time_eval():
        r = np.asarray(jax.image.resize(jnp.eye(n, dtype=jnp.float32), (size, n), method="linear",
                                        antialias=True), np.float64)
    return r.T @ np.linalg.solve(r @ r.T, r)


def _same_network(a, b) -> bool:
    """True when two networks hold identical weights (a fit rebuilds the tree, so not ``is``)."""
    if a is b:
        return True
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
                            for x, y in zip(la, lb, strict=True))


def load_network(path=None) -> ScoreNet:
    """Load a trained :class:`ScoreNet` from ``path`` (``.eqx`` plus ``.json`` beside it).

    Parameters
    ----------
    path : str or path-like, optional
        Weights file; default :data:`DEFAULT_WEIGHTS`.

    Returns
    -------
    ScoreNet

    Raises
    ------
    ValueError
        If the weights or the settings file is missing.
    """
    return _load(str(Path(DEFAULT_WEIGHTS if path is None else path).resolve()))


class LearnedMorphologyPrior(AbstractPrior):
    """Galaxy-shape prior on a non-negative image, from a trained denoiser.

    ``log_prob(x) = -|s - D(s, sigma)|^2 / (2 sigma^2) + scale term`` where
    ``s`` is the normalised stamp of ``x`` (see the module docstring) and the
    denoiser output ``D`` is held constant under differentiation, so the
    gradient with respect to ``s`` is exactly the learned score
    ``(D(s, sigma) - s) / sigma^2`` of the galaxy distribution smoothed by
    Gaussian noise of ``sigma`` (in units of the peak).

    Parameters
    ----------
    net : ScoreNet
        Trained denoiser.
    sigma : float
        Noise level at which the score is evaluated (peak units). Smaller is a
        sharper (stronger) prior.
    scale_sigma : float or None
        Width of a log-normal term on the image peak (centred on 1), which
        fixes the degeneracy between morphology and spectrum amplitude for
        sampling; ``None`` for none.
    reference : array, optional
        A ``(size, size)`` stamp (:meth:`square` of an image, not
        normalised). When given, :meth:`log_prob` is the sampling form: the
        stamp of ``x`` is divided by the *fixed* peak of ``reference``
        (instead of its own, non-smooth, maximum) and the log density is
        the exact potential ``log p(s) - log p(s_ref)``, a line integral of
        the learned score (:func:`~scarlet_xr.core.score_line_integral`).
        Value and gradient are then consistent and smooth, as Hamiltonian
        Monte Carlo needs; the gradient goes through the network (a few
        forward and backward passes per evaluation instead of one forward
        pass). With the normalisation fixed, the score itself ties the image
        amplitude to that of the reference (training stamps all have peak
        1), so the peak term is not added. :meth:`for_sampling` sets
        ``reference`` from the starting image, and
        :func:`scarlet_xr.infer.sample` calls that.
    order : int
        Gauss-Legendre nodes of that line integral.

    Notes
    -----
    Without ``reference`` (fits), the value ``-|s - D|^2 / (2 sigma^2)`` is a
    surrogate: its gradient is the learned score, which is all an optimizer
    uses, but it is not the integral of that score. Both forms give the part
    of a box larger than the stamp that the network cannot see
    (:meth:`unseen`) a Gaussian prior of the score's width; without it those
    pixels are free and fit noise.

    Measured limits (``make_scenes.py`` scenes, seed 555, as the last stage of
    :func:`scarlet_xr.fit_sources`): the maximum of this prior is not a
    typical galaxy. Followed alone from a noiseless bulge + disk galaxy, the
    score moves 23-35 % of the stamp's light out of its wings in 200 steps
    (``sigma`` 0.01; at 0.1 it inflates them instead), so fitted galaxy fluxes
    come out low (signed median -8 % at low S/N) and the parametric default
    path is more accurate on such scenes.
    """

    net: ScoreNet
    sigma: float = eqx.field(static=True, default=0.01)
    scale_sigma: float | None = eqx.field(static=True, default=1.0)
    reference: jax.Array | None = None
    order: int = eqx.field(static=True, default=2)

    def __check_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0; got {self.sigma}")

    def square(self, x: jax.Array) -> jax.Array:
        """Return image ``x`` padded or resampled to the ``(size, size)`` stamp grid (not normalised)."""
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[0] % 2 == 0 or x.shape[1] % 2 == 0:
            raise ValueError(f"image must be 2-D with odd sizes (y, x); got shape {x.shape}")
        size = self.net.size
        n = max(x.shape)
        py, px = (n - x.shape[0]) // 2, (n - x.shape[1]) // 2
        x = jnp.pad(x, ((py, py), (px, px)))
        if n <= size:
            p = (size - n) // 2
            s = jnp.pad(x, ((p, p), (p, p)))
        else:
            s = jax.image.resize(x, (size, size), method="linear", antialias=True)
        return s

    def unseen(self, x: jax.Array) -> jax.Array | None:
        """Part of image ``x`` that the resampled stamp does not see (``None`` if none).

        An image larger than the stamp is resampled onto it, a linear map
        ``R`` with a null space (``n^2 - size^2`` dimensions). This returns
        the component of the (square-padded) image in that null space,
        ``x - P x P^T`` with ``P`` the orthogonal projector onto the row
        space of the 1-D resampling matrix; the sampling form of
        :meth:`log_prob` gives it a Gaussian prior of the score's width
        (``sigma`` times the reference peak), without which those
        directions would have an improper posterior wherever the data do
        not constrain them.
        """
        x = jnp.asarray(x)
        n = max(x.shape)
        if n <= self.net.size:
            return None
        py, px = (n - x.shape[0]) // 2, (n - x.shape[1]) // 2
        x = jnp.pad(x, ((py, py), (px, px)))
        proj = jnp.asarray(_row_projector(n, self.net.size), x.dtype)
        return x - proj @ x @ proj.T

    def stamp(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return the normalised ``(size, size)`` stamp of image ``x`` and its peak."""
        s = self.square(x)
        peak = jnp.max(s)
        return s / jnp.maximum(peak, 1e-30), peak

    def log_prob(self, x):
        """Log density of image ``x``: surrogate (gradient = learned score) or, with ``reference``, exact."""
        if self.reference is not None:
            # sampling form: fixed normalisation (smooth in x), exact potential
            ref = jax.lax.stop_gradient(jnp.asarray(self.reference))
            peak = ref.max()
            s = self.square(x) / peak
            out = score_line_integral(lambda v: self.net.score(v, self.sigma), s, ref / peak, self.order)
            unseen = self.unseen(x)
            if unseen is not None:
                out = out - 0.5 * jnp.sum(unseen**2) / (self.sigma * peak) ** 2
            return out
        s, peak = self.stamp(x)
        d = jax.lax.stop_gradient(self.net.denoise(s, self.sigma))
        out = -0.5 * jnp.sum((s - d) ** 2) / self.sigma**2
        unseen = self.unseen(x)
        if unseen is not None:  # pixels of a box larger than the stamp that the network does not see
            out = out - 0.5 * jnp.sum(unseen**2) / (self.sigma * jnp.maximum(peak, 1e-30)) ** 2
        if self.scale_sigma is not None:
            out = out - 0.5 * (jnp.log(jnp.maximum(peak, 1e-30)) / self.scale_sigma) ** 2
        return out

    def score(self, x):
        """Learned score ``(D(s, sigma) - s) / sigma**2`` of the normalised stamp of ``x``."""
        s, _ = self.stamp(x)
        return self.net.score(s, self.sigma)

    def for_sampling(self, x):
        """Return this prior with ``reference`` set to the stamp of image ``x`` (see ``reference``)."""
        ref = self.square(jax.lax.stop_gradient(jnp.asarray(x)))
        return eqx.tree_at(lambda p: p.reference, self, ref, is_leaf=lambda v: v is None)

    def __scene_reference__(self):
        """How :func:`~scarlet_xr.scene.save_scene` stores this prior: ``(factory, kwargs)``.

        With the shipped weights, the factory :func:`learned_prior` and its
        arguments (no weights in the file); ``None`` for other weights (the
        network is then saved with its arrays).
        """
        if not _same_network(self.net, load_network()):
            return None
        return learned_prior, {"sigma": self.sigma, "scale_sigma": self.scale_sigma,
                               "reference": self.reference, "order": self.order}


def learned_prior(*, sigma: float = 0.01, scale_sigma: float | None = 1.0, path=None, reference=None,
                  order: int = 2) -> LearnedMorphologyPrior:
    """Return the shipped learned galaxy-morphology prior.

    Parameters
    ----------
    sigma : float
        Noise level of the score (peak units); see :class:`LearnedMorphologyPrior`.
    scale_sigma : float or None
        Width of the log-normal term on the image peak.
    path : str or path-like, optional
        Other weights (``.eqx`` with a ``.json`` beside it, as written by
        ``python -m scarlet_xr.nn.train --out``).
    reference : array, optional
        Sampling form (see :class:`LearnedMorphologyPrior`); usually set by
        :meth:`~LearnedMorphologyPrior.for_sampling`, given here so a saved
        scene restores it.
    order : int
        Gauss-Legendre nodes of the sampling form.

    Returns
    -------
    LearnedMorphologyPrior

    Examples
    --------
    >>> import numpy as np
    >>> from scarlet_xr.core import FreeFormMorphology, Parameter, Positive
    >>> prior = learned_prior()
    >>> yy, xx = np.mgrid[-7:8, -7:8]
    >>> image = np.exp(-0.5 * (yy**2 + xx**2) / 4.0)
    >>> morph = FreeFormMorphology(Parameter(image, Positive(), prior=prior))
    >>> bool(np.isfinite(morph.image.log_prior()))
    True
    """
    ref = None if reference is None else jnp.asarray(reference)
    return LearnedMorphologyPrior(load_network(path), sigma=float(sigma), scale_sigma=scale_sigma,
                                  reference=ref, order=int(order))


learned_prior.__scene_loader__ = True  # save_scene stores the shipped prior as a call of this function


def _set_prior(morph, prior):
    return eqx.tree_at(lambda m: m.image.prior, morph, prior, is_leaf=lambda v: v is None)


def with_morphology_prior(sources, prior):
    """Attach ``prior`` to the image of every :class:`FreeFormMorphology`.

    Parameters
    ----------
    sources : Scene, Source or sequence of Source
        A scene (anything with ``frame``, ``sources`` and ``add``; a new scene
        of the same type is returned), one source or a sequence of sources.
    prior : object
        Any prior a :class:`~scarlet_xr.core.Parameter` accepts, e.g.
        :func:`learned_prior`.

    Returns
    -------
    Same kind as ``sources``, with the prior set on free-form images
    (other morphologies are unchanged).
    """

    def is_free(m):
        return isinstance(m, FreeFormMorphology)

    def one(src):
        return jax.tree_util.tree_map(
            lambda m: _set_prior(m, prior) if is_free(m) else m, src,
            is_leaf=lambda m: is_free(m) or isinstance(m, Parameter),
        )

    if hasattr(sources, "frame") and hasattr(sources, "add"):
        new = type(sources)(sources.frame)
        for s in sources.sources:
            new.add(one(s))
        return new
    if isinstance(sources, (list, tuple)):
        return type(sources)(one(s) for s in sources)
    return one(sources)
