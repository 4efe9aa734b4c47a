"""The survey's Zarr store: fixed padded shapes, region writes, per-blend status.

Layout (Zarr format 2, no consolidated metadata; open with
``xarray.open_zarr(path, consolidated=False)``)::

    blend (one per FITS file, catalog order of first appearance; chunk 1):
        file, status (0 pending, 1 done, 2 failed), fit_status, error,
        num_sources, num_steps, chi2_reduced, fit_time, measure_time (s)
        zero_point (blend, band; AB, from the file's header, NaN if unknown)
    blend, slot[, band]  (padded; ``source_valid`` marks real sources):
        source_flux, source_ra, source_dec, source_y, source_x, source_valid,
        source_row (catalog row, -1 for detected sources), and the measurements
        of :func:`scarlet_xr.scene.measure_scene` (:data:`MEASURE_VARS`):
        source_flux_err, source_x_err, source_y_err, source_ra_err,
        source_dec_err, source_r_half, source_r_half_pix, source_e1,
        source_e2, source_theta, source_pa, source_blendedness,
        source_masked_fraction, source_flags
    row (catalog order), band:
        flux, ra, dec, x, y, valid, blend_index and every measurement above
        without its ``source_`` prefix; ``flags`` of a row without a fit
        (failed, pending or unplaced) has the ``FAILED`` bit

Each blend is written by the worker that fitted it into its own chunks
(zarr writes every chunk atomically), with ``status`` last: a blend whose
status is not 1 or 2 is redone on the next run, so a worker killed mid-write
loses only its unfinished blend.
"""

from __future__ import annotations

import numpy as np

from ..xr import FLAGS

__all__ = [
    "PENDING", "DONE", "FAILED", "MEASURE_VARS", "TaskStore", "create_store", "open_store", "check_store",
    "write_blend",
    "write_rows",
]

PENDING, DONE, FAILED = 0, 1, 2
_ROW_CHUNK = 65536

_BLEND_VARS = {
    "file": (str, None),
    "status": ("i1", None),
    "fit_status": (str, None),
    "error": (str, None),
    "num_sources": ("i4", None),
    "num_steps": ("i4", None),
    "chi2_reduced": ("f4", np.nan),
    "fit_time": ("f4", np.nan),
    "measure_time": ("f4", np.nan),
}
_SLOT_VARS = {
    "source_ra": ("f8", np.nan),
    "source_dec": ("f8", np.nan),
    "source_y": ("f4", np.nan),
    "source_x": ("f4", np.nan),
    "source_valid": (bool, None),
    "source_row": ("i8", None),
}
#: Per-source measurements: ``name: (dtype, fill, per band, units, description)``; stored as
#: ``source_<name> (blend, slot[, band])`` and ``<name> (row[, band])``.
MEASURE_VARS = {
    "flux_err": ("f4", np.nan, True, "", "1-sigma flux error (Fisher, at the fit)"),
    "x_err": ("f4", np.nan, False, "pix", "1-sigma error of x (Fisher)"),
    "y_err": ("f4", np.nan, False, "pix", "1-sigma error of y (Fisher)"),
    "ra_err": ("f4", np.nan, False, "arcsec", "1-sigma error of ra * cos(dec) (Fisher)"),
    "dec_err": ("f4", np.nan, False, "arcsec", "1-sigma error of dec (Fisher)"),
    "r_half": ("f4", np.nan, False, "arcsec", "half-light radius of the model before the PSF "
               "(circular; NaN without WCS)"),
    "r_half_pix": ("f4", np.nan, False, "pix", "half-light radius of the model before the PSF (circular)"),
    "e1": ("f4", np.nan, False, "", "(Ixx - Iyy) / (Ixx + Iyy) of the model before the PSF"),
    "e2": ("f4", np.nan, False, "", "2 Ixy / (Ixx + Iyy) of the model before the PSF"),
    "theta": ("f4", np.nan, False, "deg", "major-axis angle from +x towards +y (pixel frame)"),
    "pa": ("f4", np.nan, False, "deg", "position angle of the major axis, east of north"),
    "blendedness": ("f4", np.nan, False, "", "share of the model flux in the footprint that belongs to "
                    "other sources"),
    "masked_fraction": ("f4", np.nan, False, "", "fraction of the footprint's pixels (inside the cutout) "
                        "that are masked"),
    # no fill value: xarray would decode flags == fill as missing (unwritten chunks read 0)
    "flags": ("i8", None, False, "", "bitmask, scarlet_xr.xr.FLAGS"),
    "kind_code": ("i2", -1, False, "", "model kind of the source: index in the store's attribute "
                  "kind_codes (-1: not fitted)"),
}
#: Model kinds as stored in ``kind_code`` (the store attribute ``kind_codes`` lists them).
KIND_CODES = ("point", "sersic", "bulge+disk", "monotonic", "free", "symmetric", "gaussian", "spergel",
              "starlet")


def kind_codes(kinds) -> np.ndarray:
    """``kind_code`` values of model kind names (-1 for a name not in :data:`KIND_CODES`)."""
    return np.asarray([KIND_CODES.index(k) if k in KIND_CODES else -1 for k in kinds], np.int16)
# slot variable -> row variable copied by write_rows (besides flux, ra, dec)
_ROW_COPY = {"source_x": "x", "source_y": "y", **{f"source_{k}": k for k in MEASURE_VARS}}


def create_store(path, *, files, bands, slots: int, n_rows: int, fingerprint: str, attrs=None):
    """Create an empty store (metadata only; unwritten chunks read as fill values)."""
    import zarr  # lazy: keeps `import scarlet_xr` light

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    nb, nband = len(files), len(bands)

    def arr(name, shape, chunks, dtype, fill, dims):
        return g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                              attributes={"_ARRAY_DIMENSIONS": dims})

    arr("band", (nband,), (nband,), str, None, ["band"])[:] = np.asarray(bands, dtype=object)
    for name, (dt, fill) in _BLEND_VARS.items():
        arr(name, (nb,), (1,), dt, fill, ["blend"])
    g["file"][:] = np.asarray([str(f) for f in files], dtype=object)
    g["status"].attrs.update({"flag_values": [PENDING, DONE, FAILED],
                              "flag_meanings": "pending done failed"})
    for name, (dt, fill) in _SLOT_VARS.items():
        arr(name, (nb, slots), (1, slots), dt, fill, ["blend", "slot"])
    arr("source_flux", (nb, slots, nband), (1, slots, nband), "f4", np.nan, ["blend", "slot", "band"])
    arr("zero_point", (nb, nband), (1, nband), "f8", np.nan, ["blend", "band"])
    rc = max(1, min(n_rows, _ROW_CHUNK))
    for name, (dt, fill, per_band, units, text) in MEASURE_VARS.items():
        attrs_ = {"units": units, "description": text}
        if per_band:
            arr(f"source_{name}", (nb, slots, nband), (1, slots, nband), dt, fill, ["blend", "slot", "band"])
            arr(name, (n_rows, nband), (rc, nband), dt, fill, ["row", "band"])
        else:
            arr(f"source_{name}", (nb, slots), (1, slots), dt, fill, ["blend", "slot"])
            arr(name, (n_rows,), (rc,), dt, fill, ["row"])
        g[f"source_{name}"].attrs.update(attrs_)
        g[name].attrs.update(attrs_)
    arr("flux", (n_rows, nband), (rc, nband), "f4", np.nan, ["row", "band"])
    arr("ra", (n_rows,), (rc,), "f8", np.nan, ["row"])
    arr("dec", (n_rows,), (rc,), "f8", np.nan, ["row"])
    arr("x", (n_rows,), (rc,), "f4", np.nan, ["row"])
    arr("y", (n_rows,), (rc,), "f4", np.nan, ["row"])
    arr("valid", (n_rows,), (rc,), bool, None, ["row"])
    arr("blend_index", (n_rows,), (rc,), "i8", None, ["row"])
    g.attrs.update({"catalog_fingerprint": fingerprint, "kind_codes": list(KIND_CODES), **(attrs or {})})
    return g


def open_store(path, mode: str = "r+"):
    """Open an existing store's Zarr group."""
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=2)


class TaskStore:
    """A store's Zarr group whose arrays are opened once, for the many writes of one task.

    Every ``group[name]`` reads the array's metadata from the store (0.8 ms each on a local
    disk): writing a blend's 30 arrays that way took half of :func:`write_blend`'s time (200
    blends: 5.1 of 11.4 s). Array shapes do not change during a run, so the handles are kept.

    Parameters
    ----------
    group : zarr.Group
        From :func:`open_store`.
    """

    def __init__(self, group):
        self.group = group
        self._arrays = {}

    def __getitem__(self, name: str):
        """The array ``name`` (opened on first use)."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self.group[name]
        return arr


def check_store(group) -> None:
    """Raise if a store lacks variables this version writes (a store of an older version).

    Raises
    ------
    ValueError
        Naming the missing variables and the version that wrote the store.
    """
    expected = ["zero_point", "measure_time", "x", "y"]
    expected += [f"source_{k}" for k in MEASURE_VARS] + list(MEASURE_VARS)
    have = set(group.array_keys())
    missing = [k for k in expected if k not in have]
    if missing:
        version = group.attrs.get("scarlet_xr_version", "unknown")
        raise ValueError(
            f"the survey store (written by scarlet_xr {version}) has no per-source measurements: it lacks "
            f"{missing}; expected {expected}. Deblend again into a new store (or --overwrite)."
        )


def read_status(group, indices=None) -> np.ndarray:
    """Per-blend status; chunks that cannot be read count as pending."""
    arr = group["status"]
    if indices is None:
        try:
            return np.asarray(arr[:], dtype=np.int8)
        except Exception:  # a damaged chunk: fall back to one read per blend
            indices = range(arr.shape[0])
    out = []
    for i in indices:
        try:
            out.append(int(arr[int(i)]))
        except Exception:
            out.append(PENDING)
    return np.asarray(out, dtype=np.int8)


def write_blend(group, i: int, result: dict) -> None:
    """Write one blend's results (region ``blend=i``), status last."""
    for name in _BLEND_VARS:
        if name in ("file", "status"):
            continue
        if name in result:
            group[name][i] = result[name]
    slots = group["source_valid"].shape[1]
    nband = group["source_flux"].shape[2]
    n = len(result.get("flux", ()))
    if n > slots:
        raise ValueError(f"blend {i}: {n} sources exceed the store's {slots} slots")

    def padded(values, fill, dtype, extra=()):
        out = np.full((slots,) + extra, fill, dtype=dtype)
        if n:
            out[:n] = values
        return out

    group["source_flux"][i] = padded(result.get("flux"), np.nan, np.float32, (nband,))
    for name, key, fill, dt in (
        ("source_ra", "ra", np.nan, np.float64),
        ("source_dec", "dec", np.nan, np.float64),
        ("source_y", "y", np.nan, np.float32),
        ("source_x", "x", np.nan, np.float32),
        ("source_row", "rows", -1, np.int64),
    ):
        group[name][i] = padded(result.get(key), fill, dt)
    measured = result.get("measurements", {})
    for name, (dt, fill, per_band, _, _) in MEASURE_VARS.items():
        fill = 0 if fill is None else fill
        group[f"source_{name}"][i] = padded(measured.get(name), fill, dt, (nband,) if per_band else ())
    if "zero_point" in result:
        group["zero_point"][i] = np.asarray(result["zero_point"], np.float64)
    group["source_valid"][i] = padded(np.ones(n, bool), False, bool)
    group["status"][i] = result["status"]


def write_rows(group) -> None:
    """Fill the ``row`` variables from the per-blend arrays (catalog order)."""
    n_rows = group["flux"].shape[0]
    if n_rows == 0:
        return
    rows = np.asarray(group["source_row"][:])
    valid = np.asarray(group["source_valid"][:]) & (rows >= 0)
    status = read_status(group)
    valid &= (status == DONE)[:, None]
    b, s = np.nonzero(valid)
    r = rows[b, s]
    flux = np.full((n_rows, group["flux"].shape[1]), np.nan, np.float32)
    ra = np.full(n_rows, np.nan)
    dec = np.full(n_rows, np.nan)
    ok = np.zeros(n_rows, bool)
    sf = np.asarray(group["source_flux"][:])
    flux[r] = sf[b, s]
    ra[r] = np.asarray(group["source_ra"][:])[b, s]
    dec[r] = np.asarray(group["source_dec"][:])[b, s]
    ok[r] = True
    group["flux"][:] = flux
    group["ra"][:] = ra
    group["dec"][:] = dec
    group["valid"][:] = ok
    for slot_name, row_name in _ROW_COPY.items():
        src = group[slot_name]
        fill = np.nan if src.dtype.kind == "f" else 0
        out = np.full(group[row_name].shape, fill, dtype=src.dtype)
        out[r] = np.asarray(src[:])[b, s]
        if row_name == "flags":
            out[~ok] |= FLAGS["FAILED"]
        group[row_name][:] = out
