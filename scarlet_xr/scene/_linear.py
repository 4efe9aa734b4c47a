"""Linear flux solve: with the morphologies fixed, the spectra are linear parameters.

Every component's morphology image (after the model PSF) is rendered into
every observation once, on its own box only; per frame band the weighted normal
equations of all observations are summed and solved for the amplitudes
(non-negative least squares). This is the exact conditional maximum-likelihood
flux given the shapes, free of optimizer noise, and its inverse normal matrix
is the flux covariance conditional on the shapes.
"""

from __future__ import annotations

import equinox as eqx
import numpy as np

from ..core import SceneModel, Spectrum, morphology_images, to_device
from ._init import _gram, _np_convolve, _render_stamps, _stamp

__all__ = ["LinearSolution", "solve_linear", "set_spectra"]


def _component_stamps(model: SceneModel, psf) -> list:
    """Each component's morphology as a stamp on the frame (see :func:`._init._stamp`).

    Intrinsic profiles are convolved with the model PSF: the model cube is
    ``sum_c spectrum_c[:, None, None] * image_c[None]``, so these images are
    the templates of a linear flux solve. Each stays in its own box (clipped
    to the frame); none is placed on a full frame.
    """
    _, hh, ww = model.shape
    psf = None if model.psf_fft is None or psf is None else np.asarray(psf, float)
    images = iter(morphology_images(model))
    out = []
    for src in model.sources:
        center = np.asarray(src.center.value, float)
        for comp in src.components:
            img = np.asarray(next(images), float)
            if comp.morphology.intrinsic and psf is not None:
                img = _np_convolve(img, psf)
            out.append(_stamp((hh, ww), center, img, model.margin if psf is not None else (0, 0)))
    return out


class LinearSolution(eqx.Module):
    """Result of :func:`solve_linear`.

    Attributes
    ----------
    amplitudes : numpy.ndarray (component, band)
        Non-negative spectrum values per component.
    flux : numpy.ndarray (component, band)
        Flux of each component inside its box: ``amplitude * sum(box)``.
    flux_variance : numpy.ndarray (component, band)
        Variance of ``flux`` from the inverse normal matrix (conditional on
        the morphologies; a component with an empty template gets ``inf``).
    chi2 : numpy.ndarray (band,)
        ``sum w (d - m)^2`` per frame band at the solution.
    """

    amplitudes: np.ndarray
    flux: np.ndarray
    flux_variance: np.ndarray
    chi2: np.ndarray


def _normal_equations(stamps, likelihoods, shape):
    """Normal matrices ``(band, c, c)``, right-hand sides ``(band, c)`` and ``sum w d^2``.

    Each template is rendered only on its box (plus the kernel's reach); an
    entry between two templates sums over the overlap of their boxes.
    """
    nc = len(stamps)
    num_bands = shape[0]
    a = np.zeros((num_bands, nc, nc))
    rhs = np.zeros((num_bands, nc))
    dd = np.zeros(num_bands)
    for lik in likelihoods:
        patches = _render_stamps(lik.renderer, stamps, shape)
        band_index = getattr(lik.renderer, "band_index", tuple(range(lik.data.shape[0])))
        la, lr, ld = _gram(patches, lik.data, lik.weights, band_index, num_bands)
        a += la
        rhs += lr
        dd += ld
    return a, rhs, dd


def _solve_band(a, rhs):
    """Minimise ``x^T a x - 2 x^T rhs`` subject to ``x >= 0``; also return the covariance.

    Active set: the most negative unknown of the unconstrained solution is
    fixed at 0 and the rest solved again, until none is negative (exact for
    the few, mostly positive, unknowns of a blend). Unknowns with an empty
    template stay 0 (infinite variance); unknowns solved to 0 keep their
    unconstrained variance. Dropping an unknown updates the inverse in
    ``O(n^2)`` (its Schur complement; inverted afresh every
    :data:`REINVERT_EVERY` drops) instead of inverting again: a crowded scene's
    hundreds of components drop dozens of unknowns per band.
    """
    n = a.shape[0]
    x = np.zeros(n)
    cov = np.zeros((n, n))
    idx = np.flatnonzero(np.diag(a) > 0)
    if idx.size == 0:
        return x, cov
    minv, scale = _scaled_inverse(a[np.ix_(idx, idx)])
    first, drops = True, 0
    while True:
        inv = minv / np.outer(scale, scale)
        if first:  # unknowns that end at 0 keep the variance they have in the unconstrained problem
            cov[np.ix_(idx, idx)] = inv
            first = False
        sol = inv @ rhs[idx]
        if np.all(sol >= 0):
            x[idx] = sol
            cov[np.ix_(idx, idx)] = inv
            return x, cov
        i = int(np.argmin(sol))
        keep = np.arange(idx.size) != i
        idx = idx[keep]
        if idx.size == 0:
            return x, cov
        drops += 1
        if drops % REINVERT_EVERY == 0:
            minv, scale = _scaled_inverse(a[np.ix_(idx, idx)])
        else:
            minv = minv[np.ix_(keep, keep)] - np.outer(minv[keep, i], minv[i, keep]) / minv[i, i]
            scale = scale[keep]


REINVERT_EVERY = 16
"""The active-set solve inverts its normal matrix afresh after this many rank-one downdates."""


def _scaled_inverse(sub):
    """``(inverse of S + 1e-10 I, scale)`` where ``sub = diag(scale) S diag(scale)`` and ``S`` has a unit
    diagonal (scaled for conditioning)."""
    scale = np.sqrt(np.diag(sub))
    return np.linalg.inv(sub / np.outer(scale, scale) + 1e-10 * np.eye(len(scale))), scale


def solve_linear(model: SceneModel, likelihoods, psf=None) -> LinearSolution:
    """Solve all component spectra by linear least squares with the shapes fixed.

    Parameters
    ----------
    model : SceneModel
        Supplies the morphologies and centres (its spectra are ignored).
    likelihoods : sequence of GaussianLikelihood
        One per observation (their renderers map the frame into each).
    psf : array (h, w), optional
        The model-frame PSF (``frame.psf``) applied to intrinsic profiles.

    Returns
    -------
    LinearSolution
    """
    stamps = _component_stamps(model, psf)
    sums = np.asarray(_box_sums(model), float)
    nc = len(stamps)
    num_bands = model.shape[0]
    a, rhs, dd = _normal_equations(stamps, likelihoods, model.shape)
    amp = np.zeros((nc, num_bands))
    fvar = np.full((nc, num_bands), np.inf)
    chi2 = np.zeros(num_bands)
    for b in range(num_bands):
        x, cov = _solve_band(a[b], rhs[b])
        amp[:, b] = x
        chi2[b] = dd[b] - 2 * x @ rhs[b] + x @ a[b] @ x
        var = np.diag(cov)
        fvar[:, b] = np.where(var > 0, np.clip(var, 0, None) * sums**2, np.inf)
    flux = amp * sums[:, None]
    return LinearSolution(amplitudes=amp, flux=flux, flux_variance=fvar, chi2=chi2)


def _box_sums(model: SceneModel):
    """Flux inside each component's box for a unit spectrum (as ``Component.flux``)."""
    return [float(np.sum(img, dtype=float)) for img in morphology_images(model, centered=True)]


def set_spectra(model: SceneModel, amplitudes, *, floor: float = 1e-6) -> SceneModel:
    """Return ``model`` with every component's spectrum set to ``amplitudes`` (component, band).

    Values are floored at ``floor`` times the band maximum (positive
    spectra); steps and priors of the spectra are kept.
    """
    amplitudes = np.asarray(amplitudes, float)
    top = np.maximum(amplitudes.max(axis=0, keepdims=True), 1e-30)
    amplitudes = np.maximum(amplitudes, floor * top)
    k = 0
    sources = []
    for src in model.sources:
        comps = []
        for comp in src.components:
            spec = comp.spectrum
            if isinstance(spec, Spectrum):
                p = spec.values
                new = Spectrum(amplitudes[k], step=p.step, prior=p.prior, fixed=p.fixed)
                new = eqx.tree_at(
                    lambda s: s.values.raw, new, to_device(new.values.raw, p.raw.dtype)
                )
                comp = eqx.tree_at(lambda c: c.spectrum, comp, new)
            comps.append(comp)
            k += 1
        sources.append(eqx.tree_at(lambda s: s.components, src, tuple(comps)))
    return eqx.tree_at(lambda m: m.sources, model, tuple(sources))
