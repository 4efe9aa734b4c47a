"""A simulated survey field (GalSim): one large multi-band image with its planes and truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._simulate import BANDS, _wcs

__all__ = ["simulate_field", "MASK_BITS"]

#: Bits of the simulated ``MASK`` plane (also named in its header, ``MP_<NAME>`` as LSST/HSC files do).
MASK_BITS = {"BAD": 1, "SAT": 2}


def _draw(field, prof, x, y, size, scale, galsim):
    """Add ``prof`` centred on field pixel ``(x, y)`` (0-based) into ``field`` (y, x), clipped."""
    ix, iy = int(np.rint(x)), int(np.rint(y))
    c = size // 2
    img = prof.drawImage(nx=size, ny=size, scale=scale, offset=(x - ix, y - iy)).array
    ny, nx = field.shape
    y0, x0 = iy - c, ix - c
    fy0, fx0, fy1, fx1 = max(y0, 0), max(x0, 0), min(y0 + size, ny), min(x0 + size, nx)
    if fy1 <= fy0 or fx1 <= fx0:
        return
    field[fy0:fy1, fx0:fx1] += img[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]


def simulate_field(
    path,
    *,
    shape=(256, 256),
    n_sources: int = 30,
    seed: int = 0,
    bands=BANDS,
    star_fraction: float = 0.25,
    blend_fraction: float = 0.4,
    noise: float = 1.0,
    noise_gradient: float = 1.0,
    flux_range=(1000.0, 30000.0),
    bad_columns=(),
    saturated_star: bool = False,
    saturation: float = 2000.0,
    zero_point: float = 27.0,
):
    """Draw a survey field with GalSim and write it as one multi-extension FITS file.

    Galaxies are an exponential disk plus, for 60 % of them, a de Vaucouleurs
    bulge of a redder colour; stars are the PSF. A share ``blend_fraction`` of
    the sources sits 4-12 pixels from another one. Every band is convolved with
    its Moffat PSF (0.2 arcsec pixels, TAN WCS). The noise standard deviation
    grows linearly across the field, from ``noise`` at ``x = 0`` to
    ``noise * (1 + noise_gradient)`` at the right edge, and differs slightly
    per band.

    The file holds ``IMAGE`` (band, y, x; float32, WCS, ``BANDS``,
    ``MAGZERO``), ``VARIANCE`` (band, y, x), ``MASK`` (y, x; int32, bits of
    :data:`MASK_BITS`, named ``MP_BAD``/``MP_SAT`` in its header) and ``PSF``
    (band, 25, 25).

    Parameters
    ----------
    path : str or Path
        The FITS file to write.
    shape : (int, int)
        Field size ``(y, x)``.
    n_sources : int
    seed : int
    bands : sequence of str
    star_fraction, blend_fraction : float
        Shares of stars and of sources placed next to another one.
    noise, noise_gradient : float
        Noise standard deviation at ``x = 0`` and its relative growth across the field.
    flux_range : (float, float)
        Log-uniform range of the total flux summed over bands.
    bad_columns : sequence of int
        Columns filled with garbage (large positive values) and marked ``BAD``.
    saturated_star : bool
        Add one very bright star whose pixels above ``saturation`` are clipped
        and marked ``SAT`` (its truth row has ``saturated=True``).
    saturation : float
    zero_point : float
        ``MAGZERO`` (AB) of the image header.

    Returns
    -------
    astropy.table.Table
        Truth, one row per source: ``x``, ``y`` (field pixels, 0-based), ``ra``,
        ``dec`` (deg), ``kind`` (``"star"``/``"galaxy"``), ``true_flux`` (band),
        ``hlr`` (arcsec, 0 for stars), ``saturated``.

    Raises
    ------
    ImportError
        If GalSim is not installed.
    ValueError
        If a size or count is out of range.
    """
    try:
        import galsim
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("simulate_field needs GalSim: pip install galsim") from err
    from astropy.io import fits
    from astropy.table import Table

    ny, nx = (int(s) for s in shape)
    if min(ny, nx) < 32:
        raise ValueError(f"shape must be at least 32 x 32; got {shape}")
    if n_sources < 1:
        raise ValueError(f"n_sources must be >= 1; got {n_sources}")
    rng = np.random.default_rng(seed)
    nb, scale = len(bands), 0.2
    psf_fwhm = 0.75 + np.linspace(0.12, 0.0, nb)
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in psf_fwhm]
    psf_imgs = np.stack([p.drawImage(nx=25, ny=25, scale=scale).array for p in psfs])
    psf_imgs /= psf_imgs.sum(axis=(1, 2), keepdims=True)
    wcs = _wcs(ny, nx, 150.0, 2.0, scale)
    image = np.zeros((nb, ny, nx), np.float32)
    edge = 6
    pos = []
    while len(pos) < n_sources:
        if pos and rng.random() < blend_fraction:
            anchor = pos[int(rng.integers(len(pos)))]
            r, phi = rng.uniform(4.0, 12.0), rng.uniform(0, 2 * np.pi)
            p = (anchor[0] + r * np.sin(phi), anchor[1] + r * np.cos(phi))
        else:
            p = (rng.uniform(edge, ny - 1 - edge), rng.uniform(edge, nx - 1 - edge))
        if not (edge <= p[0] <= ny - 1 - edge and edge <= p[1] <= nx - 1 - edge):
            continue
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) > 2.5 for q in pos):
            pos.append(p)
    rows = {"x": [], "y": [], "kind": [], "true_flux": [], "hlr": [], "saturated": []}
    for y, x in pos:
        total = float(np.exp(rng.uniform(*np.log(flux_range))))
        flux = np.zeros(nb)
        if rng.random() < star_fraction:
            sed = rng.dirichlet(np.full(nb, 6.0))
            for j in range(nb):
                _draw(image[j], psfs[j].withFlux(total * sed[j]), x, y, 41, scale, galsim)
            flux = total * sed
            kind, hlr = "star", 0.0
        else:
            hlr = float(rng.uniform(0.3, 0.9))
            g1, g2 = rng.uniform(-0.3, 0.3, 2)
            sed_disk = rng.dirichlet(np.full(nb, 4.0))
            parts = [(galsim.Exponential(half_light_radius=hlr).shear(g1=g1, g2=g2), sed_disk, 1.0)]
            if rng.random() < 0.6:
                frac = float(rng.uniform(0.2, 0.5))
                sed_bulge = np.sort(rng.dirichlet(np.full(nb, 4.0)))
                parts = [(parts[0][0], sed_disk, 1 - frac),
                         (galsim.DeVaucouleurs(half_light_radius=0.5 * hlr, trunc=5 * hlr), sed_bulge, frac)]
            size = 2 * int(np.ceil(4 * hlr / scale + 12)) + 1
            for j in range(nb):
                prof = galsim.Add([p.withFlux(total * s[j] * f) for p, s, f in parts])
                _draw(image[j], galsim.Convolve(prof, psfs[j]), x, y, size, scale, galsim)
                flux[j] = sum(total * s[j] * f for _, s, f in parts)
            kind = "galaxy"
        rows["x"].append(x)
        rows["y"].append(y)
        rows["kind"].append(kind)
        rows["true_flux"].append(flux)
        rows["hlr"].append(hlr)
        rows["saturated"].append(False)
    mask = np.zeros((ny, nx), np.int32)
    if saturated_star:
        y, x = ny * 0.37, nx * 0.61
        flux = np.full(nb, 4000.0 * saturation / nb)
        for j in range(nb):
            _draw(image[j], psfs[j].withFlux(flux[j]), x, y, 81, scale, galsim)
        sat = (image > saturation).any(axis=0)
        image[:, sat] = np.minimum(image[:, sat], saturation)
        mask[sat] |= MASK_BITS["SAT"]
        for k, v in (("x", x), ("y", y), ("kind", "star"), ("true_flux", flux), ("hlr", 0.0),
                     ("saturated", True)):
            rows[k].append(v)
    sigma = (noise * (1 + noise_gradient * np.arange(nx) / max(nx - 1, 1)))[None, None, :] \
        * np.linspace(0.9, 1.2, nb)[:, None, None]
    sigma = np.broadcast_to(sigma, (nb, ny, nx)).astype(np.float32)
    for j in range(nb):  # band by band: no (band, y, x) float64 temporary
        image[j] += (rng.standard_normal((ny, nx)) * sigma[j]).astype(np.float32)
    for c in bad_columns:
        image[:, :, int(c)] = 100.0 * noise + 50.0 * noise * rng.random((nb, ny))
        mask[:, int(c)] |= MASK_BITS["BAD"]
    hdr = wcs.to_header()
    hdr["BANDS"] = ",".join(bands)
    hdr["MAGZERO"] = float(zero_point)
    mhdr = fits.Header()
    for name, bit in MASK_BITS.items():
        mhdr[f"MP_{name}"] = int(np.log2(bit))
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(image, header=hdr, name="IMAGE"),
        fits.ImageHDU(np.square(sigma), name="VARIANCE"),
        fits.ImageHDU(mask, header=mhdr, name="MASK"),
        fits.ImageHDU(psf_imgs.astype(np.float32), name="PSF"),
    ]).writeto(Path(path), overwrite=True)
    ra, dec = wcs.pixel_to_world_values(np.asarray(rows["x"]), np.asarray(rows["y"]))
    table = Table({
        "x": np.asarray(rows["x"]), "y": np.asarray(rows["y"]), "ra": ra, "dec": dec,
        "kind": rows["kind"], "true_flux": np.asarray(rows["true_flux"]), "hlr": np.asarray(rows["hlr"]),
        "saturated": np.asarray(rows["saturated"]),
    })
    table.meta["bands"] = list(bands)
    return table
