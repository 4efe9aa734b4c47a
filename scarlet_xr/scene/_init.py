"""Initialise sources from positions: boxes from the data, spectra by least squares."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..core import (
    ConvolutionRenderer,
    FreeFormMorphology,
    GaussianMorphology,
    MonotonicMorphology,
    PointSourceMorphology,
    SersicMorphology,
    Source,
    Spectrum,
    morphology_image,
    psf_core_width,
)
from ..wcs import Frame
from ..xr import BAND, grid_offset, likelihood_for, normalize_observations, observation_wcs

__all__ = ["initialize_sources", "detection_image", "BOX_SIZES"]

BOX_SIZES = (11, 15, 21, 27, 35, 45, 59, 75, 95, 121, 151, 191, 241)
"""Canonical box sizes: free-form boxes are rounded up to one of these so that
scenes share compiled shapes."""

KINDS = ("free", "monotonic", "symmetric", "point", "sersic", "gaussian")


def _canonical(size: int) -> int:
    for s in BOX_SIZES:
        if s >= size:
            return s
    return size + 1 - size % 2


def detection_image(observations, frame: Frame):
    """Inverse-variance weighted coadd of all observations on the frame's grid.

    Observations on the frame's pixel grid are added directly. Observations
    on other grids (multi-instrument frames) are reprojected with
    ``reproject`` (bilinear; not differentiable, only used to initialise):
    their band coadd is converted to flux per model pixel and weighted by
    ``w * A_obs / A_model``, the inverse variance of an independent model
    pixel carrying the same signal-to-noise per unit area.

    Returns
    -------
    det : array (y, x)
        Coadd (mean flux per band and model pixel, weighted).
    sigma : float
        Typical noise of the coadd per pixel.
    valid : bool array (y, x)
        Pixels with positive weight in at least one band.
    """
    num = np.zeros(frame.shape)
    den = np.zeros(frame.shape)
    var = np.zeros(frame.shape)
    hh, ww = frame.shape
    for ds in normalize_observations(observations).values():
        d = ds["data"].values.astype(float)
        w = ds["weight"].values.astype(float)
        origin = grid_offset(ds, frame)
        if origin is not None:
            oy, ox = origin
            ny, nx = d.shape[1:]
            fy0, fx0, fy1, fx1 = max(oy, 0), max(ox, 0), min(oy + ny, hh), min(ox + nx, ww)
            if fy1 <= fy0 or fx1 <= fx0:
                continue
            sl = (slice(fy0, fy1), slice(fx0, fx1))
            osl = (slice(fy0 - oy, fy1 - oy), slice(fx0 - ox, fx1 - ox))
            num[sl] += (d * w).sum(0)[osl]
            den[sl] += w.sum(0)[osl]
            var[sl] += w.sum(0)[osl]
            continue
        sw = w.sum(0)
        coadd = np.where(sw > 0, (d * w).sum(0) / np.where(sw > 0, sw, 1.0), 0.0)
        area = _pixel_area_ratio(ds, frame)
        cm, wm = _reproject_to_frame(ds, frame, [coadd, sw])
        wm = np.clip(wm, 0.0, None)
        # flux per model pixel cm / area, weight wm * area
        num += cm * wm
        den += wm * area
        var += wm
    valid = den > 0
    det = np.where(valid, num / np.where(valid, den, 1), 0.0)
    noise = np.sqrt(var[valid]) / den[valid]
    sigma = float(np.median(noise)) if valid.any() else 1.0
    return det, sigma, valid


def _pixel_area_ratio(ds, frame) -> float:
    """Observation pixel area in model pixels."""
    from astropy.wcs.utils import proj_plane_pixel_area

    wo = observation_wcs(ds)
    return float(proj_plane_pixel_area(wo) / proj_plane_pixel_area(frame.wcs))


def _reproject_to_frame(ds, frame, images):
    """Bilinear reprojection of observation-grid images onto the frame (0 outside)."""
    from reproject import reproject_interp

    wo = observation_wcs(ds)
    if frame.wcs is None or wo is None:
        raise ValueError("observations on different grids need a WCS (frame and observation)")
    out = []
    for im in images:
        arr, foot = reproject_interp(
            (np.asarray(im, float), wo), frame.wcs, shape_out=frame.shape, order="bilinear"
        )
        out.append(np.where((foot > 0) & np.isfinite(arr), arr, 0.0))
    return out


def _owned(shape, centers, i):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = [(yy - c[0]) ** 2 + (xx - c[1]) ** 2 for c in centers]
    return np.argmin(np.stack(d), axis=0) == i if len(centers) > 1 else np.ones(shape, bool)


def _box_radius(det, sigma, owned, valid, iy, ix, rmax):
    yy, xx = np.mgrid[: det.shape[0], : det.shape[1]]
    r = np.hypot(yy - iy, xx - ix)
    sel = owned & valid
    for k in range(2, rmax + 1):
        ann = sel & (r >= k - 0.5) & (r < k + 0.5)
        if not ann.any():
            return k
        if np.mean(det[ann]) < 1.0 * sigma:
            return k
    return rmax


def initialize_sources(
    frame: Frame,
    observations,
    centers,
    *,
    kinds="free",
    names=None,
    min_box: int = 11,
    max_box: int = 121,
) -> list[Source]:
    """Create sources at ``centers`` initialised from the data.

    Free-form morphologies start from the detection image inside a box sized
    by the source's radial profile (grown until the profile drops below half
    the noise, restricted to pixels closer to this source than to any other),
    rounded up to :data:`BOX_SIZES`. Spectra of all sources are then solved
    jointly per band by non-negative least squares against the data, with the
    rendered (PSF-matched) morphologies as templates — a PSF-weighted peak
    estimate that accounts for overlaps. Spectra that come out 0 are set to a
    small positive floor (the positive constraint needs > 0).

    Called inside ``with scene:``, the sources are added to that scene.

    Parameters
    ----------
    frame : Frame
    observations : Dataset, sequence or mapping of Datasets
    centers : array (n, 2)
        ``(y, x)`` in model-frame pixels.
    kinds : str or sequence of str
        ``"free"`` (free-form, positive), ``"monotonic"`` (free-form, radially
        non-increasing from the centre), ``"symmetric"`` (monotonic and
        180-degree symmetric), ``"point"``, ``"sersic"`` or ``"gaussian"``.
    names : sequence of str, optional
    min_box, max_box : int
        Limits of free-form box sizes.

    Returns
    -------
    list of Source

    Raises
    ------
    ValueError
        If a centre lies outside the frame, on a pixel masked in every band,
        or on an empty pixel (no positive flux in the detection image).
    """
    obs = normalize_observations(observations)
    centers = np.atleast_2d(np.asarray(centers, float))
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers must have shape (n, 2) as (y, x); got {centers.shape}")
    n = len(centers)
    if isinstance(kinds, str):
        kinds = [kinds] * n
    kinds = list(kinds)
    if len(kinds) != n:
        raise ValueError(f"expected {n} kinds; got {len(kinds)}")
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown source kind {k!r}; expected one of {KINDS}")
    names = [f"src{i}" for i in range(n)] if names is None else [str(s) for s in names]
    det, sigma, valid = detection_image(obs, frame)
    psf_s2 = _observed_psf_variance(obs, frame)
    hh, ww = frame.shape
    morphs = []
    images = []
    for i, (cy, cx) in enumerate(centers):
        if not (np.isfinite(cy) and np.isfinite(cx)):
            raise ValueError(f"source {i}: centre must be finite; got ({cy}, {cx})")
        iy, ix = int(round(cy)), int(round(cx))
        if not (0 <= iy < hh and 0 <= ix < ww):
            raise ValueError(
                f"source {i}: centre (y={cy:.2f}, x={cx:.2f}) lies outside the frame "
                f"(0..{hh - 1}, 0..{ww - 1})"
            )
        if not valid[iy, ix]:
            raise ValueError(
                f"source {i}: centre (y={cy:.2f}, x={cx:.2f}) sits on a pixel masked in every band"
            )
        ys = slice(max(iy - 1, 0), iy + 2)
        xs = slice(max(ix - 1, 0), ix + 2)
        peak = float(np.max(np.where(valid[ys, xs], det[ys, xs], -np.inf)))
        if not peak > 0:
            raise ValueError(
                f"source {i}: centre (y={cy:.2f}, x={cx:.2f}) sits on an empty pixel "
                f"(detection-image peak {peak:.3g} <= 0)"
            )
        kind = kinds[i]
        if kind == "point":
            morphs.append(PointSourceMorphology(frame.psf))
            images.append(_np_shift(morphs[-1].psf, (cy - iy, cx - ix)))
            continue
        owned = _owned(frame.shape, centers, i)
        rmax = max_box // 2
        r = _box_radius(det, sigma, owned, valid, iy, ix, rmax)
        size = min(_canonical(max(min_box, 2 * int(math.ceil(1.2 * r)) + 1)), max_box)
        if kind in ("free", "monotonic", "symmetric"):
            h = size // 2
            cut = np.zeros((size, size))
            y0, y1 = max(iy - h, 0), min(iy + h + 1, hh)
            x0, x1 = max(ix - h, 0), min(ix + h + 1, ww)
            keep = valid[y0:y1, x0:x1] if kind != "free" else owned[y0:y1, x0:x1] & valid[y0:y1, x0:x1]
            sub = np.where(keep, det[y0:y1, x0:x1], 0.0)
            cut[y0 - iy + h : y1 - iy + h, x0 - ix + h : x1 - ix + h] = sub
            cut = np.clip(cut, 0, None) / peak
            if kind == "free":
                cut = np.clip(cut, 1e-3, None)
                morphs.append(FreeFormMorphology(cut))
                images.append(cut)
            else:
                # 180-degree symmetric minimum removes neighbours' light; the
                # monotonic parameterisation then clips what increases outwards
                cut = np.minimum(cut, cut[::-1, ::-1])
                morphs.append(MonotonicMorphology(cut, symmetric=kind == "symmetric"))
                images.append(np.asarray(morphs[-1](np.zeros(2))))
        else:
            # size from second moments of the owned pixels
            yy, xx = np.mgrid[:hh, :ww]
            m = owned & valid & (np.hypot(yy - iy, xx - ix) <= r)
            wts = np.clip(det, 0, None) * m
            s2 = float(np.sum(wts * ((yy - cy) ** 2 + (xx - cx) ** 2)) / max(wts.sum(), 1e-30) / 2)
            # the detection image is seen through the observations' PSFs: remove their width
            s = max(math.sqrt(max(s2 - psf_s2, 0.25)), 0.7)
            if kind == "gaussian":
                morphs.append(GaussianMorphology(s, shape=size))
            else:
                morphs.append(SersicMorphology(1.0, 1.18 * s, shape=size))
            offset = jnp.asarray([cy - iy, cx - ix], jnp.asarray(0.0).dtype)
            intrinsic = np.asarray(morphology_image(morphs[-1], offset))
            images.append(_np_convolve(intrinsic, frame.psf))
    spectra = _solve_spectra(frame, obs, centers, images)
    sources = []
    for i in range(n):
        sources.append(Source(centers[i], Spectrum(spectra[i]), morphs[i], name=names[i]))
    return sources


def _observed_psf_variance(obs, frame) -> float:
    """Squared core width (model pixels) of the observations' PSFs, median over bands.

    Observations on other pixel grids count through the model PSF width only.
    """
    widths = [
        psf_core_width(ds["psf"].values)
        for ds in obs.values()
        if grid_offset(ds, frame) is not None
    ]
    if not widths:
        return float(frame.psf_sigma) ** 2
    return float(np.median(np.concatenate(widths)) ** 2)


def _np_shift(image, shift):
    """Sub-pixel Fourier shift in numpy (mirrors :func:`scarlet_xr.core.fourier_shift`)."""
    h, w = image.shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    phase = np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1]))
    return np.fft.irfft2(np.fft.rfft2(image) * phase, s=(h, w))


def _np_convolve(image, kernel):
    """'Same'-size convolution of an image with an odd, centred kernel (numpy FFT)."""
    h, w = image.shape
    kh, kw = kernel.shape
    shape = (h + kh, w + kw)
    out = np.fft.irfft2(
        np.fft.rfft2(image, s=shape) * np.fft.rfft2(kernel, s=shape), s=shape
    )
    return out[kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w]


def _template_plane(shape, center, image):
    """``image`` placed on a zero plane of ``shape`` centred on the pixel nearest ``center``."""
    hh, ww = shape
    h, w = image.shape
    iy, ix = int(round(center[0])), int(round(center[1]))
    plane = np.zeros((hh, ww))
    y0, x0 = iy - h // 2, ix - w // 2
    ys0, xs0 = max(y0, 0), max(x0, 0)
    ys1, xs1 = min(y0 + h, hh), min(x0 + w, ww)
    if ys1 > ys0 and xs1 > xs0:
        plane[ys0:ys1, xs0:xs1] = image[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]
    return plane


def _template(frame, center, image):
    """Unit-spectrum cube (band, y, x) of one morphology image placed on the frame."""
    plane = _template_plane(frame.shape, center, image)
    return np.broadcast_to(plane, (len(frame.bands),) + plane.shape)


def _render_np(renderer, cube):
    """Apply a renderer to a cube ``(..., band, y, x)``; numpy for plain convolutions.

    Renderers with a ``render_numpy`` twin (resampling) use it; others run
    eagerly in JAX on the whole batch.
    """
    if isinstance(renderer, ConvolutionRenderer):
        idx = list(renderer.band_index)
        spec = np.fft.rfft2(cube[..., idx, :, :], s=renderer.fft_shape)
        out = np.fft.irfft2(spec * np.asarray(renderer.kernel_fft), s=renderer.fft_shape)
        y0, y1, x0, x1 = renderer.crop
        return out[..., y0:y1, x0:x1]
    if hasattr(renderer, "render_numpy"):
        return renderer.render_numpy(cube)
    return np.asarray(renderer(jnp.asarray(cube, jnp.asarray(0.0).dtype)), float)


def _nnls(a, y, maxiter):
    from scipy.optimize import nnls  # lazy: scipy.optimize is heavy to import

    return nnls(a, y, maxiter=maxiter)


def _solve_spectra(frame, obs, centers, images):
    """Joint non-negative least squares for all spectra, per observation band."""
    nb = len(frame.bands)
    n = len(images)
    templates = np.stack([_template(frame, c, im) for c, im in zip(centers, images, strict=True)])
    spectra = np.zeros((n, nb))
    counts = np.zeros(nb)
    for ds in obs.values():
        lik = likelihood_for(ds, frame)
        rendered = _render_np(lik.renderer, templates)
        d = np.asarray(lik.data, float)
        sw = np.sqrt(np.asarray(lik.weights, float))
        for j, b in enumerate(frame.band_index([str(s) for s in ds[BAND].values])):
            a = np.stack([(r[j] * sw[j]).ravel() for r in rendered], axis=1)
            y = (d[j] * sw[j]).ravel()
            sol, _ = _nnls(a, y, maxiter=50 * n)
            spectra[:, b] += sol
            counts[b] += 1
    spectra /= np.maximum(counts, 1)
    floor = 1e-3 * np.maximum(spectra.max(axis=0, keepdims=True), 1e-12)
    return np.maximum(spectra, floor)
