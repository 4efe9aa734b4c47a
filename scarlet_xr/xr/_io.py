"""Read observations from FITS files.

:func:`open_observation` is a thin front end: it resolves where each piece
(image, variance/weight, mask, PSF) comes from, reads it with astropy, and
hands the arrays to :func:`~scarlet_xr.xr.make_observation`, which validates
everything.  When no variance or weight is given, the noise is estimated from
the image background with ``sep`` (Source Extractor as a library).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..wcs import celestial_frame
from ._observation import BAND, make_observation
from ._photometry import zero_point_from_header

__all__ = ["open_observation", "estimate_background"]

logger = logging.getLogger(__name__)


def _open_fits(path) -> fits.HDUList:
    """Open a FITS file fully into memory; raise ValueError for unreadable files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such FITS file: {str(path)!r}")
    raw = path.read_bytes()  # read once: no file handle can leak when parsing fails
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            warnings.filterwarnings("error", message=".*truncated.*")
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
            for hdu in hdul:  # force reading every data block (truncated files fail here)
                _ = hdu.data
    except Exception as err:  # astropy raises OSError, TypeError, ValueError... for bad files
        raise ValueError(f"{path.name!r} is not a readable FITS file: {err}") from err
    return hdul


def _image_hdus(hdul) -> list[int]:
    return [
        i
        for i, h in enumerate(hdul)
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
        and h.data is not None
        and h.data.ndim in (2, 3)
    ]


def _select(hdul, which, path):
    """The HDU ``which`` (index or EXTNAME) of ``hdul``."""
    try:
        return hdul[which]
    except (KeyError, IndexError) as err:
        names = [h.name for h in hdul]
        raise ValueError(f"{Path(path).name!r} has no HDU {which!r}; it has {names}") from err


def _read_aux(source, hdul, path, what):
    """Read an auxiliary array (variance, weight, mask, PSF).

    ``source`` is an array, an HDU index / EXTNAME in the image file, or the
    path of another FITS file (its first image HDU is used).
    """
    if source is None:
        return None
    if isinstance(source, (np.ndarray, list, tuple)):
        return np.asarray(source)
    if isinstance(source, (int, np.integer)):
        hdu = _select(hdul, int(source), path)
    elif isinstance(source, str) and source.upper() in [h.name for h in hdul]:
        hdu = _select(hdul, source, path)
    elif isinstance(source, (str, os.PathLike)):
        other = _open_fits(source)
        idx = _image_hdus(other)
        if not idx:
            raise ValueError(f"{what} file {Path(source).name!r} has no 2-D or 3-D image HDU")
        hdu = other[idx[0]]
    else:
        raise TypeError(
            f"{what} must be an array, an HDU index or name, or a file path; got {type(source).__name__}"
        )
    if hdu.data is None:
        raise ValueError(f"the {what} HDU {hdu.name!r} has no data")
    return np.asarray(hdu.data)


def _header_bands(header, nb: int) -> list[str] | None:
    """Band names from ``BANDS`` (comma list), ``FILTER1..n``/``BAND1..n`` or ``FILTER``."""
    if "BANDS" in header:
        names = [b.strip() for b in str(header["BANDS"]).split(",") if b.strip()]
        if len(names) != nb:
            raise ValueError(f"header BANDS lists {len(names)} bands {names}; the image has {nb} planes")
        return names
    for key in ("FILTER", "BAND"):
        keys = [f"{key}{i + 1}" for i in range(nb)]
        if all(k in header for k in keys):
            return [str(header[k]).strip() for k in keys]
    if nb == 1:
        for key in ("FILTER", "BAND"):
            if key in header:
                return [str(header[key]).strip()]
    return None


def _read_wcs(header, path, allow_missing: bool) -> WCS | None:
    """Celestial WCS of an image header (CD or PC+CDELT forms)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2, relax=True)
        except Exception as err:
            raise ValueError(f"{Path(path).name!r}: invalid WCS in header: {err}") from err
    ctype = [str(c) for c in wcs.wcs.ctype]
    if not any(ctype):
        if allow_missing:
            return None
        raise ValueError(
            f"{Path(path).name!r} has no WCS: expected celestial CTYPE1/CTYPE2 (e.g. 'RA---TAN', "
            "'DEC--TAN') in the image header; got none. Pass allow_missing_wcs=True to work "
            "in pixel coordinates only."
        )
    if not wcs.has_celestial:
        raise ValueError(
            f"{Path(path).name!r}: the WCS must be celestial (RA/Dec axes); got axes {ctype}"
        )
    try:
        celestial_frame(wcs)
    except ValueError as err:
        raise ValueError(f"{Path(path).name!r}: {err}") from err
    return wcs.celestial


def estimate_background(image, *, mask=None, box: int = 16, thresh: float = 1.5):
    """Background level and noise of one image with ``sep``.

    Sources are found at ``thresh`` times a first noise estimate and masked,
    then the background is measured again on the remaining pixels.

    Parameters
    ----------
    image : array (y, x)
        One band (non-finite pixels must be masked).
    mask : bool array (y, x), optional
        True for pixels to ignore.
    box : int
        Size of sep's background mesh (clipped to the image size).
    thresh : float
        Detection threshold (in noise units) for the source mask.

    Returns
    -------
    level : float
        Global background level (sep ``globalback``).
    rms : float
        Global background noise (sep ``globalrms``), > 0.

    Raises
    ------
    ValueError
        If the noise cannot be measured (e.g. a constant image).
    """
    import sep

    img = np.ascontiguousarray(image, dtype=np.float64)
    m = np.zeros(img.shape, bool) if mask is None else np.ascontiguousarray(mask, bool)
    img = np.where(m, 0.0, img)
    b = int(max(4, min(box, min(img.shape) // 2)))
    bkg = sep.Background(img, mask=m, bw=b, bh=b, fw=3, fh=3)
    try:
        _, seg = sep.extract(
            img - bkg.back(), thresh, err=bkg.globalrms, mask=m, segmentation_map=True
        )
        m2 = m | (seg > 0)
        if np.mean(~m2) > 0.2:
            bkg = sep.Background(img, mask=m2, bw=b, bh=b, fw=3, fh=3)
    except Exception as err:  # sep raises generic exceptions on pathological inputs
        logger.info("sep source masking failed (%s); using the unmasked background", err)
    rms = float(bkg.globalrms)
    if not (np.isfinite(rms) and rms > 0):
        raise ValueError(
            f"cannot estimate the noise from the image background (sep rms = {rms}); "
            "give variance= or weight="
        )
    return float(bkg.globalback), rms


VARIANCE_HDUS = ("VARIANCE", "VAR")
"""HDU names read as the variance plane when ``variance``/``weight`` are not given."""
WEIGHT_HDUS = ("IVAR", "WEIGHT", "WHT")
"""HDU names read as inverse variance when no variance plane is found."""
STDDEV_HDUS = ("ERR", "SIGMA", "RMS", "STDDEV", "NOISE")
"""HDU names read as the noise standard deviation (variance = value**2) when no
variance or weight plane is found."""
MASK_HDUS = ("MASK", "BADPIX")
"""HDU names read as the bad-pixel mask (non-zero = bad) when ``mask`` is not given."""


def open_observation(
    path,
    *,
    psf=None,
    hdu=None,
    variance=None,
    weight=None,
    mask=None,
    bands=None,
    name: str | None = None,
    allow_missing_wcs: bool = False,
    recenter_psf: bool = False,
    subtract_background: bool = False,
) -> xr.Dataset:
    """Read an observation from FITS.

    Parameters
    ----------
    path : str or path-like
        FITS file with the image: a cube ``(band, y, x)`` or a single band
        ``(y, x)``. Its header gives the WCS (CD or PC+CDELT forms) and, when
        present, the band names (``BANDS = 'g,r,i'``, ``FILTER1..n`` or
        ``FILTER`` for a single band).
    psf : array, int, str or path-like, optional
        The PSF: an array, an HDU (index or EXTNAME) of this file, or another
        FITS file. Default: the HDU named ``PSF`` in this file. One PSF image
        per band, or one image used for all bands.
    hdu : int or str, optional
        The image HDU; default the first HDU holding a 2-D or 3-D image.
    variance, weight : array, int, str or path-like, optional
        Variance or inverse variance, as for ``psf`` (give at most one).
        Default: an HDU named as in :data:`VARIANCE_HDUS` or, failing that,
        :data:`WEIGHT_HDUS` or, failing that, a noise standard deviation HDU
        (:data:`STDDEV_HDUS`, squared) (recorded in ``attrs["planes"]``).
        Other image HDUs that are not used are never ignored silently: they
        are logged (warning) and listed in ``attrs["ignored_hdus"]``. When none is
        given nor found, the noise is estimated from the background of each
        band with ``sep`` (a constant variance per band) and
        ``attrs["noise_estimated"] = 1``; the measured levels are kept in the
        variables ``background`` and ``background_rms`` (band).
    mask : array, int, str or path-like, optional
        Bad-pixel mask, as for ``psf``; non-zero marks a bad pixel (weight 0).
        Default: an HDU named as in :data:`MASK_HDUS`, if present.
    bands : sequence of str, optional
        Band names; default from the header, else ``"<name>0", "<name>1", ...``
        (prefixed so that bands of different files never merge by accident).
    name : str, optional
        Observation name; default the file stem.
    allow_missing_wcs : bool
        Accept an image without WCS (pixel coordinates only). Default False:
        a missing WCS raises.
    recenter_psf : bool
        Shift each PSF band by whole pixels so that its brightest pixel is the
        central one (pixels shifted in are 0), and record the shift in
        ``attrs["psf_shift"]``. Use it for PSF files whose peak is not on the
        central pixel (e.g. the HST PSF shipped with scarlet's examples);
        otherwise an off-centre PSF raises.
    subtract_background : bool
        Subtract the ``sep`` background level (global, per band) from the
        image; recorded in ``attrs["background_subtracted"]``. Default False:
        pixel values are never changed silently.

    Returns
    -------
    xarray.Dataset
        An observation (see :func:`~scarlet_xr.make_observation`).

    Raises
    ------
    FileNotFoundError
        If ``path`` (or an auxiliary file) does not exist.
    ValueError
        Corrupt or unreadable FITS, no image HDU, a missing or non-celestial
        WCS, and everything :func:`~scarlet_xr.make_observation` rejects
        (shape mismatches, variance <= 0, PSF of even size, off-centre or
        with a band count different from the image, an all-masked image).

    Notes
    -----
    The PSF is normalised to unit sum per band (a cut-out PSF usually misses a
    little flux in its wings); non-finite pixels are masked, counted in
    ``attrs["n_nonfinite_masked"]`` and reported in a log warning.
    """
    hdul = _open_fits(path)
    if hdu is None:
        idx = _image_hdus(hdul)
        if not idx:
            raise ValueError(f"{Path(path).name!r} has no 2-D or 3-D image HDU")
        img_hdu = hdul[idx[0]]
    else:
        img_hdu = _select(hdul, hdu, path)
    if img_hdu.data is None or img_hdu.data.ndim not in (2, 3):
        shape = None if img_hdu.data is None else img_hdu.data.shape
        raise ValueError(f"the image must be 2-D (y, x) or 3-D (band, y, x); got shape {shape}")
    data = np.asarray(img_hdu.data)  # native dtype: make_observation stores float32 (no float64 copy)
    if data.dtype.kind not in "iuf":
        raise ValueError(f"the image must hold real numbers; got dtype {data.dtype}")
    if data.ndim == 2:
        data = data[None]
    nb = data.shape[0]
    header = img_hdu.header
    name = Path(path).stem if name is None else str(name)
    wcs = _read_wcs(header, path, allow_missing_wcs)
    if bands is None:
        bands = _header_bands(header, nb) or [f"{name}{i}" for i in range(nb)]
    if psf is None:
        if "PSF" not in [h.name for h in hdul]:
            raise ValueError(
                f"{Path(path).name!r} has no 'PSF' HDU; give psf= (an array, HDU or FITS file)"
            )
        psf = "PSF"
    psf_arr = _read_aux(psf, hdul, path, "PSF")
    if psf_arr is None:
        raise ValueError("a PSF is required")
    psf_arr = np.asarray(psf_arr, np.float64)
    extra = {}
    if recenter_psf:
        psf_arr, shifts = _recenter(psf_arr)
        extra["psf_shift"] = np.asarray(shifts, np.int64).ravel()
    if variance is not None and weight is not None:
        raise ValueError("give variance or weight, not both")
    hdu_names = [h.name for h in hdul]
    planes = {}
    stddev = None
    if variance is None and weight is None:
        variance = next((n for n in VARIANCE_HDUS if n in hdu_names), None)
        weight = None if variance is not None else next((n for n in WEIGHT_HDUS if n in hdu_names), None)
        if variance is None and weight is None:
            stddev = next((n for n in STDDEV_HDUS if n in hdu_names), None)
        for what, hname in (("variance", variance), ("weight", weight), ("stddev", stddev)):
            if hname is not None:
                planes[what] = hname
    if mask is None:
        mask = next((n for n in MASK_HDUS if n in hdu_names), None)
        if mask is not None:
            planes["mask"] = mask
    if planes:
        logger.info("%s: using planes %s", Path(path).name,
                    ", ".join(f"{k}={v!r}" for k, v in planes.items()))
        extra["planes"] = ",".join(f"{k}={v}" for k, v in planes.items())
    ignored = _ignored_hdus(hdul, img_hdu, (psf, variance, weight, stddev, mask))
    if ignored:
        logger.warning(
            "%s: ignoring image HDU(s) %s (not read as image, PSF, variance, weight or mask; "
            "pass them explicitly with psf=, variance=, weight= or mask=)", Path(path).name, ignored,
        )
        extra["ignored_hdus"] = ",".join(ignored)
    if stddev is not None:
        sd = np.asarray(_read_aux(stddev, hdul, path, "stddev"), np.float64)
        logger.info("%s: noise standard deviation read from HDU %r (variance = value**2)",
                    Path(path).name, stddev)
        variance = np.where(sd > 0, sd**2, np.where(np.isfinite(sd), 0.0, np.nan))
    var_arr = _read_aux(variance, hdul, path, "variance")
    w_arr = _read_aux(weight, hdul, path, "weight")
    m_arr = _read_aux(mask, hdul, path, "mask")
    if m_arr is not None:
        m_arr = np.asarray(m_arr)
        if m_arr.ndim == 2:
            m_arr = m_arr[None]
        if m_arr.shape[1:] != data.shape[1:] or m_arr.shape[0] not in (1, nb):
            raise ValueError(f"mask must match the image shape {data.shape}; got {m_arr.shape}")
        m_arr = np.broadcast_to(m_arr != 0, data.shape)
    estimated = var_arr is None and w_arr is None
    level = rms = None
    if estimated or subtract_background:
        bad = ~np.isfinite(data) if m_arr is None else (~np.isfinite(data) | m_arr)
        if np.all(bad):
            raise ValueError("all pixels are masked or non-finite; nothing to fit")
        stats = [estimate_background(d, mask=b) for d, b in zip(data, bad, strict=True)]
        level = np.array([s[0] for s in stats])
        rms = np.array([s[1] for s in stats])
        if subtract_background:
            data = np.subtract(data, level[:, None, None], dtype=np.float32)
        if estimated:
            var_arr = np.broadcast_to((rms**2)[:, None, None], data.shape)  # a view: no full-size copy
    try:
        ds = make_observation(
            data,
            psf=psf_arr,
            weights=w_arr,
            variance=var_arr,
            mask=m_arr,
            bands=bands,
            wcs=wcs,
            name=name,
            noise_estimated=estimated,
        )
    except ValueError as err:
        if "centred" in str(err) and not recenter_psf:
            raise ValueError(
                f"{err}; if the PSF peak is simply off the central pixel, pass recenter_psf=True"
            ) from err
        raise
    if level is not None:
        ds["background"] = (BAND, level)
        ds["background_rms"] = (BAND, rms)
        ds["background"].attrs["description"] = "sep global background level per band"
        ds["background_rms"].attrs["description"] = "sep global background noise per band"
    ds.attrs["background_subtracted"] = int(bool(subtract_background))
    ds.attrs["source_file"] = Path(path).name
    zp = zero_point_from_header(header)
    if zp is not None:
        ds.attrs["zero_point"] = zp  # AB magnitudes in the catalog (MAGZERO/FLUXMAG0/PHOTFLAM)
    if header.get("BUNIT"):
        ds.attrs["units"] = str(header["BUNIT"]).strip()
    ds.attrs.update(extra)
    if ds.attrs["n_nonfinite_masked"]:
        logger.warning(
            "%s: %d non-finite pixels were masked", Path(path).name, ds.attrs["n_nonfinite_masked"]
        )
    return ds


def _ignored_hdus(hdul, img_hdu, used) -> list[str]:
    """Names (or indices) of the image HDUs of ``hdul`` that are not ``img_hdu`` nor in ``used``."""
    names = {u.upper() for u in used if isinstance(u, str)}
    idx = {int(u) for u in used if isinstance(u, (int, np.integer))}
    out = []
    for i in _image_hdus(hdul):
        h = hdul[i]
        if h is img_hdu or i in idx or (h.name and h.name.upper() in names):
            continue
        out.append(h.name if h.name and h.name != "PRIMARY" else str(i))
    return out


def _recenter(psf):
    """Shift each band by whole pixels so that its peak is the central pixel."""
    cube = psf[None] if psf.ndim == 2 else psf
    out = np.zeros_like(cube)
    shifts = []
    for k, img in enumerate(cube):
        h, w = img.shape
        py, px = np.unravel_index(np.nanargmax(img), img.shape)
        dy, dx = h // 2 - int(py), w // 2 - int(px)
        shifts.append((dy, dx))
        ys = slice(max(dy, 0), h + min(dy, 0))
        xs = slice(max(dx, 0), w + min(dx, 0))
        yo = slice(max(-dy, 0), h + min(-dy, 0))
        xo = slice(max(-dx, 0), w + min(-dx, 0))
        out[k, ys, xs] = img[yo, xo]
    return (out[0] if psf.ndim == 2 else out), shifts
