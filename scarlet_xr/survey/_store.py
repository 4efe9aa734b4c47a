"""The survey's Zarr store: fixed padded shapes, region writes, per-blend status.

Layout (Zarr format 2, no consolidated metadata; open with
``xarray.open_zarr(path, consolidated=False)``)::

    blend (one per FITS file, catalog order of first appearance; chunk 1):
        file, status (0 pending, 1 done, 2 failed), fit_status, error,
        num_sources, num_steps, chi2_reduced, fit_time
    blend, slot[, band]  (padded; ``source_valid`` marks real sources):
        source_flux, source_ra, source_dec, source_y, source_x, source_valid,
        source_row (catalog row, -1 for detected sources)
    row (catalog order), band:
        flux, ra, dec, valid, blend_index

Each blend is written by the worker that fitted it into its own chunks
(zarr writes every chunk atomically), with ``status`` last: a blend whose
status is not 1 or 2 is redone on the next run, so a worker killed mid-write
loses only its unfinished blend.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PENDING", "DONE", "FAILED", "create_store", "open_store", "write_blend", "write_rows"]

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
}
_SLOT_VARS = {
    "source_ra": ("f8", np.nan),
    "source_dec": ("f8", np.nan),
    "source_y": ("f4", np.nan),
    "source_x": ("f4", np.nan),
    "source_valid": (bool, None),
    "source_row": ("i8", None),
}


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
    rc = max(1, min(n_rows, _ROW_CHUNK))
    arr("flux", (n_rows, nband), (rc, nband), "f4", np.nan, ["row", "band"])
    arr("ra", (n_rows,), (rc,), "f8", np.nan, ["row"])
    arr("dec", (n_rows,), (rc,), "f8", np.nan, ["row"])
    arr("valid", (n_rows,), (rc,), bool, None, ["row"])
    arr("blend_index", (n_rows,), (rc,), "i8", None, ["row"])
    g.attrs.update({"catalog_fingerprint": fingerprint, **(attrs or {})})
    return g


def open_store(path, mode: str = "r+"):
    """Open an existing store's Zarr group."""
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=2)


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
    for name in ("fit_status", "error", "num_sources", "num_steps", "chi2_reduced", "fit_time"):
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
