"""Measurements of a fitted scene: catalog quantities and deblended images.

:func:`measure_scene` renders each source alone (and the derivatives of its
model with respect to position and size) into every observation and hands
the arrays to the numpy functions of :mod:`scarlet_xr.xr._measure`; the
conventions (moments, PSF treatment, what the uncertainties are conditional
on) are documented there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..xr import likelihood_for, normalize_observations
from ..xr import (
    FLAGS,
    MASKED_FRACTION_LIMIT,
    deblend_images,
    fisher_covariance,
    footprints,
    half_light_radius,
    image_moments,
    resolve_zero_points,
    shape_from_moments,
)

__all__ = ["Measurements", "measure_scene"]

log = logging.getLogger(__name__)

_CHUNK = 8  # cubes rendered per compiled call (padded: one compile per observation grid)


@dataclass
class Measurements:
    """Per-source measurements and per-observation deblended images.

    Attributes
    ----------
    sources : dict
        ``{name: (dims, values, attrs)}`` for the ``/sources`` node.
    deblended : dict
        ``{observation name: xarray.Dataset}`` with ``image (source, band,
        y, x)``, ``footprint (source, y, x)``, ``segmentation (y, x)`` and
        ``blendedness (source)``.
    """

    sources: dict = field(default_factory=dict)
    deblended: dict = field(default_factory=dict)


@eqx.filter_jit
def _render_sources(model):
    return model.render_sources()


@eqx.filter_jit
def _render_chunk(renderer, cubes):
    return jax.vmap(renderer)(cubes)


def _render_all(renderer, cubes: np.ndarray) -> np.ndarray:
    """Render ``cubes (n, band, y, x)`` through ``renderer`` in fixed-size chunks."""
    n = cubes.shape[0]
    out = []
    for i in range(0, n, _CHUNK):
        part = cubes[i : i + _CHUNK]
        if part.shape[0] < _CHUNK:
            pad = np.zeros((_CHUNK - part.shape[0],) + part.shape[1:], part.dtype)
            part = np.concatenate([part, pad])
        r = np.asarray(_render_chunk(renderer, jnp.asarray(part)), np.float32)
        out.append(r[: min(_CHUNK, n - i)])
    return np.concatenate(out)


def _shape_templates(per_source, centroid):
    """Derivatives of each source model: shift in y, shift in x, flux-conserving dilation.

    Returns ``(3 * source, band, y, x)`` ordered ``(dy_0, dx_0, ds_0, dy_1, ...)``.
    """
    gy, gx = np.gradient(per_source, axis=(2, 3))
    h, w = per_source.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    out = []
    for k in range(per_source.shape[0]):
        cy, cx = centroid[k] if np.all(np.isfinite(centroid[k])) else (h / 2, w / 2)
        dil = -(2 * per_source[k] + (yy - cy) * gy[k] + (xx - cx) * gx[k])
        out.extend([-gy[k], -gx[k], dil])
    return np.stack(out).astype(np.float32)


def _unit_shapes(per_source, model_flux):
    """Each source's band-summed shape at unit flux, in every band ``(source, band, y, x)``."""
    white = per_source.sum(axis=1)
    tot = np.asarray(model_flux, float).sum(axis=1)
    norm = np.where(tot > 0, tot, np.nan)
    unit = white / norm[:, None, None]
    unit = np.nan_to_num(unit)
    return np.broadcast_to(unit[:, None], per_source.shape).astype(np.float32)


def _fisher_blocks(obs_list, ns, nb):
    ff = np.zeros((nb, ns, ns))
    fs = np.zeros((nb, ns, 3 * ns))
    ss = np.zeros((3 * ns, 3 * ns))
    for unit, shape, w, band_index in obs_list:
        npix = w.shape[-1] * w.shape[-2]
        u = unit.reshape(ns, len(band_index), npix)
        s = shape.reshape(3 * ns, len(band_index), npix)
        wf = w.reshape(len(band_index), npix)
        for j, b in enumerate(band_index):
            uj = u[:, j].astype(np.float64)
            sj = s[:, j].astype(np.float64)
            uw = uj * wf[j]
            ff[b] += uw @ uj.T
            fs[b] += uw @ sj.T
            ss += (sj * wf[j]) @ sj.T
    return {"ff": ff, "fs": fs, "ss": ss}


def _noise_of_sum(weight) -> float:
    """Per-pixel noise of the band-summed image (median variance of each band)."""
    var = []
    for wb in weight:
        good = wb[wb > 0]
        if good.size:
            var.append(float(np.median(1.0 / good)))
    return float(np.sqrt(np.sum(var))) if var else 0.0


def measure_scene(scene, observations, *, zero_points=None, per_source=None, model_flux=None) -> Measurements:
    """Measure every source of a fitted scene on its observations.

    Parameters
    ----------
    scene : Scene
        A fitted scene (its ``measured_flux``, when set by
        :func:`~scarlet_xr.scene.fit_sources`, is the reported flux; otherwise
        the flux of the model).
    observations : Dataset, sequence or mapping of Datasets
        The observations the scene was fit to.
    zero_points : float, sequence or dict, optional
        AB zero point(s): ``mag = zp - 2.5 log10(flux)``. One number for all
        bands, one per frame band, or ``{band: zp}``. Default: the
        observations' ``attrs['zero_point']`` (read from FITS headers), else
        no magnitudes.
    per_source, model_flux : arrays, optional
        The scene's per-source model cube ``(source, band, y, x)`` and model
        fluxes ``(source, band)`` when already computed (saves a render).

    Returns
    -------
    Measurements
    """
    obs = normalize_observations(observations)
    frame = scene.frame
    model = scene.model()
    ns, nb = len(scene.sources), len(frame.bands)
    if per_source is None:
        per_source = _render_sources(model)
    per_source = np.asarray(per_source, np.float64)  # (source, band, y, x), model PSF
    model_flux = np.asarray(model.fluxes() if model_flux is None else model_flux, np.float64)
    flux = model_flux if scene.measured_flux is None else np.asarray(scene.measured_flux, float)
    kinds = [s.kind for s in scene.sources]
    extended = np.array([k != "point" for k in kinds])

    # -- shapes on the model frame (model PSF subtracted from the moments) --------------
    white = per_source.sum(axis=1)
    _, centroid, second = image_moments(white)
    _, _, psf_second = image_moments(np.asarray(frame.psf, float)[None])
    e1, e2, theta, _ = shape_from_moments(second, psf_second[0])
    psf_img = np.asarray(frame.psf, float)
    pc = np.array([[(psf_img.shape[0] - 1) / 2, (psf_img.shape[1] - 1) / 2]])
    r_psf = float(half_light_radius(psf_img[None], pc)[0])
    r_obs = half_light_radius(white, centroid)
    r_half = np.sqrt(np.clip(r_obs**2 - r_psf**2, 0, None))
    for k in np.flatnonzero(~extended):
        e1[k] = e2[k] = theta[k] = r_half[k] = 0.0

    # -- per observation: models, templates, deblended images ----------------------------
    unit = _unit_shapes(per_source, model_flux)
    shape_t = _shape_templates(per_source, centroid)
    fisher_in, deblended = [], {}
    masked_px = np.zeros(ns)
    foot_px = np.zeros(ns)
    edge = np.zeros(ns, bool)
    blendedness = None
    for name, ds in obs.items():
        renderer = likelihood_for(ds, frame).renderer
        rendered = _render_all(renderer, np.concatenate([per_source.astype(np.float32), unit, shape_t]))
        m_k, u_k, s_k = rendered[:ns], rendered[ns : 2 * ns], rendered[2 * ns :]
        w = np.asarray(ds["weight"].values, np.float64)
        data = np.asarray(ds["data"].values, np.float64)
        band_index = list(getattr(renderer, "band_index", frame.band_index(list(ds["band"].values))))
        fisher_in.append((u_k, s_k, w, band_index))
        fp = footprints(m_k, _noise_of_sum(w))
        masked = (w <= 0).mean(axis=0)  # fraction of bands masked per pixel
        masked_px += np.einsum("kij,ij->k", fp.astype(float), masked)
        foot_px += fp.sum(axis=(1, 2))
        border = np.zeros(fp.shape[1:], bool)
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
        edge |= np.any(fp & border[None], axis=(1, 2))
        summed = np.clip(m_k, 0, None).sum(axis=1)
        total = summed.sum(axis=0)
        own = np.einsum("kij,kij->k", fp.astype(float), summed)
        all_in = np.einsum("kij,ij->k", fp.astype(float), total)
        blend = np.where(all_in > 0, 1 - own / np.where(all_in > 0, all_in, 1), np.nan)
        if blendedness is None:
            blendedness = blend
        score = np.where(fp, summed, -np.inf)
        seg = np.where(fp.any(axis=0), np.argmax(score, axis=0), -1).astype(np.int32)
        images = deblend_images(data, m_k).astype(np.float32)
        coords = {"source": np.arange(ns), "band": ds["band"].values, "y": ds["y"].values,
                  "x": ds["x"].values}
        node = xr.Dataset(
            {
                "image": (("source", "band", "y", "x"), images, {
                    "description": "data * model_k / sum_j model_j (sums to the data where the model "
                                   "is positive)"}),
                "footprint": (("source", "y", "x"), fp, {
                    "description": "pixels where the source's band-summed model exceeds min(0.5 sigma "
                                   "of the band-summed noise, 5% of its peak)"}),
                "segmentation": (("y", "x"), seg, {
                    "description": "index of the source with the largest model among those whose "
                                   "footprint covers the pixel; -1 for none"}),
                "blendedness": ("source", blend, {
                    "description": "share of the model flux in the source's footprint that belongs to "
                                   "other sources"}),
            },
            coords=coords,
            attrs={k: v for k, v in ds.attrs.items() if k in ("name", "wcs_header")},
        )
        deblended[str(name)] = node
    flux_var, center_cov = fisher_covariance(_fisher_blocks(fisher_in, ns, nb), ns, nb, extended)
    flux_err = np.sqrt(flux_var)
    masked_fraction = np.where(foot_px > 0, masked_px / np.maximum(foot_px, 1), np.nan)

    # -- flags -----------------------------------------------------------------------------
    flags = np.zeros(ns, np.int64)
    for k, c in enumerate(scene.choices or []):
        if c.get("box_truncated"):
            flags[k] |= FLAGS["BOX_TRUNCATED"]
    flags[edge] |= FLAGS["EDGE"]
    flags[np.nan_to_num(masked_fraction) > MASKED_FRACTION_LIMIT] |= FLAGS["MASKED"]
    status = getattr(scene.history, "status", "")
    if status == "max_steps":
        flags |= FLAGS["NOT_CONVERGED"]
    elif status == "diverged":
        flags |= FLAGS["DIVERGED"]
    flags[np.any(~(flux > 0), axis=1)] |= FLAGS["FLUX_NONPOSITIVE"]
    flags[foot_px == 0] |= FLAGS["NO_FOOTPRINT"]

    # -- assemble ----------------------------------------------------------------------------
    oy, ox = (float(o) for o in frame.origin)
    y_err = np.sqrt(center_cov[:, 0, 0])
    x_err = np.sqrt(center_cov[:, 1, 1])
    out = {
        "y": ("source", centroid[:, 0] + oy, {"units": "pix", "description":
              "light-weighted centroid of the model, model-frame row"}),
        "x": ("source", centroid[:, 1] + ox, {"units": "pix", "description":
              "light-weighted centroid of the model, model-frame column"}),
        "y_err": ("source", y_err, {"units": "pix", "description": "1-sigma error of y (Fisher)"}),
        "x_err": ("source", x_err, {"units": "pix", "description": "1-sigma error of x (Fisher)"}),
        "flux": (("source", "band"), flux, {"description": _flux_text(scene)}),
        "flux_err": (("source", "band"), flux_err, {"description":
                     "1-sigma flux error from the Fisher matrix at the fit, marginalised over every "
                     "source's centre and size and all blended neighbours' fluxes; conditional on the "
                     "rest of each shape (profile, ellipticity)"}),
        "snr": (("source", "band"), flux / flux_err, {"description": "flux / flux_err"}),
        "r_half_pix": ("source", r_half, {"units": "pix", "description":
                       "half-light radius of the model before the PSF (circular, model-frame pixels)"}),
        "e1": ("source", e1, {"description": "(Ixx - Iyy) / (Ixx + Iyy) of the model before the PSF"}),
        "e2": ("source", e2, {"description": "2 Ixy / (Ixx + Iyy) of the model before the PSF"}),
        "theta": ("source", theta, {"units": "deg", "description":
                  "major-axis angle from +x towards +y (pixel frame)"}),
        "blendedness": ("source", blendedness, {"description":
                        "share of the model flux in the footprint that belongs to other sources "
                        "(first observation)"}),
        "masked_fraction": ("source", masked_fraction, {"description":
                            "fraction of the footprint's pixels (all bands, observations) masked"}),
        "flags": ("source", flags, {
            "description": "bitmask; see flag_meanings / flag_masks",
            "flag_masks": np.array(list(FLAGS.values()), np.int64),
            "flag_meanings": " ".join(k.lower() for k in FLAGS),
        }),
    }
    if frame.wcs is not None:
        _add_sky(out, frame, centroid, center_cov, r_half, theta)
    out.setdefault("r_half", ("source", r_half, {"units": "pix", "description":
                   "half-light radius of the model before the PSF (circular; no WCS: pixels)"}))
    zp = resolve_zero_points(zero_points, frame.bands, obs)
    if zp is not None:
        _add_magnitudes(out, flux, flux_err, zp, frame.bands)
    return Measurements(sources=out, deblended=deblended)


def _flux_text(scene) -> str:
    if scene.measured_flux is not None:
        return ("total flux per band (model units): linear least-squares solution with the fitted shapes")
    return "total flux per band of the model (model units)"


def _add_sky(out, frame, centroid, center_cov, r_half, theta):
    ra, dec = frame.pixel_to_sky(centroid[:, 0], centroid[:, 1])
    out["ra"] = ("source", np.asarray(ra, float), {"units": "deg", "description":
                 "ICRS right ascension of the model centroid"})
    out["dec"] = ("source", np.asarray(dec, float), {"units": "deg", "description":
                  "ICRS declination of the model centroid"})
    # pixel -> sky Jacobian (deg per pixel), columns (x, y)
    cd = np.asarray(frame.wcs.pixel_scale_matrix, float)
    jac = np.array([[cd[0, 1], cd[0, 0]], [cd[1, 1], cd[1, 0]]]) * 3600.0  # rows (ra*cos, dec); cols (y, x)
    sky_cov = np.einsum("ij,njk,lk->nil", jac, np.where(np.isfinite(center_cov), center_cov, np.nan), jac)
    out["ra_err"] = ("source", np.sqrt(sky_cov[:, 0, 0]), {"units": "arcsec", "description":
                     "1-sigma error of ra * cos(dec)"})
    out["dec_err"] = ("source", np.sqrt(sky_cov[:, 1, 1]), {"units": "arcsec", "description":
                      "1-sigma error of dec"})
    scale = frame.pixel_scale
    if scale is not None:
        out["r_half"] = ("source", r_half * float(scale), {"units": "arcsec", "description":
                         "half-light radius of the model before the PSF (circular)"})
    # position angle east of north: rotate the pixel-frame major axis through the WCS
    t = np.radians(theta)
    vec = np.stack([np.sin(t), np.cos(t)], axis=1)  # (dy, dx)
    sky = vec @ jac.T  # (east, north): intermediate world coordinates grow eastwards
    pa = np.degrees(np.arctan2(sky[:, 0], sky[:, 1])) % 180.0
    out["pa"] = ("source", pa, {"units": "deg", "description":
                 "position angle of the major axis, east of north"})


def _add_magnitudes(out, flux, flux_err, zp, bands):
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, zp[None] - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        mag_err = np.where(flux > 0, 2.5 / np.log(10) * flux_err / np.where(flux > 0, flux, 1.0), np.nan)
    out["mag"] = (("source", "band"), mag, {"units": "mag", "description": "AB magnitude, zp - 2.5 log10(flux)"})
    out["mag_err"] = (("source", "band"), mag_err, {"units": "mag", "description": "1-sigma error of mag"})
    out["zero_point"] = ("band", np.asarray(zp, float), {"units": "mag", "description": "AB zero point used"})
