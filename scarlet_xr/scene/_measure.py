"""Measurements of a fitted scene: catalog quantities and deblended images.

:func:`measure_scene` renders each source alone (and the derivatives of its
model with respect to position and size) into every observation, each on its
own box plus the PSF's reach, and hands the arrays to the numpy functions of
:mod:`scarlet_xr.xr._measure`; the conventions (moments, PSF treatment, what the uncertainties are conditional
on) are documented there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import equinox as eqx
import numpy as np
import xarray as xr

from ..core import ConvolutionRenderer, Source, Spectrum, collecting
from ..xr import (
    FLAGS,
    MASKED_FRACTION_LIMIT,
    STAMP_X,
    STAMP_Y,
    cube_to_stamps,
    fisher_covariance,
    flux_variance_ratio,
    flux_variance_terms,
    footprints,
    half_light_radius,
    image_moments,
    normalize_observations,
    observation_epoch,
    pack_stamps,
    resolve_zero_points,
    shape_from_moments,
)
from ._host import host_products

__all__ = ["Measurements", "measure_scene", "scene_stamps"]

log = logging.getLogger(__name__)



@dataclass
class Measurements:
    """Per-source measurements and per-observation deblended images.

    Attributes
    ----------
    sources : dict
        ``{name: (dims, values, attrs)}`` for the ``/sources`` node.
    deblended : dict
        ``{observation name: xarray.Dataset}`` with ``image (source, band,
        stamp_y, stamp_x)`` and ``footprint (source, stamp_y, stamp_x)`` on
        each source's box (origin ``stamp_y0``, ``stamp_x0``; see
        :func:`scarlet_xr.xr.source_image`), ``segmentation (y, x)`` and
        ``blendedness (source)``.
    """

    sources: dict = field(default_factory=dict)
    deblended: dict = field(default_factory=dict)


@eqx.filter_jit
def _compiled_stamps(model):
    return model.component_stamps(), model.fluxes()


def _component_stamps(model):
    """``(component stamps, fluxes)`` of ``model``: on the host for static models (no program
    compiled per scene structure, :func:`._host.host_products`), else compiled."""
    host = host_products(model)
    return _compiled_stamps(model) if host is None else host[:2]


@eqx.filter_jit
def _light_curves(model):
    return model.light_curves()


def _static_stand_in(model):
    """The model with each variable source's light curves replaced by a positive static spectrum.

    The spectrum is the mean over epochs of ``|light curve|`` per band (a
    tiny floor keeps it positive): the source's shape and centroid, and its
    unit-flux templates, do not depend on the light curve's sign or on an
    epoch without light.
    """
    sources = []
    with collecting(lambda s: None):
        for src in model.sources:
            if not src.num_epochs:
                sources.append(src)
                continue
            comps = []
            for comp in src.components:
                lc = np.abs(np.asarray(comp.spectrum.epochs(), float)).mean(axis=0)
                lc = np.maximum(lc, 1e-12 * max(float(lc.max()), 1e-30))
                comps.append((Spectrum(lc), comp.morphology))
            sources.append(Source(src.center, components=comps, name=src.name))
    stand = type(model)(sources, model.shape, psf=model.psf, pad=model.pad)
    return stand


def scene_stamps(model, groups=None):
    """Each source's model (model PSF) on its own box, clipped to the frame.

    Parameters
    ----------
    model : SceneModel
    groups : list, optional
        ``model.component_stamps()`` when already computed.

    Returns
    -------
    list of (y0, x0, numpy.ndarray (band, h, w)) or None
        Per source: its box origin in frame pixels (0-based) and its model
        (float32); None when nothing of it lies on the frame. Components of a
        source share its centre, so its box is the largest of theirs.
    """
    if groups is None:
        groups = _component_stamps(model)[0]
    ncomp = sum(len(s_.components) for s_ in model.sources)
    imgs, cens = [None] * ncomp, [None] * ncomp
    for members, centers, images in groups:
        centers, images = np.asarray(centers, float), np.asarray(images, np.float32)
        for j, i in enumerate(members):
            imgs[i], cens[i] = images[j], centers[j]
    nb, hh, ww = model.shape
    out, c = [], 0
    for src in model.sources:
        parts, center = imgs[c : c + len(src.components)], cens[c]
        c += len(src.components)
        h, w = max(p.shape[-2] for p in parts), max(p.shape[-1] for p in parts)
        acc = parts[0] if len(parts) == 1 else np.zeros((nb, h, w), np.float32)
        if len(parts) > 1:
            for p in parts:
                dy, dx = (h - p.shape[-2]) // 2, (w - p.shape[-1]) // 2
                acc[:, dy : dy + p.shape[-2], dx : dx + p.shape[-1]] += p
        y0 = int(round(float(center[0]))) - h // 2
        x0 = int(round(float(center[1]))) - w // 2
        ys0, xs0, ys1, xs1 = max(y0, 0), max(x0, 0), min(y0 + h, hh), min(x0 + w, ww)
        if ys1 <= ys0 or xs1 <= xs0:
            out.append(None)
            continue
        out.append((ys0, xs0, acc[:, ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]))
    return out


def _support_box(image, margin: int = 2):
    """``(y0, y1, x0, x1)`` of the non-zero pixels of a 2-D image plus ``margin``; None if empty."""
    rows = np.flatnonzero(np.abs(image).max(axis=1) > 0)
    cols = np.flatnonzero(np.abs(image).max(axis=0) > 0)
    if rows.size == 0:
        return None
    h, w = image.shape
    return (max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h),
            max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w))


TEMPLATE_TOL = 1e-5
"""Fisher templates are cut to the pixels where a source's unit model exceeds this fraction of its peak."""


def _source_stamps(stamps, model_flux, centroid):
    """Per source: its box, its model per band, and its unit white shape with derivatives.

    Returns a list (one per source) of None or ``dict(box, tbox, bands, unit, dy, dx, ds)``:
    ``bands`` the model per frame band on ``box``, ``unit`` the band-summed model at unit
    flux, ``dy``, ``dx`` its derivatives for a shift of the source (``-d/dy``, ``-d/dx``)
    and ``ds`` for a flux-conserving dilation about the centroid, on ``tbox`` (the part of
    the box where the source's light exceeds :data:`TEMPLATE_TOL` of its peak).
    """
    out = []
    tot = np.asarray(model_flux, float).sum(axis=1)
    for k, st in enumerate(stamps):
        if st is None:
            out.append(None)
            continue
        sy, sx, arr = st
        white = np.asarray(arr, np.float64).sum(axis=0)
        box = _support_box(white)
        if box is None or not tot[k] > 0:
            out.append(None)
            continue
        ly0, ly1, lx0, lx1 = box
        y0, y1, x0, x1 = sy + ly0, sy + ly1, sx + lx0, sx + lx1
        unit = white[ly0:ly1, lx0:lx1] / tot[k]
        gy, gx = np.gradient(unit)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        cy, cx = centroid[k] if np.all(np.isfinite(centroid[k])) else ((y0 + y1) / 2, (x0 + x1) / 2)
        ds = -(2 * unit + (yy - cy) * gy + (xx - cx) * gx)
        # Fisher templates only where the source has light (its far wings inform nothing):
        # memory and time follow the source's extent, not its box
        lit = np.abs(unit) > TEMPLATE_TOL * np.abs(unit).max()
        ty0, ty1, tx0, tx1 = _support_box(lit.astype(float))
        cut = (slice(ty0, ty1), slice(tx0, tx1))
        out.append({
            "box": (y0, y1, x0, x1),
            "tbox": (y0 + ty0, y0 + ty1, x0 + tx0, x0 + tx1),
            "bands": np.asarray(arr[:, ly0:ly1, lx0:lx1], np.float32),
            "unit": unit[cut],
            "dy": -gy[cut],
            "dx": -gx[cut],
            "ds": ds[cut],
        })
    return out


def _observed_models(renderer, stamps, cube_shape, kernels=None):
    """Each source's model rendered into one observation (all its bands).

    Returns
    -------
    list of None or (y0, x0, numpy.ndarray (obs band, h, w))
        float32, on the source's box plus the PSF's reach.
    """
    from ._init import _render_stamps

    flat = [None if st is None else (st["box"][0], st["box"][2], st["bands"]) for st in stamps]
    return _render_stamps(renderer, flat, cube_shape, dtype=np.float32, kernels=kernels)


def _observed_templates(renderer, stamps, cube_shape, band_index, model_flux, bands, kernels=None):
    """Fisher templates of some bands of one observation.

    The templates of all sources are held together (the Fisher matrix pairs
    them): for five bands at once they took a quarter of a 300-source cutout's
    peak memory, so :func:`measure_scene` asks for one band at a time where
    templates are rendered on their own boxes (convolution renderers), and for
    all bands at once where each is rendered on the whole frame (resampling).

    Parameters
    ----------
    bands : sequence of int
        Observation bands (indices into its ``band`` dimension).

    Returns
    -------
    list of None or (y0, x0, numpy.ndarray (len(bands), h, w))
        Ordered ``unit_0 .. unit_{n-1}, dy_0, dx_0, ds_0, dy_1, ...``: the unit
        shapes and the shape derivatives scaled by the source's flux in each
        band (float32).
    """
    from ._init import _render_stamps

    ns = len(stamps)
    flat, where = [], []
    for k, st in enumerate(stamps):
        if st is None:
            continue
        ty0, _, tx0, _ = st["tbox"]
        for key in ("unit", "dy", "dx", "ds"):
            flat.append((ty0, tx0, st[key]))
            where.append((key, k))
    rendered = _render_stamps(renderer, flat, cube_shape, dtype=np.float32, bands=bands, kernels=kernels)
    templates = [None] * (4 * ns)
    model_bands = np.asarray(band_index)[np.asarray(bands, int)]
    order = {"dy": 0, "dx": 1, "ds": 2}
    for i, (key, k) in enumerate(where):
        patch, rendered[i] = rendered[i], None  # the scaled copies below replace the rendered patches
        if patch is None:
            continue
        py, px, vals = patch
        if key == "unit":
            templates[k] = (py, px, vals)
        else:
            vals *= np.asarray(model_flux[k], np.float32)[model_bands][:, None, None]
            templates[ns + 3 * k + order[key]] = (py, px, vals)
    return templates


def _fisher_blocks(obs_list, ns, nb):
    """Fisher blocks (see :func:`~scarlet_xr.xr.fisher_covariance`) summed over observations.

    ``ns`` flux templates come first in each observation's list, the shape templates after them.
    """
    from ._init import _gram

    nshape = len(obs_list[0][0]) - ns
    ff = np.zeros((nb, ns, ns))
    fs = np.zeros((nb, ns, nshape))
    ss = np.zeros((nshape, nshape))
    for templates, data, w, band_index in obs_list:
        a, _, _ = _gram(templates, data, w, band_index, nb)
        ff += a[:, :ns, :ns]
        fs += a[:, :ns, ns:]
        ss += a[:, ns:, ns:].sum(axis=0)
    return {"ff": ff, "fs": fs, "ss": ss}


def _deblend_observation(ds, data, w, models):
    """Deblended images, footprints, segmentation and per-source statistics of one observation."""
    ns = len(models)
    nbo, ho, wo = data.shape
    # (float32, the stored images' type; the models are clipped in place: the caller lets them go)
    clipped = [None if m is None else (m[0], m[1], np.clip(m[2], 0, None, out=m[2])) for m in models]
    data = np.asarray(data, np.float32)
    total = np.zeros((nbo, ho, wo), np.float32)
    for m in clipped:
        if m is not None:
            y0, x0, v = m
            total[:, y0 : y0 + v.shape[1], x0 : x0 + v.shape[2]] += v
    total_sum = total.sum(axis=0)
    noise = _noise_of_sum(w)
    masked = (w <= 0).mean(axis=0)  # fraction of bands masked per pixel
    # the deblended images go straight into their padded array (a crowded scene's is the
    # largest array of its results: 170 MB for 300 sources)
    shapes = [m[2].shape[-2:] for m in clipped if m is not None]
    img_vals = np.zeros((ns, nbo, max((h for h, _ in shapes), default=1),
                         max((w_ for _, w_ in shapes), default=1)), np.float32)
    sy0, sx0 = np.zeros(ns, np.int64), np.zeros(ns, np.int64)
    fps = [None] * ns
    best = np.full((ho, wo), -np.inf)
    seg = np.full((ho, wo), -1, np.int32)
    stats = {"masked_px": np.zeros(ns), "foot_px": np.zeros(ns), "edge": np.zeros(ns, bool),
             "blendedness": np.full(ns, np.nan)}
    for k, m in enumerate(clipped):
        if m is None:
            continue
        y0, x0, v = m
        sl = (slice(y0, y0 + v.shape[1]), slice(x0, x0 + v.shape[2]))
        f = footprints(v[None], noise)[0]
        fps[k] = (y0, x0, f)
        summed = v.sum(axis=0)
        tot = total[(slice(None),) + sl]
        sy0[k], sx0[k] = y0, x0
        img_vals[k, :, : v.shape[1], : v.shape[2]] = (np.divide(v, tot, out=np.zeros_like(v), where=tot > 0)
                                                      * data[(slice(None),) + sl])
        stats["masked_px"][k] = float(np.sum(f * masked[sl]))
        stats["foot_px"][k] = float(f.sum())
        stats["edge"][k] = bool(f.any() and (
            (y0 == 0 and f[0].any()) or (x0 == 0 and f[:, 0].any())
            or (y0 + f.shape[0] == ho and f[-1].any()) or (x0 + f.shape[1] == wo and f[:, -1].any())))
        own = float(np.sum(f * summed))
        all_in = float(np.sum(f * total_sum[sl]))
        if all_in > 0:
            stats["blendedness"][k] = 1 - own / all_in
        cand = np.where(f, summed, -np.inf)
        better = cand > best[sl]
        best[sl] = np.where(better, cand, best[sl])
        seg[sl] = np.where(better, k, seg[sl])
    fp_vals, _, _ = pack_stamps(fps, (), bool)
    gy0, gx0 = (int(ds[c].values[0]) for c in ("y", "x"))
    coords = {"source": np.arange(ns), "band": ds["band"].values, "y": ds["y"].values, "x": ds["x"].values}
    node = xr.Dataset(
        {
            "image": (("source", "band", STAMP_Y, STAMP_X), img_vals, {
                "description": "data * model_k / sum_j model_j on the source's box (sums to the data "
                               "where the model is positive); see stamp_y0, stamp_x0"}),
            "footprint": (("source", STAMP_Y, STAMP_X), fp_vals, {
                "description": "pixels of the source's box where its band-summed model exceeds "
                               "min(0.5 sigma of the band-summed noise, 5% of its peak)"}),
            "stamp_y0": ("source", sy0 + gy0, {"description": "y of the first row of the source's box"}),
            "stamp_x0": ("source", sx0 + gx0, {"description": "x of the first column of the source's box"}),
            "segmentation": (("y", "x"), seg, {
                "description": "index of the source with the largest model among those whose "
                               "footprint covers the pixel; -1 for none"}),
            "blendedness": ("source", stats["blendedness"], {
                "description": "share of the model flux in the source's footprint that belongs to "
                               "other sources"}),
        },
        coords=coords,
        attrs={k: v for k, v in ds.attrs.items() if k in ("name", "wcs_header")},
    )
    return node, stats


def _noise_of_sum(weight) -> float:
    """Per-pixel noise of the band-summed image (median variance of each band)."""
    var = []
    for wb in weight:
        good = wb[wb > 0]
        if good.size:
            var.append(float(np.median(1.0 / good)))
    return float(np.sqrt(np.sum(var))) if var else 0.0


def measure_scene(scene, observations=None, *, zero_points=None, stamps=None, model_flux=None,
                  renderers=None, per_source=None) -> Measurements:
    """Measure every source of a fitted scene on its observations.

    Parameters
    ----------
    scene : Scene
        A fitted scene (its ``measured_flux``, when set by
        :func:`~scarlet_xr.scene.fit_sources`, is the reported flux; otherwise
        the flux of the model).
    observations : Dataset, sequence or mapping of Datasets, optional
        The observations the scene was fit to (default: those it keeps; see
        :meth:`Scene.bound_observations`, whose bound renderers are reused).
    zero_points : float, sequence or dict, optional
        AB zero point(s): ``mag = zp - 2.5 log10(flux)``. One number for all
        bands, one per frame band, or ``{band: zp}``. Default: the
        observations' ``attrs['zero_point']`` (read from FITS headers), else
        no magnitudes.
    stamps : list, optional
        Each source's model on its box, from :func:`scene_stamps`, when
        already computed (saves a render).
    model_flux : array (source, band), optional
        The model fluxes when already computed.
    renderers : sequence, optional
        The observations' renderers on the scene's frame when already built
        (one per observation, in order; saves building them again).
    per_source : array (source, band, y, x), optional
        Full-frame per-source models instead of ``stamps`` (cropped to their
        non-zero pixels).

    Returns
    -------
    Measurements
    """
    if renderers is None:
        bound = scene.bound_observations(observations)
        renderers = [b.renderer for b in bound]
        obs = normalize_observations(bound)
    else:
        obs = normalize_observations(scene.bound_observations() if observations is None else observations)
    frame = scene.frame
    model = scene.model()
    ns, nb = len(scene.sources), len(frame.bands)
    variable = np.array([bool(s.num_epochs) for s in scene.sources])
    epochs = [frame.epoch_index(observation_epoch(ds)) for ds in obs.values()]
    light = None
    if variable.any():
        # variable sources: their shape from a positive static stand-in; fluxes per epoch
        light = np.asarray(_light_curves(model), np.float64)
        model_flux = np.asarray(_component_stamps(model)[1], np.float64)
        model = _static_stand_in(model)
        groups, stand_flux = _component_stamps(model)
        stamps = scene_stamps(model, groups)
        stand_flux = np.asarray(stand_flux, np.float64)
    elif stamps is None and per_source is not None:
        stamps = cube_to_stamps(np.asarray(per_source))
    if stamps is None or model_flux is None:
        groups, fl = _component_stamps(model)
        stamps = scene_stamps(model, groups) if stamps is None else stamps
        model_flux = fl if model_flux is None else model_flux
    model_flux = np.asarray(model_flux, np.float64)
    if light is None:
        stand_flux = model_flux
    flux = model_flux if scene.measured_flux is None else np.asarray(scene.measured_flux, float)
    # flux parameters of the Fisher matrix: one per static source and band, one per variable
    # source, epoch and band (an observation sees the slot of its epoch)
    ne = max(len(frame.epochs), 1)
    slot = np.zeros((ns, ne), int)
    nflux = 0
    for k in range(ns):
        if variable[k]:
            slot[k] = np.arange(nflux, nflux + ne)
            nflux += ne
        else:
            slot[k] = nflux
            nflux += 1
    kinds = [s.kind for s in scene.sources]
    extended = np.array([k != "point" for k in kinds])

    # -- shapes on the model frame (model PSF subtracted from the moments) --------------
    # (each source on its stamp; centroids moved to frame pixels)
    white = [np.zeros((1, 1)) if st is None else np.asarray(st[2], np.float64).sum(axis=0) for st in stamps]
    _, centroid, second = image_moments(white)
    _, _, psf_second = image_moments(np.asarray(frame.psf, float)[None])
    e1, e2, theta, _ = shape_from_moments(second, psf_second[0])
    psf_img = np.asarray(frame.psf, float)
    pc = np.array([[(psf_img.shape[0] - 1) / 2, (psf_img.shape[1] - 1) / 2]])
    r_psf = float(half_light_radius(psf_img[None], pc)[0])
    r_obs = half_light_radius(white, centroid)
    origin = np.array([[0, 0] if st is None else [st[0], st[1]] for st in stamps], float)
    centroid = centroid + origin
    r_half = np.sqrt(np.clip(r_obs**2 - r_psf**2, 0, None))
    for k in np.flatnonzero(~extended):
        e1[k] = e2[k] = theta[k] = r_half[k] = 0.0

    # -- per observation: models, templates, deblended images ----------------------------
    # everything is rendered as stamps (each source's box plus the PSF's reach), so memory
    # follows the sources, not the frame
    from ._init import _local_kernels

    stamps = _source_stamps(stamps, stand_flux, centroid)
    # each observation's Fisher blocks and noise terms are summed as it goes and its templates
    # let go before its deblended images are made (a 300-source cutout held 0.3 GB of them)
    blocks, info, inflated, deblended = None, 0.0, 0.0, {}
    masked_px = np.zeros(ns)
    foot_px = np.zeros(ns)
    edge = np.zeros(ns, bool)
    blendedness = None
    pending = []  # per observation, what its deblended images need
    for (name, ds), renderer, epoch in zip(obs.items(), renderers, epochs, strict=True):
        band_index = list(getattr(renderer, "band_index", frame.band_index(list(ds["band"].values))))
        w = np.asarray(ds["weight"].values, np.float64)
        data = np.asarray(ds["data"].values, np.float64)
        e = 0 if epoch is None else epoch
        st_o, flux_o = stamps, model_flux
        if light is not None:
            # this epoch's light of the variable sources (rendering is linear in each band)
            flux_o = np.where(variable[:, None], light[:, e], model_flux)
            st_o = [st if st is None or not variable[k] else
                    dict(st, bands=(st["bands"] * (light[k, e] / stand_flux[k])[:, None, None])
                         .astype(np.float32))
                    for k, st in enumerate(stamps)]
        local = isinstance(renderer, ConvolutionRenderer)
        kernels = _local_kernels(renderer) if local else None
        # Fisher blocks and noise terms band by band where templates render on their own boxes
        # (each band's templates let go before the next); a resampling renderer draws each on the
        # whole frame, all bands in one pass
        nbo = len(band_index)
        for group in ([[j] for j in range(nbo)] if local else [list(range(nbo))]):
            templates = _observed_templates(renderer, st_o, frame.cube_shape, band_index, flux_o, group,
                                            kernels=kernels)
            unit = [None] * nflux
            for k in range(ns):
                unit[slot[k, e]] = templates[k]
            templates = unit + templates[ns:]
            bi = [band_index[j] for j in group]
            one = _fisher_blocks([(templates, data[group], w[group], bi)], nflux, nb)
            blocks = one if blocks is None else {key: blocks[key] + one[key] for key in blocks}
            white, correlated = flux_variance_terms(templates, w[group], bi, ds.isel(band=group), nflux, nb)
            info, inflated = info + white, inflated + correlated
            del templates, unit
        pending.append((name, ds, data, w, renderer, st_o, kernels))
    flux_var, center_cov, flux_cov = fisher_covariance(blocks, ns, nb, extended, num_flux=nflux,
                                                       flux_covariance=True)
    del blocks
    # the deblended images after the covariance (whose work arrays are gone by then): the
    # largest arrays of a crowded scene's results do not meet
    for name, ds, data, w, renderer, st_o, kernels in pending:
        models = _observed_models(renderer, st_o, frame.cube_shape, kernels=kernels)
        node, stats = _deblend_observation(ds, data, w, models)
        del models
        masked_px += stats["masked_px"]
        foot_px += stats["foot_px"]
        edge |= stats["edge"]
        if blendedness is None:
            blendedness = stats["blendedness"]
        deblended[str(name)] = node
    del pending
    # correlated noise (issue 17 item 3; docs/noise.md): sandwich factor of the white-weighted flux
    # solve (flux_variance_factor, summed observation by observation)
    factor = flux_variance_ratio(info, inflated)
    slot_var = flux_var * factor
    flux_var = slot_var[slot[:, 0]]
    light_err = None
    if light is not None:
        light_err = np.sqrt(slot_var[slot])  # (source, epoch, band)
        for k in np.flatnonzero(variable):
            # the mean over epochs: (1/E^2) sum of the epochs' covariances (Fisher, per band)
            idx = slot[k]
            cov = flux_cov[:, idx][:, :, idx] * np.sqrt(factor[idx].T[:, :, None] * factor[idx].T[:, None, :])
            flux_var[k] = np.nansum(cov, axis=(1, 2)) / ne**2
    flux_err = np.sqrt(flux_var)
    masked_fraction = np.where(foot_px > 0, masked_px / np.maximum(foot_px, 1), np.nan)

    # -- flags -----------------------------------------------------------------------------
    flags = np.zeros(ns, np.int64)
    for k, c in enumerate(scene.choices or []):
        if c.get("box_truncated"):
            flags[k] |= FLAGS["BOX_TRUNCATED"]
        if c.get("added"):
            flags[k] |= FLAGS["ADDED"]
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
    # the position is the fitted centre where the centre was fitted (the parameter whose error
    # y_err / x_err give); the model's light-weighted centroid is biased when a profile is cut
    # by its box or the frame edge. Pixel models with a fixed anchor use the centroid.
    position = centroid.copy()
    for k, src in enumerate(scene.sources):
        if not src.center.fixed:
            position[k] = np.asarray(src.center.value, np.float64)
    y_err = np.sqrt(center_cov[:, 0, 0])
    x_err = np.sqrt(center_cov[:, 1, 1])
    out = {
        "y": ("source", position[:, 0] + oy, {"units": "pix", "description":
              "fitted centre (fixed-anchor pixel models: light-weighted centroid), model-frame row"}),
        "x": ("source", position[:, 1] + ox, {"units": "pix", "description":
              "fitted centre (fixed-anchor pixel models: light-weighted centroid), model-frame column"}),
        "centroid_y": ("source", centroid[:, 0] + oy, {"units": "pix", "description":
                       "light-weighted centroid of the model within its box, model-frame row"}),
        "centroid_x": ("source", centroid[:, 1] + ox, {"units": "pix", "description":
                       "light-weighted centroid of the model within its box, model-frame column"}),
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
    if light is not None:
        out["light_curve"] = (("source", "epoch", "band"), np.where(variable[:, None, None], light,
                                                                   flux[:, None, :]), {
            "description": "flux per epoch and band: a variable source's light curve; a static "
                           "source's flux at every epoch"})
        out["light_curve_err"] = (("source", "epoch", "band"), np.where(variable[:, None, None], light_err,
                                                                       flux_err[:, None, :]), {
            "description": "1-sigma error of light_curve (Fisher, as flux_err; a static source: its "
                           "flux_err)"})
        out["variable"] = ("source", variable, {"description": "the source has a light curve"})
    if frame.wcs is not None:
        _add_sky(out, frame, position, center_cov, r_half, theta)
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


def _add_sky(out, frame, position, center_cov, r_half, theta):
    ra, dec = frame.pixel_to_sky(position[:, 0], position[:, 1])
    out["ra"] = ("source", np.asarray(ra, float), {"units": "deg", "description":
                 "ICRS right ascension of the position (x, y)"})
    out["dec"] = ("source", np.asarray(dec, float), {"units": "deg", "description":
                  "ICRS declination of the position (x, y)"})
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
    out["mag"] = (("source", "band"), mag, {"units": "mag",
                                            "description": "AB magnitude, zp - 2.5 log10(flux)"})
    out["mag_err"] = (("source", "band"), mag_err, {"units": "mag", "description": "1-sigma error of mag"})
    out["zero_point"] = ("band", np.asarray(zp, float), {"units": "mag",
                                                           "description": "AB zero point used"})
