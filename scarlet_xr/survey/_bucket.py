"""Canonical shapes: pad blends so that a catalog compiles a handful of times.

A blend is padded to a square stamp from :data:`STAMP_SIZES` (padded pixels
get weight 0), its PSF to a size from :data:`PSF_SIZES` (zeros), its source
count to one of :data:`SLOT_COUNTS` (inactive placeholder sources) and every
free-form box to the stamp's canonical box (zero pixels, which the softplus
parameterisation keeps at zero). Blends with equal :class:`BucketKey` then
have identical pytree structure and are fitted together with ``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import numpy as np
import xarray as xr

from ..core import FreeFormMorphology, SceneModel, Source, Spectrum
from ..scene import BOX_SIZES, initialize_sources
from ..xr import BAND, X, Y, frame_from_observations, likelihood_for

__all__ = ["BucketKey", "bucket_key", "prepare_blend", "STAMP_SIZES", "SLOT_COUNTS", "PSF_SIZES"]

STAMP_SIZES = (32, 48, 64, 96, 128, 192, 256, 384, 512)
SLOT_COUNTS = (2, 4, 8, 16, 32, 64, 128)
PSF_SIZES = (11, 15, 21, 25, 31, 41, 51, 61, 81, 101)


class BucketKey(NamedTuple):
    """Static shape of a bucket: stamp size, source slots, box size, PSF size, bands."""

    stamp: int
    slots: int
    box: int
    psf: int
    bands: tuple[str, ...]


def _round_up(value: int, choices, what: str) -> int:
    for c in choices:
        if c >= value:
            return c
    raise ValueError(f"{what} {value} exceeds the largest supported value {choices[-1]}")


def bucket_key(shape, num_sources: int, psf_shape, bands) -> BucketKey:
    """Return the canonical bucket of a blend.

    Parameters
    ----------
    shape : (int, int)
        Cutout size ``(y, x)``.
    num_sources : int
    psf_shape : (int, int)
    bands : sequence of str

    Raises
    ------
    ValueError
        If a size exceeds the largest canonical value or ``num_sources < 1``.
    """
    if num_sources < 1:
        raise ValueError(f"a blend needs at least one source; got {num_sources}")
    stamp = _round_up(max(shape), STAMP_SIZES, "stamp size")
    box = max(b for b in BOX_SIZES if b <= stamp)
    return BucketKey(
        stamp=stamp,
        slots=_round_up(num_sources, SLOT_COUNTS, "number of sources"),
        box=box,
        psf=_round_up(max(psf_shape), PSF_SIZES, "PSF size"),
        bands=tuple(str(b) for b in bands),
    )


def pad_observation(ds: xr.Dataset, stamp: int, psf_size: int) -> xr.Dataset:
    """Pad an observation to ``stamp x stamp`` (weight 0) and its PSF to ``psf_size``.

    Pixels are appended after the last row and column, so pixel coordinates
    and the WCS of the original pixels are unchanged.
    """
    ny, nx = ds.sizes[Y], ds.sizes[X]
    ph, pw = ds["psf"].shape[-2:]
    if ny > stamp or nx > stamp or ph > psf_size or pw > psf_size:
        raise ValueError(
            f"cannot pad a {ny}x{nx} cutout with a {ph}x{pw} PSF to stamp {stamp}, PSF {psf_size}"
        )
    nb = ds.sizes[BAND]
    data = np.zeros((nb, stamp, stamp), np.float32)
    weight = np.zeros((nb, stamp, stamp), np.float32)
    data[:, :ny, :nx] = ds["data"].values
    weight[:, :ny, :nx] = ds["weight"].values
    psf = np.zeros((nb, psf_size, psf_size))
    oy, ox = (psf_size - ph) // 2, (psf_size - pw) // 2
    psf[:, oy : oy + ph, ox : ox + pw] = ds["psf"].values
    y0, x0 = int(ds[Y].values[0]), int(ds[X].values[0])
    out = xr.Dataset(
        {
            "data": ((BAND, Y, X), data),
            "weight": ((BAND, Y, X), weight),
            "psf": ((BAND, "psf_y", "psf_x"), psf),
        },
        coords={BAND: ds[BAND].values, Y: np.arange(y0, y0 + stamp), X: np.arange(x0, x0 + stamp)},
        attrs=dict(ds.attrs),
    )
    return out


def _pad_image(img: np.ndarray, box: int) -> np.ndarray:
    h, w = img.shape
    if h > box or w > box:
        cy, cx = h // 2, w // 2
        r = box // 2
        return img[cy - r : cy + r + 1, cx - r : cx + r + 1]
    out = np.zeros((box, box))
    oy, ox = (box - h) // 2, (box - w) // 2
    out[oy : oy + h, ox : ox + w] = img
    return out


@eqx.filter_jit
def _initial_values(source):
    """Free-form image and spectrum of an initialised source (one compile per box size)."""
    comp = source.components[0]
    return comp.morphology.image.value, comp.spectrum()


def prepare_blend(ds: xr.Dataset, centers, key: BucketKey):
    """Build the padded model and likelihood of one blend for bucket ``key``.

    Parameters
    ----------
    ds : Dataset
        The blend's observation (unpadded).
    centers : array (n, 2)
        Source centres ``(y, x)`` in pixels of ``ds`` (0 = first pixel).
    key : BucketKey

    Returns
    -------
    model : SceneModel
        ``key.slots`` free-form sources with ``key.box`` boxes; the first
        ``n`` are active.
    likelihood : GaussianLikelihood
    frame : Frame
        The padded model frame (same WCS as ``ds``).

    Raises
    ------
    ValueError
        If the blend does not fit the bucket or a source cannot be initialised.
    """
    centers = np.atleast_2d(np.asarray(centers, float))
    n = len(centers)
    if n > key.slots:
        raise ValueError(f"blend has {n} sources but the bucket has {key.slots} slots")
    bands = tuple(str(b) for b in ds[BAND].values)
    if bands != key.bands:
        raise ValueError(f"blend bands {bands} differ from the bucket's {key.bands}")
    padded = pad_observation(ds, key.stamp, key.psf)
    frame = frame_from_observations(padded)
    sources = initialize_sources(frame, padded, centers, kinds="free", max_box=key.box)
    out = []
    for k, s in enumerate(sources):
        img, spec = (np.asarray(x) for x in _initial_values(s))
        morph = FreeFormMorphology(_pad_image(img, key.box))
        out.append(Source(np.asarray(s.center.value), Spectrum(spec), morph, name=f"slot{k}"))
    mid = np.array([key.stamp // 2, key.stamp // 2], float)
    for k in range(n, key.slots):
        out.append(
            Source(mid, Spectrum(np.ones(len(bands))), FreeFormMorphology(np.zeros((key.box, key.box))),
                   name=f"slot{k}")
        )
    active = np.r_[np.ones(n), np.zeros(key.slots - n)]
    model = SceneModel(out, frame.cube_shape, active=active)
    return model, likelihood_for(padded, frame), frame
