"""Sources the detection missed, found as significant peaks of a fitted scene's residual.

A detection on the coadd merges two sources a PSF width or two apart into one
peak; the fit then stretches one model over both, and the pair's fluxes are
lost together. After the first fit, the residual of every observation band
is filtered with the observed PSF's core (a Gaussian of its width), weighted
by the inverse variance and summed over bands: the signal-to-noise of a point
source of flat spectrum at each pixel. Its local maxima above
:data:`MISSING_SNR`, at least :data:`MISSING_MIN_SEPARATION` PSF widths from
every source, at least two PSF widths from masked pixels and the image's
edge (where the wing of a source outside the image peaks), and holding at
least :data:`MISSING_MODEL_FRACTION` of the model's own filtered flux at that
pixel (a bright galaxy's few-percent profile mismatch does not qualify), are
returned as candidate positions.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["missing_sources", "MISSING_SNR", "MISSING_MIN_SEPARATION", "MISSING_MODEL_FRACTION",
           "MISSING_MAX", "MISSING_MAX_SOURCES"]

MISSING_SNR = 20.0
"""Least matched-filter S/N of a residual peak for a source to be added.

The first fit is not converged and a bright galaxy's profile mismatch leaves residual peaks
a few PSF widths out: on 45 blends of the field benchmark (2048 px, seed 2027) searched with
a threshold of 6, the 22 added sources that landed on a true source had peaks of S/N 17-180
(all but two above 20), the 8 that did not 6-19."""

MISSING_MIN_SEPARATION = 1.0
"""Least distance of an added source from every source, in observed PSF widths (sigma)."""

MISSING_MODEL_FRACTION = 0.25
"""Least ratio of a residual peak's filtered flux to the model's filtered flux at that pixel."""

MISSING_MAX = 4
"""Most sources added to one scene in one pass."""

MISSING_MAX_SOURCES = 12
"""Most sources (given plus added) a scene may hold for the search (``find_missing`` of
:func:`scarlet_xr.scene.fit_sources`); scenes with more are not searched."""


def _gauss_filter(img, sigma):
    from scipy import ndimage

    return ndimage.gaussian_filter(img, sigma, mode="constant", truncate=3.0)


def missing_sources(model, likelihoods, centers, psf_width: float, *, snr: float = MISSING_SNR,
                    min_separation: float = MISSING_MIN_SEPARATION,
                    model_fraction: float = MISSING_MODEL_FRACTION, max_new: int = MISSING_MAX):
    """Positions ``(k, 2)`` (frame pixels) of significant residual peaks away from ``centers``.

    Parameters
    ----------
    model : SceneModel
        Fitted model (its cube on the frame).
    likelihoods : sequence of GaussianLikelihood
        Bound likelihoods on the frame's pixel grid (others are skipped).
    centers : array (n, 2)
        Current source centres ``(y, x)``.
    psf_width : float
        Core width (sigma, model pixels) of the observed PSF.
    snr, min_separation, model_fraction, max_new
        See :data:`MISSING_SNR`, :data:`MISSING_MIN_SEPARATION`,
        :data:`MISSING_MODEL_FRACTION`, :data:`MISSING_MAX`.

    Returns
    -------
    peaks : array (k, 2)
        Candidate centres, brightest first (``k <= max_new``).
    peak_snr : array (k,)
        Their matched-filter S/N.
    """
    from scipy import ndimage

    from ._host import host_products

    host = host_products(model)
    if host is not None:  # (the host cube has the model PSF's margin: the frame is its centre)
        my, mx = model.margin
        cube = np.asarray(host[2][:, my : host[2].shape[1] - my, mx : host[2].shape[2] - mx], float)
    else:
        cube = np.asarray(model(), float)
    sigma = max(float(psf_width), 0.5)
    # sums on the frame's grid: observations on it may cover different parts of the frame
    num, den, mod, seen = (np.zeros(cube.shape[-2:]) for _ in range(4))
    used = False
    for lik in likelihoods:
        crop = getattr(lik.renderer, "crop", None)
        if crop is None:  # resampled observations: no frame-aligned residual
            continue
        used = True
        render = getattr(lik.renderer, "render_numpy", None)
        pred = np.asarray(render(cube) if render is not None else lik.renderer(cube), float)
        data, w = np.asarray(lik.data, float), np.asarray(lik.weights, float)
        sl = (slice(crop[0], crop[1]), slice(crop[2], crop[3]))
        seen[sl] += (w > 0).sum(axis=0)
        for j in range(data.shape[0]):
            num[sl] += _gauss_filter(w[j] * (data[j] - pred[j]), sigma)
            mod[sl] += _gauss_filter(w[j] * pred[j], sigma)
            den[sl] += _gauss_filter(w[j], sigma / math.sqrt(2.0))
    if not used:
        return np.zeros((0, 2)), np.zeros(0)
    # den: sum_b w * g^2 (unnormalised g^2 = g(sigma/sqrt 2) / (4 pi sigma^2))
    norm = np.sqrt(np.maximum(den / (4.0 * math.pi * sigma**2), 1e-30))
    s = np.where(den > 0, num / norm, 0.0)
    peak = (s == ndimage.maximum_filter(s, size=3, mode="constant")) & (s > snr)
    peak &= num > model_fraction * mod  # not a bright source's profile mismatch
    # at least 2 PSF widths from masked pixels and the image's edge: the wing of a source outside
    # the image (or under a mask) peaks there in the filtered residual
    guard = 2 * math.ceil(2 * sigma) + 1
    peak &= ndimage.minimum_filter(seen, size=guard, mode="constant") > 0
    yy, xx = np.nonzero(peak)
    order = np.argsort(-s[yy, xx])
    out, vals = [], []
    c = np.atleast_2d(np.asarray(centers, float))
    for i in order:
        p = np.array([yy[i], xx[i]], float)
        taken = np.concatenate([c, np.asarray(out).reshape(-1, 2)]) if out else c
        if taken.size and np.min(np.hypot(*(taken - p).T)) < min_separation * sigma:
            continue
        out.append(p)
        vals.append(float(s[yy[i], xx[i]]))
        if len(out) >= max_new:
            break
    peaks = np.asarray(out, float).reshape(-1, 2)
    return peaks, np.asarray(vals, float)
