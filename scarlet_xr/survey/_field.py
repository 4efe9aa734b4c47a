"""``deblend_field``: a whole field -> detections -> blends (cutout files) -> survey runner -> one catalog.

The field is read in windows from memory-mapped FITS files, so memory stays
flat however large the field is (besides a few 2-D planes for detection: the
coadd, its noise and the segmentation map). Blends are cut as files in the
survey layout (:func:`~scarlet_xr.survey.write_blend_fits`) into a work
directory next to the store, with a generated catalog (one row per detected
source: ``file``, ``ra``, ``dec``, ...), which :func:`deblend_catalog` fits
unchanged. Every step can be interrupted: detection finishes before its
results are recorded (``field.json`` written last), cutouts are written
atomically and only missing ones are cut again, and the store resumes per
blend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from .._version import __version__
from ._bucket import STAMP_SIZES

__all__ = ["deblend_field"]

logger = logging.getLogger(__name__)

_WORK_MARK = "field.json"
_BLENDS = "blends.ecsv"
_SEGMAP = "segmentation.npy"

DEBLEND_NTHRESH = 64
"""Threshold levels of the detection's deblending (``sep.extract``'s ``deblend_nthresh``)."""

DEBLEND_CONT = 3e-4
"""Smallest share of a parent's flux a peak needs to be its own detection (``deblend_cont``).

On the 2048 px benchmark field (1001 true sources, 40 % of them 4-12 px from another),
detections matched to the truth within 1.5 px: 621 of 684 with sep's default 0.005 and 32
levels, 675 of 721 with 3e-4 and 64 levels (1e-4: 677 of 722). Missed pairs of different
colours are one detection, and the fit then gives their light to one smooth or monotonic model."""


class _FieldFile:
    """One FITS file of the field, memory-mapped; pixels are read in windows."""

    def __init__(self, path, mask_bits):
        from astropy.io import fits
        from astropy.wcs import WCS, FITSFixedWarning

        from ..xr import MASK_HDUS, STDDEV_HDUS, VARIANCE_HDUS, WEIGHT_HDUS, resolve_mask_bits

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no such FITS file: {str(self.path)!r}")
        try:
            self.hdul = fits.open(self.path, memmap=True)
            names = [h.name.upper() for h in self.hdul]
        except Exception as err:  # astropy raises many types for bad files
            raise ValueError(f"{self.path.name!r} is not a readable FITS file: {err}") from err
        aux = set(VARIANCE_HDUS + WEIGHT_HDUS + STDDEV_HDUS + MASK_HDUS + ("PSF",))
        images = [h for h in self.hdul if h.is_image and h.header.get("NAXIS", 0) in (2, 3)
                  and h.name.upper() not in aux]
        if "IMAGE" in names:
            self.image = self.hdul["IMAGE"]
        elif images:
            self.image = images[0]
        else:
            raise ValueError(f"{self.path.name!r} has no 2-D or 3-D image HDU; it has HDUs {names}")
        shape = self.image.shape
        self.ny, self.nx = shape[-2:]
        self.nb = shape[0] if len(shape) == 3 else 1
        hdr = self.image.header
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(hdr, naxis=2, relax=True)
        if not wcs.has_celestial:
            raise ValueError(
                f"{self.path.name!r}: a field needs a celestial WCS (CTYPE1/2 like 'RA---TAN', 'DEC--TAN') "
                f"to place its blends; got CTYPE {list(wcs.wcs.ctype)}"
            )
        self.wcs = wcs.celestial
        bands = [b.strip() for b in str(hdr.get("BANDS", "")).split(",") if b.strip()]
        if not bands and self.nb == 1 and ("FILTER" in hdr or "BAND" in hdr):
            bands = [str(hdr.get("FILTER", hdr.get("BAND"))).strip()]
        if bands and len(bands) != self.nb:
            raise ValueError(f"{self.path.name!r}: header BANDS lists {len(bands)} bands {bands}; "
                             f"the image has {self.nb} planes")
        self.bands = bands or [f"{self.path.stem}{i}" for i in range(self.nb)]
        from ..xr import zero_point_from_header

        self.zero_point = zero_point_from_header(hdr)
        self.planes = {}
        for kind, choices in (("variance", VARIANCE_HDUS), ("weight", WEIGHT_HDUS),
                              ("stddev", STDDEV_HDUS)):
            hit = next((n for n in choices if n in names), None)
            if hit is not None:
                self.planes[kind] = hit
                break
        hit = next((n for n in MASK_HDUS if n in names), None)
        if hit is not None:
            self.planes["mask"] = hit
        for kind, name in self.planes.items():
            pshape = self.hdul[name].shape
            if pshape[-2:] != (self.ny, self.nx) or len(pshape) not in (2, 3) or (
                    len(pshape) == 3 and pshape[0] not in (1, self.nb)):
                raise ValueError(
                    f"{self.path.name!r}: the {kind} plane {name!r} must have shape ({self.nb}, {self.ny}, "
                    f"{self.nx}) or ({self.ny}, {self.nx}); got {tuple(pshape)}"
                )
        self.mask_bits = None
        if mask_bits is not None:
            if "mask" not in self.planes:
                raise ValueError(f"{self.path.name!r}: mask_bits {mask_bits!r} given but the file has no "
                                 f"mask plane (an HDU named {' or '.join(MASK_HDUS)}); it has {names}")
            mhdu = self.hdul[self.planes["mask"]]
            bits = resolve_mask_bits(mask_bits, mhdu.header, label=f"{self.path.name}[{self.planes['mask']}]",
                                     nbits=8 * np.dtype(mhdu.data.dtype if mhdu.data is not None
                                                        else np.int32).itemsize)
            self.mask_bits = sum(1 << b for b in bits.values())
        if "PSF" not in names:
            raise ValueError(f"{self.path.name!r} has no 'PSF' HDU (one PSF image per band); it has {names}")
        psf = np.asarray(self.hdul["PSF"].data, np.float64)
        psf = psf[None] if psf.ndim == 2 else psf
        if psf.ndim != 3 or psf.shape[0] not in (1, self.nb):
            raise ValueError(
                f"{self.path.name!r}: the PSF must be (h, w) or ({self.nb}, h, w); got {psf.shape}"
            )
        self.psf = np.broadcast_to(psf, (self.nb,) + psf.shape[1:]).copy()
        self.noise = None
        if not any(k in self.planes for k in ("variance", "weight", "stddev")):
            self.noise = self._estimate_noise()

    def _section(self, hdu, y0, y1, x0, x1) -> np.ndarray:
        sec = hdu.section
        if len(hdu.shape) == 2:
            return np.asarray(sec[y0:y1, x0:x1])[None]
        return np.asarray(sec[:, y0:y1, x0:x1])

    def _estimate_noise(self) -> np.ndarray:
        """A constant noise rms per band from the central window (sep background)."""
        from ..xr import estimate_background

        h = min(self.ny, 1024) // 2
        w = min(self.nx, 1024) // 2
        cy, cx = self.ny // 2, self.nx // 2
        data = self._section(self.image, cy - h, cy + h, cx - w, cx + w).astype(np.float32)
        bad = ~np.isfinite(data)
        if "mask" in self.planes:
            bad |= self._bad(cy - h, cy + h, cx - w, cx + w)
        rms = np.array([estimate_background(np.where(b, 0, d), mask=b)[1]
                        for d, b in zip(data, bad, strict=True)])
        logger.warning("%s: no variance/weight plane; noise estimated with sep from the central %dx%d "
                       "window: rms %s", self.path.name, 2 * h, 2 * w, np.round(rms, 4).tolist())
        return rms

    def _bad(self, y0, y1, x0, x1) -> np.ndarray:
        m = self._section(self.hdul[self.planes["mask"]], y0, y1, x0, x1)
        if self.mask_bits is None:
            return m != 0
        return (m.astype(np.int64) & int(self.mask_bits)) != 0

    def read(self, y0, y1, x0, x1):
        """Data and inverse variance (0 = masked) of a window, ``(band, y, x)`` float32."""
        data = self._section(self.image, y0, y1, x0, x1).astype(np.float32)
        shape = data.shape
        if "variance" in self.planes:
            var = np.broadcast_to(self._section(self.hdul[self.planes["variance"]], y0, y1, x0, x1), shape)
            ok = np.isfinite(var) & (var > 0)
            weight = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0).astype(np.float32)
            bad_plane = np.isfinite(var) & (var <= 0)
        elif "weight" in self.planes:
            w = np.broadcast_to(self._section(self.hdul[self.planes["weight"]], y0, y1, x0, x1), shape)
            weight = np.where(np.isfinite(w), w, 0.0).astype(np.float32)
            bad_plane = weight < 0
        elif "stddev" in self.planes:
            sd = np.broadcast_to(self._section(self.hdul[self.planes["stddev"]], y0, y1, x0, x1), shape)
            ok = np.isfinite(sd) & (sd > 0)
            weight = np.where(ok, 1.0 / np.where(ok, sd, 1.0) ** 2, 0.0).astype(np.float32)
            bad_plane = np.isfinite(sd) & (sd <= 0)
        else:
            weight = np.broadcast_to((1.0 / self.noise**2)[:, None, None], shape).astype(np.float32)
            bad_plane = np.zeros(shape, bool)
        masked = ~np.isfinite(data)
        if "mask" in self.planes:
            masked |= np.broadcast_to(self._bad(y0, y1, x0, x1), shape)
        wrong = bad_plane & ~masked
        if wrong.any():
            kind = next(k for k in ("variance", "weight", "stddev") if k in self.planes)
            b, y, x = (int(v[0]) for v in np.nonzero(wrong))
            rule = "weight >= 0" if kind == "weight" else f"{kind} > 0"
            raise ValueError(
                f"{self.path.name!r}: the {kind} plane {self.planes[kind]!r} must have {rule} on unmasked "
                f"pixels; got {int(wrong.sum())} pixels that do not in the window y {y0}:{y1}, x {x0}:{x1} "
                f"(first: band {b}, y {y0 + y}, x {x0 + x}); mask them or fix the plane"
            )
        weight[masked] = 0.0
        data[masked] = 0.0
        return data, weight

    def close(self):
        self.hdul.close()


class _Field:
    """The field: one or more files of the same pixel grid (their bands concatenated)."""

    def __init__(self, files, mask_bits):
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        if not paths:
            raise ValueError("expected at least one FITS file of the field; got none")
        self.files = []
        try:
            for p in paths:
                self.files.append(_FieldFile(p, mask_bits))
        except BaseException:
            self.close()
            raise
        first = self.files[0]
        self.ny, self.nx, self.wcs = first.ny, first.nx, first.wcs
        corners_x = np.array([0.0, self.nx - 1, 0.0, self.nx - 1])
        corners_y = np.array([0.0, 0.0, self.ny - 1, self.ny - 1])
        ra, dec = first.wcs.pixel_to_world_values(corners_x, corners_y)
        for f in self.files[1:]:
            if (f.ny, f.nx) != (self.ny, self.nx):
                raise ValueError(f"{f.path.name!r} is {f.ny}x{f.nx} pixels; expected the field's "
                                 f"{self.ny}x{self.nx} (files of one field share the pixel grid)")
            x, y = f.wcs.world_to_pixel_values(ra, dec)
            off = float(np.max(np.hypot(x - corners_x, y - corners_y)))
            if off > 0.01:
                raise ValueError(f"{f.path.name!r} is not on the pixel grid of {first.path.name!r}: its WCS "
                                 f"places the corners up to {off:.3g} pixels away; expected < 0.01")
        self.bands = [b for f in self.files for b in f.bands]
        if len(set(self.bands)) != len(self.bands):
            raise ValueError(f"band names must be unique across the files; got {self.bands}")
        size = max(f.psf.shape[-1] for f in self.files), max(f.psf.shape[-2] for f in self.files)
        h, w = size[1], size[0]
        psfs = []
        for f in self.files:
            ph, pw = f.psf.shape[-2:]
            if ph % 2 == 0 or pw % 2 == 0:
                raise ValueError(f"{f.path.name!r}: PSF images must have odd sizes; got {ph}x{pw}")
            p = np.zeros((f.nb, h, w))
            p[:, (h - ph) // 2 : (h + ph) // 2, (w - pw) // 2 : (w + pw) // 2] = f.psf
            psfs.append(p / p.sum(axis=(1, 2), keepdims=True))
        self.psf = np.concatenate(psfs).astype(np.float32)
        zps = {f.zero_point for f in self.files}
        self.zero_point = zps.pop() if len(zps) == 1 else None
        if self.zero_point is None and len(self.files) > 1 and any(f.zero_point for f in self.files):
            logger.warning("the files have different zero points %s; the catalog has no magnitudes unless "
                           "zero_points= is given", [f.zero_point for f in self.files])
        self.planes = {f.path.name: dict(f.planes) for f in self.files}

    def read(self, y0, y1, x0, x1):
        parts = [f.read(y0, y1, x0, x1) for f in self.files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self):
        for f in self.files:
            f.close()


_FILL_PIXELS = 8


def _fill_masked(det, err, invalid, n: int):
    """Fill masked pixels within ``n`` pixels of valid ones with the mean of their valid neighbours.

    For detection only (the fit never sees these values): a masked column
    through a galaxy would otherwise split its footprint in two. Returns the
    pixels still masked. Works in place on ``det`` and ``err``.
    """
    from scipy import ndimage

    for _ in range(n):
        if not invalid.any():
            break
        valid = (~invalid).astype(np.float32)
        count = ndimage.uniform_filter(valid, size=3, mode="constant")
        grow = invalid & (count > 0)
        if not grow.any():
            break
        num = ndimage.uniform_filter(det * valid, size=3, mode="constant")
        num_err = ndimage.uniform_filter(err * valid, size=3, mode="constant")
        det[grow] = num[grow] / count[grow]
        err[grow] = num_err[grow] / count[grow]
        invalid = invalid & ~grow
        del valid, count, num, num_err
    return invalid


def _detect(field: _Field, *, threshold, minarea, window, deblend_nthresh, deblend_cont):
    """Detect on the inverse-variance weighted coadd, read in strips of ``window`` rows."""
    import sep

    ny, nx = field.ny, field.nx
    det = np.zeros((ny, nx), np.float32)
    err = np.zeros((ny, nx), np.float32)
    for y0 in range(0, ny, window):
        y1 = min(y0 + window, ny)
        d, w = field.read(y0, y1, 0, nx)
        det[y0:y1] = (d * w).sum(axis=0)
        err[y0:y1] = w.sum(axis=0)
        del d, w
    invalid = err <= 0
    if invalid.all():
        raise ValueError("every pixel of the field is masked (weight 0); nothing to detect")
    np.divide(det, err, out=det, where=~invalid)
    det[invalid] = 0.0
    np.sqrt(err, out=err)
    np.divide(1.0, err, out=err, where=~invalid)
    err[invalid] = 1.0
    no_data = invalid.copy()
    invalid = _fill_masked(det, err, invalid, _FILL_PIXELS)
    # sep's "matched" filter with a noise map and a mask fails to deblend next to masked pixels
    # (a bad column merged five separated galaxies into one object): plain convolution
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), ny * nx // 4))
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 4096))
    objs, seg = sep.extract(det, float(threshold), err=err, mask=invalid, minarea=int(minarea),
                            deblend_nthresh=int(deblend_nthresh), deblend_cont=float(deblend_cont),
                            filter_type="conv", segmentation_map=True)
    return objs, np.asarray(seg, np.int32), no_data


def _group(objs, seg, *, margin, max_size, max_sources):
    """Blends of detections: connected footprints dilated by ``margin``, split when too large.

    Returns a list of ``(members, (y0, y1, x0, x1))``; ``members`` are indices
    of ``objs`` (brightest first). Each box is the members' footprints plus
    ``margin``, widened to the runner's stamp size (:data:`STAMP_SIZES`) where
    the field allows.
    """
    from scipy import ndimage

    ny, nx = seg.shape
    n = len(objs)
    grown = ndimage.maximum_filter((seg > 0).astype(np.uint8), size=2 * margin + 1)
    labels, _ = ndimage.label(grown)
    del grown
    lab = np.asarray(ndimage.maximum(labels, seg, index=np.arange(1, n + 1)), np.int64)
    iy = np.clip(np.rint(objs["y"]).astype(int), 0, ny - 1)
    ix = np.clip(np.rint(objs["x"]).astype(int), 0, nx - 1)
    lab = np.where(lab > 0, lab, labels[iy, ix])
    del labels
    lo_y, hi_y = objs["ymin"].astype(int), objs["ymax"].astype(int)
    lo_x, hi_x = objs["xmin"].astype(int), objs["xmax"].astype(int)

    def box(mem):
        return (max(int(lo_y[mem].min()) - margin, 0), min(int(hi_y[mem].max()) + 1 + margin, ny),
                max(int(lo_x[mem].min()) - margin, 0), min(int(hi_x[mem].max()) + 1 + margin, nx))

    def split(mem):
        y0, y1, x0, x1 = box(mem)
        if len(mem) == 1 or (len(mem) <= max_sources and y1 - y0 <= max_size and x1 - x0 <= max_size):
            return [mem]
        coord = objs["y"][mem] if y1 - y0 >= x1 - x0 else objs["x"][mem]
        order = np.argsort(coord, kind="stable")
        half = len(mem) // 2
        return split(mem[order[:half]]) + split(mem[order[half:]])

    def crop(lo, hi, center, size):
        if hi - lo <= max_size:
            return lo, hi
        lo = int(np.clip(int(np.rint(center)) - max_size // 2, 0, size - max_size))
        return lo, lo + max_size

    def grow(lo, hi, size, target):
        """Widen ``[lo, hi)`` to ``target`` pixels around its centre, inside ``[0, size)``."""
        target = min(target, size)
        if hi - lo >= target:
            return lo, hi
        lo = int(np.clip((lo + hi - target) // 2, 0, size - target))
        return lo, lo + target

    flux_order = np.argsort(-objs["flux"], kind="stable")
    by_label = {}
    for i in flux_order:
        by_label.setdefault(int(lab[i]), []).append(i)
    blends = []
    for key in sorted(by_label, key=lambda k: min(by_label[k])):
        for mem in split(np.asarray(by_label[key])):
            mem = mem[np.argsort(-objs["flux"][mem], kind="stable")]
            y0, y1, x0, x1 = box(mem)
            y0, y1 = crop(y0, y1, objs["y"][mem[0]], ny)
            x0, x1 = crop(x0, x1, objs["x"][mem[0]], nx)
            # the runner pads every blend to a canonical stamp: fill it with data instead
            stamp = next(t for t in STAMP_SIZES if t >= max(y1 - y0, x1 - x0))
            y0, y1 = grow(y0, y1, ny, stamp)
            x0, x1 = grow(x0, x1, nx, stamp)
            blends.append((mem, (y0, y1, x0, x1)))
    return blends


def _unmasked_centres(x, y, no_data, radius: int = 16):
    """Move centres that sit on a pixel masked in every band to the nearest pixel with data.

    The fit cannot start a source there (e.g. a saturated star's masked core).
    Returns the new ``x``, ``y`` and the distance moved (0 for most).
    """
    ny, nx = no_data.shape
    x, y = np.array(x, float), np.array(y, float)
    moved = np.zeros(len(x))
    iy, ix = np.clip(np.rint(y).astype(int), 0, ny - 1), np.clip(np.rint(x).astype(int), 0, nx - 1)
    for k in np.flatnonzero(no_data[iy, ix]):
        y0, x0 = max(iy[k] - radius, 0), max(ix[k] - radius, 0)
        ok = ~no_data[y0 : iy[k] + radius + 1, x0 : ix[k] + radius + 1]
        if not ok.any():
            continue
        yy, xx = np.nonzero(ok)
        j = np.argmin(np.hypot(yy + y0 - y[k], xx + x0 - x[k]))
        moved[k] = np.hypot(yy[j] + y0 - y[k], xx[j] + x0 - x[k])
        y[k], x[k] = yy[j] + y0, xx[j] + x0
    return x, y, moved


def _blend_table(objs, blends, field: _Field, no_data):
    """The generated catalog: one row per detection, grouped by blend (``file``, ``ra``, ``dec``, ...)."""
    from astropy.table import Table

    rows = np.concatenate([m for m, _ in blends])
    bid = np.concatenate([np.full(len(m), b) for b, (m, _) in enumerate(blends)])
    boxes = np.asarray([bx for _, bx in blends], np.int64)[bid]
    x, y, moved = _unmasked_centres(objs["x"][rows], objs["y"][rows], no_data)
    ra, dec = field.wcs.pixel_to_world_values(x, y)
    lo_y, hi_y = objs["ymin"][rows], objs["ymax"][rows]
    lo_x, hi_x = objs["xmin"][rows], objs["xmax"][rows]
    at_border = (lo_y <= 0) | (lo_x <= 0) | (hi_y >= field.ny - 1) | (hi_x >= field.nx - 1)
    cut = (lo_y < boxes[:, 0]) | (hi_y >= boxes[:, 1]) | (lo_x < boxes[:, 2]) | (hi_x >= boxes[:, 3])
    t = Table()
    t["file"] = [f"cutouts/blend_{b:06d}.fits" for b in bid]
    t["ra"], t["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    t["blend"] = bid
    t["detection"] = rows
    t["x_det"], t["y_det"] = np.asarray(objs["x"][rows], float), np.asarray(objs["y"][rows], float)
    t["det_flux"] = np.asarray(objs["flux"][rows], float)
    t["centre_moved"] = moved
    t["blend_y0"], t["blend_y1"], t["blend_x0"], t["blend_x1"] = boxes.T
    t["blend_size"] = np.bincount(bid)[bid]
    t["edge"] = at_border | cut
    return t


def _cut(field: _Field, seg, rows, box, path: Path) -> None:
    """Write one blend's cutout atomically; pixels of detections of other blends get weight 0."""
    from ..xr import shift_wcs
    from ._fits import write_blend_fits

    y0, y1, x0, x1 = box
    data, weight = field.read(y0, y1, x0, x1)
    s = np.asarray(seg[y0:y1, x0:x1])
    other = (s > 0) & ~np.isin(s, np.asarray(rows) + 1)
    weight[:, other] = 0.0
    hdr = {"MAGZERO": float(field.zero_point)} if field.zero_point is not None else None
    tmp = path.with_name(path.name + ".tmp")
    write_blend_fits(tmp, data, weights=weight, psf=field.psf, bands=field.bands,
                     wcs=shift_wcs(field.wcs, y0, x0), header=hdr)
    os.replace(tmp, path)


def _fingerprint(field: _Field, params: dict) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for f in field.files:
        st = f.path.stat()
        h.update(f"{f.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _prepare(field: _Field, work: Path, params: dict, fingerprint: str):
    """Detect and group (unless ``work`` already holds them for this field); return the blend table."""
    from astropy.table import Table

    mark = work / _WORK_MARK
    if mark.exists():
        try:
            state = json.loads(mark.read_text())
        except ValueError:
            state = {}
        done = (work / _BLENDS).exists() and (work / _SEGMAP).exists()
        if state.get("fingerprint") == fingerprint and done:
            logger.info("%s: reusing the detections and blends of an earlier run", work)
            return Table.read(work / _BLENDS, format="ascii.ecsv")
        logger.warning("%s holds the blends of another field or other settings; cutting again", work)
        shutil.rmtree(work)
    elif work.exists() and any(work.iterdir()):
        raise ValueError(f"the work directory {str(work)!r} exists and is not a scarlet_xr field work "
                         f"directory (no {_WORK_MARK}); expected it empty or absent")
    (work / "cutouts").mkdir(parents=True, exist_ok=True)
    objs, seg, no_data = _detect(field, threshold=params["threshold"], minarea=params["minarea"],
                        window=params["window"], deblend_nthresh=DEBLEND_NTHRESH,
                        deblend_cont=DEBLEND_CONT)
    if len(objs) == 0:
        raise ValueError(f"no source detected above {params['threshold']} sigma in the field")
    blends = _group(objs, seg, margin=params["margin"], max_size=params["max_blend_size"],
                    max_sources=params["max_blend_sources"])
    table = _blend_table(objs, blends, field, no_data)
    del no_data
    table.meta = {"field_fingerprint": fingerprint, "bands": field.bands, "shape": [field.ny, field.nx],
                  "scarlet_xr_version": __version__, **{k: v for k, v in params.items()}}
    np.save(work / (_SEGMAP + ".tmp.npy"), seg)
    os.replace(work / (_SEGMAP + ".tmp.npy"), work / _SEGMAP)
    table.write(work / (_BLENDS + ".tmp"), format="ascii.ecsv", overwrite=True)
    os.replace(work / (_BLENDS + ".tmp"), work / _BLENDS)
    mark.write_text(json.dumps({"fingerprint": fingerprint, "files": [str(f.path) for f in field.files]}))
    sizes = np.bincount(np.asarray(table["blend"]))
    logger.info("detected %d sources in %d blends (%d isolated, largest %d sources)", len(table),
                len(sizes), int((sizes == 1).sum()), int(sizes.max()))
    return table


def _cut_missing(field: _Field, work: Path, table) -> int:
    seg = np.load(work / _SEGMAP, mmap_mode="r")
    bid = np.asarray(table["blend"])
    starts = np.flatnonzero(np.r_[True, bid[1:] != bid[:-1]])
    stops = np.r_[starts[1:], len(bid)]
    n = 0
    for s, e in zip(starts, stops, strict=True):
        path = work / str(table["file"][s])
        if path.exists():
            continue
        box = tuple(int(table[c][s]) for c in ("blend_y0", "blend_y1", "blend_x0", "blend_x1"))
        _cut(field, seg, np.asarray(table["detection"][s:e]), box, path)
        n += 1
    return n


def deblend_field(
    files,
    *,
    out,
    catalog=None,
    workdir=None,
    threshold: float = 4.0,
    minarea: int = 5,
    margin: int = 8,
    max_blend_size: int = 128,
    max_blend_sources: int = 16,
    mask_bits=None,
    window: int = 256,
    zero_points=None,
    **runner,
):
    """Deblend a whole field: detect, group into blends, fit every blend, one catalog.

    The field's pixels are read in windows from memory-mapped FITS files. Its
    planes are found by HDU name as in :func:`scarlet_xr.open_observation`:
    variance (``VARIANCE``, ``VAR``), inverse variance (``IVAR``, ``WEIGHT``,
    ``WHT``) or noise (``ERR``, ``SIGMA``, ...); mask (``MASK``, ``BADPIX``;
    non-zero, or any of ``mask_bits``, is bad) and ``PSF`` (one image per band,
    constant over the field). Without a noise plane a constant noise per band
    is estimated with ``sep``.

    Steps: (1) detection with ``sep`` on the inverse-variance weighted coadd
    of all bands, its peaks split down to :data:`DEBLEND_CONT` of their
    parent's flux (:data:`DEBLEND_NTHRESH` levels); (2) blends = connected detection footprints (``sep``'s
    segmentation) dilated by ``margin`` pixels; a blend larger than
    ``max_blend_size`` pixels or with more than ``max_blend_sources`` sources
    is split in two along its longer side, recursively; (3) each blend is cut
    (its box: the members' footprints plus ``margin``) with its WCS and
    planes into ``<workdir>/cutouts/``, pixels of detections of other blends
    masked, and listed in ``<workdir>/blends.ecsv`` (one row per detection:
    ``file``, ``ra``, ``dec``, ``blend``, ``x_det``, ``y_det``, the box,
    ``edge``, ``centre_moved``: a detection centred on a pixel masked in every
    band, e.g. a saturated core, starts its fit at the nearest pixel with
    data); (4) :func:`deblend_catalog` fits them all (isolated sources
    in small buckets, batched) into the store ``out``; (5) one catalog.

    A killed run resumes where it stopped when called again with the same
    arguments: detections are reused (``workdir/field.json`` records them),
    only missing cutouts are cut, and the store skips finished blends.

    Parameters
    ----------
    files : str, path-like or sequence of them
        The field: one FITS image ``(band, y, x)`` or ``(y, x)``, or several
        files on the same pixel grid (e.g. one per band), with a celestial WCS.
    out : str or Path
        The Zarr store (see :func:`deblend_catalog`).
    catalog : str or Path, optional
        Also write the catalog here (``.ecsv`` or ``.fits``).
    workdir : str or Path, optional
        Cutouts and the generated blend catalog. Default ``<out>.blends``.
    threshold, minarea : float, int
        Detection threshold (noise units of the coadd) and minimum area (pixels).
    margin : int
        Pixels added around footprints, both to join neighbours into one
        blend and around each blend's cutout.
    max_blend_size, max_blend_sources : int
        Largest blend (pixels on a side; at most 512) and most sources per blend.
    mask_bits : int, str or sequence, optional
        Bits of the mask plane that mark bad pixels: bit numbers and/or names
        from its header's ``MP_<NAME>`` keywords (e.g. ``"BAD,SAT"``), as in
        :func:`scarlet_xr.open_observation`. Default: any non-zero value.
    window : int
        Rows read at a time while building the detection image.
    zero_points : float, sequence or dict, optional
        AB zero points of the catalog (default: ``MAGZERO``/... of the header).
    **runner
        Passed on to :func:`deblend_catalog` (``client``, ``n_workers``,
        ``blends_per_task``, ``batch_size``, ``max_steps``, ``e_rel``,
        ``retry_failed``, ``progress``, ``compile_cache``, ``find_missing``).
        ``find_missing`` defaults to True here: the fits add sources where
        their residual has a significant peak away from every source (the
        detection merges sources a PSF width or two apart).

    Returns
    -------
    astropy.table.Table
        One row per detected source (order of ``blends.ecsv``), then one per
        source the fits added (``id`` -1, flag ``ADDED``, no ``x_det``,
        ``y_det``), with the columns of :func:`survey_catalog`; ``x``, ``y``
        are field pixels, plus ``blend``, ``blend_size`` (detected sources in
        its blend), ``x_det``, ``y_det`` (detection). ``EDGE`` is set in ``flags`` for sources whose
        footprint touches the field's border or was cut by their blend's box,
        besides the model footprints touching the cutout's border.

    Raises
    ------
    ValueError
        Unreadable files, planes of the wrong shape, variance <= 0 or weight
        < 0 on unmasked pixels, files not on one pixel grid, nothing detected,
        a work directory that is not one, or a store of another field.
    FileNotFoundError
        If a file does not exist.
    """
    from ..xr import FLAGS, write_catalog
    from ._catalog import survey_catalog
    from ._runner import deblend_catalog

    if not 8 <= max_blend_size <= 512:
        raise ValueError(f"max_blend_size must be in [8, 512]; got {max_blend_size}")
    if not 1 <= max_blend_sources <= 128:
        raise ValueError(f"max_blend_sources must be in [1, 128]; got {max_blend_sources}")
    if margin < 0 or window < 1:
        raise ValueError(f"margin must be >= 0 and window >= 1; got {margin} and {window}")
    out = Path(out)
    work = Path(workdir) if workdir is not None else out.with_name(out.name + ".blends")
    if work.resolve() == out.resolve():
        raise ValueError(f"workdir and out must differ; got {str(work)!r} for both")
    params = {"threshold": float(threshold), "minarea": int(minarea), "margin": int(margin),
              "max_blend_size": int(max_blend_size), "max_blend_sources": int(max_blend_sources),
              "mask_bits": mask_bits, "window": int(window), "layout": 1,
              "deblend": [DEBLEND_NTHRESH, DEBLEND_CONT]}
    field = _Field(files, mask_bits)
    try:
        fp = _fingerprint(field, {k: v for k, v in params.items() if k != "window"})
        table = _prepare(field, work, params, fp)
        n_cut = _cut_missing(field, work, table)
        if n_cut:
            logger.info("cut %d blend(s) into %s", n_cut, work / "cutouts")
    finally:
        field.close()
    runner.setdefault("find_missing", True)
    deblend_catalog(work / _BLENDS, out=out, **runner)
    cat = survey_catalog(out, zero_points=zero_points, added=True)
    n_det = len(table)
    # rows past the detections: sources the fits added at residual peaks (flag ADDED)
    first = {}
    for i, b in enumerate(np.asarray(cat["blend_index"][:n_det])):
        first.setdefault(int(b), i)
    src = np.concatenate([np.arange(n_det), [first[int(b)] for b in np.asarray(cat["blend_index"][n_det:])]])
    src = src.astype(int)
    x0 = np.asarray(table["blend_x0"], float)[src]
    y0 = np.asarray(table["blend_y0"], float)[src]
    cat["x"] = cat["x"] + x0
    cat["y"] = cat["y"] + y0
    cat["x"].description = "model centroid x, field pixel (0 = first pixel)"
    cat["y"].description = "model centroid y, field pixel (0 = first pixel)"
    at = cat.colnames.index("blend_index") + 1
    det = np.arange(len(cat)) < n_det
    cat.add_column(np.asarray(table["blend"])[src], name="blend", index=at)
    cat["blend"].description = "blend of the field (cutout)"
    cat.add_column(np.asarray(table["blend_size"])[src], name="blend_size", index=at + 1)
    cat["blend_size"].description = "number of detected sources in the blend"
    cat.add_column(np.where(det, np.asarray(table["x_det"], float)[src], np.nan), name="x_det", index=at + 2)
    cat.add_column(np.where(det, np.asarray(table["y_det"], float)[src], np.nan), name="y_det", index=at + 3)
    cat["x_det"].description = "detection x, field pixel (NaN: added by the fit, flag ADDED)"
    cat["y_det"].description = "detection y, field pixel (NaN: added by the fit, flag ADDED)"
    flags = np.asarray(cat["flags"], np.int64)
    flags[:n_det][np.asarray(table["edge"], bool)] |= FLAGS["EDGE"]
    cat["flags"][:] = flags
    cat.meta["field"] = [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
    cat.meta["workdir"] = str(work)
    if catalog is not None:
        write_catalog(cat, catalog)
    return cat
