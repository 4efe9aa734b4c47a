"""Blend cutouts as multi-extension FITS files.

Layout written by :func:`write_blend_fits` and read by :func:`read_blend`:

- ``IMAGE``: data cube (band, y, x) with the celestial WCS in its header and
  ``BANDS`` (comma-separated band names);
- ``WEIGHT``: inverse variance (band, y, x), 0 = masked (or ``VARIANCE``);
- ``PSF``: PSF per band (band, h, w), odd sizes.

An AB zero point in the ``IMAGE`` header (``MAGZERO``, ``FLUXMAG0``, ...; see
:func:`scarlet_xr.xr.zero_point_from_header`) becomes ``attrs['zero_point']``.

A file with a single image HDU holding (band, y, x) or (y, x) and a ``PSF``
extension is accepted as well (weights 1). Files in other layouts are handed
to :func:`scarlet_xr.open_observation` when that reader is available.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..xr import make_observation, open_observation, zero_point_from_header

if TYPE_CHECKING:  # (astropy is imported where FITS is read or written: `import scarlet_xr` stays light)
    from astropy.wcs import WCS

__all__ = ["write_blend_fits", "read_blend", "read_blend_header"]


def write_blend_fits(
    path, data, *, weights, psf, bands, wcs: WCS | None = None, overwrite=True, header=None
) -> Path:
    """Write a blend cutout in the survey FITS layout (see module docstring).

    Parameters
    ----------
    path : str or Path
    data, weights : array (band, y, x)
    psf : array (band, h, w)
    bands : sequence of str
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the cutout's pixel (0, 0).
    overwrite : bool
    header : mapping, optional
        More ``IMAGE`` header cards (e.g. ``{"MAGZERO": 27.0}``).

    Returns
    -------
    Path
    """
    from astropy.io import fits

    data = np.asarray(data, np.float32)
    if data.ndim != 3:
        raise ValueError(f"data must have dims (band, y, x); got shape {data.shape}")
    if len(bands) != data.shape[0]:
        raise ValueError(f"expected {data.shape[0]} band names; got {len(bands)}")
    hdr = wcs.celestial.to_header(relax=True) if wcs is not None else fits.Header()
    hdr["BANDS"] = ",".join(str(b) for b in bands)
    for k, v in (header or {}).items():
        hdr[k] = v
    hdus = [
        fits.PrimaryHDU(),
        fits.ImageHDU(data, header=hdr, name="IMAGE"),
        fits.ImageHDU(np.asarray(weights, np.float32), name="WEIGHT"),
        fits.ImageHDU(np.asarray(psf, np.float32), name="PSF"),
    ]
    path = Path(path)
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)
    return path


def _image_hdu(hdul):
    if "IMAGE" in hdul:
        return hdul["IMAGE"]
    for h in hdul:
        if h.data is not None and h.name not in ("PSF", "WEIGHT", "VARIANCE", "MASK"):
            return h
    raise ValueError("the FITS file has no image HDU (expected an 'IMAGE' extension)")


def read_blend_header(path) -> dict:
    """Shape information of a blend file without reading pixels.

    Returns
    -------
    dict
        ``shape`` (y, x), ``bands`` (tuple of str), ``psf_shape`` (h, w).
    """
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        if "IMAGE" not in hdul or "PSF" not in hdul:
            return _foreign_header(path)
        hdr = hdul["IMAGE"].header
        shape = tuple(int(hdr[f"NAXIS{k}"]) for k in range(hdr["NAXIS"], 0, -1))
        ph = hdul["PSF"].header
        psf_shape = (int(ph["NAXIS2"]), int(ph["NAXIS1"]))
        nb = shape[0] if len(shape) == 3 else 1
        bands = tuple(hdr.get("BANDS", ",".join(f"b{i}" for i in range(nb))).split(","))
    return {"shape": shape[-2:], "bands": bands, "psf_shape": psf_shape}


def _foreign_header(path) -> dict:
    """Shape information of a file in another layout, read with the general FITS reader."""
    ds = open_observation(path)
    return {
        "shape": tuple(ds["data"].shape[-2:]),
        "bands": tuple(str(b) for b in ds["band"].values),
        "psf_shape": tuple(ds["psf"].shape[-2:]),
    }


def read_blend(path, name: str = "image"):
    """Read a blend cutout as an observation Dataset (see ``make_observation``).

    Raises
    ------
    ValueError
        If the file lacks the expected extensions or its content is invalid.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        if "PSF" not in hdul:
            return open_observation(path)
        img = _image_hdu(hdul)
        data = np.asarray(img.data, np.float64)
        if data.ndim == 2:
            data = data[None]
        hdr = img.header
        nb = data.shape[0]
        bands = hdr.get("BANDS", ",".join(f"b{i}" for i in range(nb))).split(",")
        wcs = WCS(hdr, naxis=2, relax=True) if "CTYPE1" in hdr else None
        kw = {}
        if "WEIGHT" in hdul:
            kw["weights"] = np.asarray(hdul["WEIGHT"].data, np.float64)
        elif "VARIANCE" in hdul:
            kw["variance"] = np.asarray(hdul["VARIANCE"].data, np.float64)
        psf = np.asarray(hdul["PSF"].data, np.float64)
        zero_point = zero_point_from_header(hdr)
    ds = make_observation(data, psf=psf, bands=bands, wcs=wcs, name=name, **kw)
    if zero_point is not None:
        ds.attrs["zero_point"] = zero_point
    return ds
