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
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..wcs import celestial_frame
from ._observation import BAND, make_observation
from ._photometry import zero_point_from_header

if TYPE_CHECKING:  # (astropy is imported where FITS or a WCS is used: `import scarlet_xr` stays light)
    from astropy.io import fits
    from astropy.wcs import WCS

__all__ = ["open_observation", "estimate_background"]

logger = logging.getLogger(__name__)


def _open_fits(path) -> fits.HDUList:
    """Open a FITS file fully into memory; raise ValueError for unreadable files."""
    from astropy.io import fits

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
    from astropy.io import fits

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
    """Read an auxiliary array (variance, weight, mask, PSF); see :func:`_read_plane`."""
    return _read_plane(source, hdul, path, what)[0]


def _read_plane(source, hdul, path, what):
    """Read an auxiliary plane: ``(array, header, label)``.

    ``source`` is an array, an HDU index / EXTNAME in the image file, or the
    path of another FITS file (its first image HDU is used). ``header`` is the
    header of the HDU read (None for arrays) and ``label`` says where the plane
    came from, for messages (``"HDU 'MASK'"``, ``"file 'm.fits'"``, ``"array"``).
    """
    if source is None:
        return None, None, None
    if isinstance(source, (np.ndarray, list, tuple)):
        return np.asarray(source), None, "array"
    names = [h.name for h in hdul]
    if isinstance(source, (int, np.integer)):
        hdu = _select(hdul, int(source), path)
        label = f"HDU {int(source)}" + (f" ({hdu.name!r})" if hdu.name else "")
    elif isinstance(source, str) and source.upper() in names:
        hdu = _select(hdul, source, path)
        label = f"HDU {hdu.name!r}"
    elif isinstance(source, (str, os.PathLike)):
        if not Path(source).exists():
            raise FileNotFoundError(
                f"the {what} {str(source)!r} is neither an HDU of {Path(path).name!r} (it has {names}) "
                "nor an existing FITS file"
            )
        other = _open_fits(source)
        idx = _image_hdus(other)
        if not idx:
            raise ValueError(f"{what} file {Path(source).name!r} has no 2-D or 3-D image HDU")
        hdu = other[idx[0]]
        label = f"file {Path(source).name!r}"
    else:
        raise TypeError(
            f"{what} must be an array, an HDU index or name, or a file path; got {type(source).__name__}"
        )
    if hdu.data is None:
        raise ValueError(f"the {what} HDU {hdu.name!r} has no data")
    return np.asarray(hdu.data), hdu.header, label


def _plane_name(source) -> str | None:
    """How a plane given as ``source`` is recorded in ``attrs["planes"]`` (None for arrays)."""
    if source is None or isinstance(source, (np.ndarray, list, tuple)):
        return None
    if isinstance(source, (int, np.integer)):
        return f"#{int(source)}"
    if isinstance(source, os.PathLike) or (isinstance(source, str) and Path(source).exists()):
        return Path(source).name
    return str(source).upper()


def _mask_plane_names(header) -> dict[str, int]:
    """Named bit planes of an integer mask, as LSST/HSC files record them.

    Parameters
    ----------
    header : astropy.io.fits.Header or None
        Header of the mask HDU.

    Returns
    -------
    dict
        Bit index (0 = least significant) by plane name (upper case), from
        the keywords ``MP_<NAME> = <bit>`` (e.g. ``MP_BAD = 0``,
        ``MP_SAT = 1``, ``HIERARCH MP_NO_DATA = 8``); empty when there are none.
    """
    out = {}
    if header is None:
        return out
    for key in header:
        if key.upper().startswith("MP_") and len(key) > 3:
            value = header[key]
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                out[key[3:].upper()] = int(value)
    return out


def resolve_mask_bits(mask_bits, header, *, label: str = "MASK", nbits: int = 32) -> dict[str, int]:
    """Mask bits to reject, by name (``MP_<NAME>`` header keywords) or number, as ``{name: bit}``.

    Parameters
    ----------
    mask_bits : int, str or sequence
        Bit numbers and/or names, e.g. ``"BAD,SAT,NO_DATA"`` or ``[0, "SAT"]``.
    header : mapping or None
        Header of the mask plane (its ``MP_<NAME> = <bit>`` keywords name the bits).
    label : str
        The plane, for messages.
    nbits : int
        Bits of the mask's integer type.

    Returns
    -------
    dict

    Raises
    ------
    ValueError, TypeError
        An unknown name (the known ones listed), a bit out of range, or an empty list.
    """
    return _resolve_mask_bits(mask_bits, header, label, nbits)


def _resolve_mask_bits(mask_bits, header, label, nbits) -> dict[str, int]:
    """``mask_bits`` (names and/or bit numbers) as ``{label: bit}``."""
    if isinstance(mask_bits, (int, np.integer)):
        items = [int(mask_bits)]
    elif isinstance(mask_bits, str):
        items = [b.strip() for b in mask_bits.split(",") if b.strip()]
    else:
        items = [b.strip() if isinstance(b, str) else b for b in mask_bits]
    if not items:
        raise ValueError(f"mask_bits must name at least one bit; got {mask_bits!r}")
    known = _mask_plane_names(header)
    out = {}
    for item in items:
        if isinstance(item, str) and not item.lstrip("+-").isdigit():
            if not known:
                raise ValueError(
                    f"mask bit {item!r}: the mask plane ({label}) names no bit planes (no MP_<NAME> "
                    f"keywords in its header); give bit numbers instead, e.g. 0,1,8"
                )
            if item.upper() not in known:
                raise ValueError(
                    f"mask bit {item!r} is not named in the header of the mask plane ({label}); "
                    f"expected one of {sorted(known)} or a bit number"
                )
            name, bit = item.upper(), known[item.upper()]
        elif isinstance(item, (str, int, np.integer)) and not isinstance(item, bool):
            bit = int(item)
            name = str(bit)
        else:
            raise TypeError(f"mask_bits must hold bit names or numbers; got {item!r}")
        if not 0 <= bit < nbits:
            raise ValueError(
                f"mask bit {name} = {bit} does not exist in the {nbits}-bit mask plane ({label}); "
                f"expected 0..{nbits - 1}"
            )
        out[name] = bit
    return out


def _mask_to_bool(m_arr, header, label, mask_bits, shape, fname):
    """Boolean bad-pixel mask of ``shape`` from a mask plane; ``(mask, bits)``."""
    m_arr = np.asarray(m_arr)
    got = m_arr.shape
    if m_arr.ndim == 2:
        m_arr = m_arr[None]
    if m_arr.ndim != 3 or m_arr.shape[1:] != shape[1:] or m_arr.shape[0] not in (1, shape[0]):
        raise ValueError(f"mask must match data shape {shape}; got {got} (mask plane: {label})")
    bits = None
    if mask_bits is None:
        bad = m_arr != 0
        named = _mask_plane_names(header)
        if named and np.any(bad):
            logger.warning(
                "%s: the mask plane (%s) names bit planes %s; every non-zero value rejects a pixel "
                "(%d pixels, %.1f%%). Pass mask_bits= (--mask-bits), e.g. BAD,SAT,NO_DATA, to reject "
                "only some", fname, label, sorted(named, key=named.get), int(np.count_nonzero(bad)),
                100 * np.mean(bad),
            )
    else:
        if m_arr.dtype.kind not in "iu":
            raise ValueError(
                f"mask_bits needs an integer bitmask; the mask plane ({label}) has dtype {m_arr.dtype}"
            )
        bits = _resolve_mask_bits(mask_bits, header, label, 8 * m_arr.dtype.itemsize)
        udt = np.dtype(f"u{m_arr.dtype.itemsize}")
        select = np.array(sum(1 << b for b in set(bits.values())), dtype=udt)
        bad = (m_arr.astype(udt, copy=False) & select) != 0  # signed values wrap: bits are kept
        logger.info("%s: mask bits %s of the mask plane (%s) reject %d pixels", fname,
                    ",".join(f"{k}={v}" if k != str(v) else k for k, v in bits.items()), label,
                    int(np.count_nonzero(bad)))
    return np.broadcast_to(bad, shape), bits


def _check_noise_plane(arr, kind, label, data, mask):
    """Refuse a variance / standard deviation / weight plane of the wrong shape or with bad values."""
    arr = np.asarray(arr)
    got = arr.shape
    if arr.ndim == 2:
        arr = arr[None]
    what = "weights" if kind == "weight" else kind
    if arr.shape != data.shape:
        raise ValueError(f"{what} must match data shape {data.shape}; got {got} ({kind} plane: {label})")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"the {kind} plane ({label}) must hold real numbers; got dtype {arr.dtype}")
    if kind == "weight":
        neg = arr < 0  # NaN compares False: non-finite weights become 0 in make_observation
        if np.any(neg):
            where = tuple(int(i[0]) for i in np.nonzero(neg))
            raise ValueError(
                f"weights must be >= 0; got {int(np.count_nonzero(neg))} pixels < 0, minimum "
                f"{np.nanmin(arr):.4g}, e.g. {arr[where]:.4g} at (band, y, x) = {where} "
                f"({kind} plane: {label})"
            )
        return
    bad = ~(arr > 0) & np.isfinite(data)
    if mask is not None:
        bad &= ~mask
    if np.any(bad):
        where = tuple(int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"{kind} must be > 0 on unmasked pixels; got {int(np.count_nonzero(bad))} pixels with "
            f"{kind} <= 0 or non-finite, e.g. {arr[where]:.4g} at (band, y, x) = {where} "
            f"({kind} plane: {label}); mask them with mask= (--mask)"
        )


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
    from astropy.wcs import WCS, FITSFixedWarning

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
    mask_bits=None,
    bands=None,
    name: str | None = None,
    allow_missing_wcs: bool = False,
    recenter_psf: bool = False,
    subtract_background: bool = False,
    correlated=False,
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
        Variance or inverse variance (give at most one): an array, an HDU
        (index or EXTNAME) of this file, or the path of another FITS file (its
        first image HDU). Either overrides the detection by name. Default: an
        HDU named as in :data:`VARIANCE_HDUS` or, failing that,
        :data:`WEIGHT_HDUS` or, failing that, a noise standard deviation HDU
        (:data:`STDDEV_HDUS`, squared). The planes used (found or given, except
        arrays) are logged and recorded in ``attrs["planes"]``, e.g.
        ``"variance=VARIANCE,mask=MASK"`` or ``"weight=w.fits"``.
        Other image HDUs that are not used are never ignored silently: they
        are logged (warning) and listed in ``attrs["ignored_hdus"]``. When none is
        given nor found, the noise is estimated from the background of each
        band with ``sep`` (a constant variance per band) and
        ``attrs["noise_estimated"] = 1``; the measured levels are kept in the
        variables ``background`` and ``background_rms`` (band).
        A plane must have the image's shape (a 2-D plane for a 2-D image);
        the variance (or standard deviation) must be > 0 and finite on every
        unmasked pixel with finite data, the weight >= 0 everywhere.
    mask : array, int, str or path-like, optional
        Bad-pixel mask, given as ``variance`` (one plane for all bands or one
        per band); a masked pixel gets weight 0 and may carry any variance.
        Default: an HDU named as in :data:`MASK_HDUS`, if present. Without
        ``mask_bits`` every non-zero value marks a bad pixel (a warning says
        so when the header names bit planes, see below).
    mask_bits : str, int or sequence of str and int, optional
        For an integer bitmask: reject only the pixels with one of these bits
        set, e.g. ``"BAD,SAT,NO_DATA"``, ``["BAD", 8]`` or ``5``. Bits are
        numbers (0 = least significant) or names, looked up in the mask
        HDU's header as LSST/HSC files record them (keywords
        ``MP_<NAME> = <bit>``, e.g. ``MP_BAD = 0``, ``HIERARCH MP_NO_DATA = 8``).
        Recorded in ``attrs["mask_bits"]`` (e.g. ``"BAD=0,SAT=1"``).
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
    correlated : bool or array
        Mark the image as resampled or coadded (correlated noise): ``True``
        estimates a 7x7 noise correlation kernel from the source-free pixels,
        an array gives it (see :func:`~scarlet_xr.xr.with_noise_correlation`);
        the fit then uses :class:`~scarlet_xr.core.CorrelatedGaussianLikelihood`.

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
        WCS, a plane of the wrong shape, a variance <= 0 on an unmasked pixel,
        a weight < 0 (each message names the plane and where it came from),
        ``mask_bits`` without a mask plane, on a non-integer mask, naming a bit
        the header does not know (the message lists the known names) or out
        of range, and everything :func:`~scarlet_xr.make_observation` rejects
        (PSF of even size, off-centre or with a band count different from the
        image, an all-masked image).

    Notes
    -----
    The PSF is normalised to unit sum per band (a cut-out PSF usually misses a
    little flux in its wings); non-finite pixels are masked, counted in
    ``attrs["n_nonfinite_masked"]`` and reported in a log warning. Integer
    images with ``BSCALE``/``BZERO`` are read as their scaled values
    (``BZERO + BSCALE * stored``), as astropy returns them.
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
    if mask is None:
        mask = next((n for n in MASK_HDUS if n in hdu_names), None)
    for what, src in (("variance", variance), ("weight", weight), ("stddev", stddev), ("mask", mask)):
        if _plane_name(src) is not None:
            planes[what] = _plane_name(src)
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
    m_arr, m_hdr, m_label = _read_plane(mask, hdul, path, "mask")
    if m_arr is not None:
        m_arr, bits = _mask_to_bool(m_arr, m_hdr, m_label, mask_bits, data.shape, Path(path).name)
        if bits is not None:
            extra["mask_bits"] = ",".join(f"{k}={v}" if k != str(v) else k for k, v in bits.items())
    elif mask_bits is not None:
        raise ValueError(
            f"mask_bits={mask_bits!r} given but there is no mask plane: {Path(path).name!r} has no HDU "
            f"named {' or '.join(MASK_HDUS)} and no mask= (--mask) was given"
        )
    if stddev is not None:
        sd, _, sd_label = _read_plane(stddev, hdul, path, "stddev")
        _check_noise_plane(sd, "stddev", sd_label, data, m_arr)
        sd = np.asarray(sd, np.float64)
        logger.info("%s: noise standard deviation read from HDU %r (variance = value**2)",
                    Path(path).name, stddev)
        variance = np.where(sd > 0, sd**2, np.where(np.isfinite(sd), 0.0, np.nan))
        del sd
    var_arr, _, var_label = _read_plane(variance, hdul, path, "variance")
    if var_arr is not None and stddev is None:
        _check_noise_plane(var_arr, "variance", var_label, data, m_arr)
    w_arr, _, w_label = _read_plane(weight, hdul, path, "weight")
    if w_arr is not None:
        _check_noise_plane(w_arr, "weight", w_label, data, m_arr)
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
    if correlated is not False:
        from ._noise import with_noise_correlation

        ds = with_noise_correlation(ds, "estimate" if correlated is True else correlated)
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
