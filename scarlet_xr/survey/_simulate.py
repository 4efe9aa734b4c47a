"""Simulated blends (GalSim) with a truth catalog, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._fits import write_blend_fits

__all__ = ["simulate_blends"]

BANDS = ("g", "r", "i", "z", "y")


def _wcs(ny, nx, ra, dec, scale_arcsec):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return w


def simulate_blends(
    directory,
    n_blends: int,
    *,
    seed: int = 0,
    bands=BANDS,
    sources=(1, 6),
    sizes=(31, 41, 51, 61, 75),
    noise: float = 1.0,
    flux_range=(300.0, 6000.0),
    catalog_name: str = "catalog.ecsv",
):
    """Draw GalSim blends to FITS files and write their truth catalog.

    Each blend has between ``sources[0]`` and ``sources[1]`` galaxies
    (exponential disks, some with a de Vaucouleurs bulge of a different
    colour) drawn through a per-band Moffat PSF, plus Gaussian noise of
    standard deviation ``noise``. Files use the survey FITS layout
    (:func:`write_blend_fits`) with a TAN WCS of 0.2 arcsec pixels.

    Parameters
    ----------
    directory : str or Path
        Where the FITS files and the catalog go (created if needed).
    n_blends : int
    seed : int
    bands : sequence of str
    sources : (int, int)
        Minimum and maximum number of galaxies per blend.
    sizes : sequence of int
        Stamp sizes to draw from (square).
    noise : float
        Pixel noise standard deviation (the weight is ``1 / noise**2``).
    flux_range : (float, float)
        Log-uniform range of total flux summed over bands.
    catalog_name : str
        File name of the ECSV catalog.

    Returns
    -------
    catalog_path : Path
    table : astropy.table.Table
        One row per galaxy: ``file`` (name relative to ``directory``),
        ``ra``, ``dec`` (deg), ``true_flux`` (band), ``blend``.

    Raises
    ------
    ImportError
        If GalSim is not installed (``pip install galsim``).
    """
    try:
        import galsim
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("simulate_blends needs GalSim: pip install galsim") from err
    from astropy.table import Table

    if n_blends < 1:
        raise ValueError(f"n_blends must be >= 1; got {n_blends}")
    if not 1 <= sources[0] <= sources[1]:
        raise ValueError(f"sources must be (min, max) with 1 <= min <= max; got {sources}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    nb = len(bands)
    scale = 0.2
    psf_fwhm = 0.7 + 0.15 * rng.random() + np.linspace(0.15, 0.0, nb)
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in psf_fwhm]
    psf_imgs = np.stack([p.drawImage(nx=25, ny=25, scale=scale).array for p in psfs])
    psf_imgs /= psf_imgs.sum(axis=(1, 2), keepdims=True)
    rows = {"file": [], "ra": [], "dec": [], "true_flux": [], "blend": []}
    for b in range(n_blends):
        size = int(rng.choice(sizes))
        ns = int(rng.integers(sources[0], sources[1] + 1))
        ra0, dec0 = 150.0 + 0.01 * b, 2.0 + 0.001 * (b % 97)
        wcs = _wcs(size, size, ra0, dec0, scale)
        data = np.zeros((nb, size, size))
        half = size / 2
        spread = max(3.0, min(0.28 * size, 3.0 + 2.0 * ns))
        pos = []
        while len(pos) < ns:
            p = half - 0.5 + rng.uniform(-spread, spread, 2)
            if all(np.hypot(*(p - q)) > 5.0 for q in pos):
                pos.append(p)
        for y, x in pos:
            total = float(np.exp(rng.uniform(*np.log(flux_range))))
            hlr = float(rng.uniform(0.25, 0.7))
            g1, g2 = rng.uniform(-0.3, 0.3, 2)
            sed_disk = rng.dirichlet(np.full(nb, 4.0))
            gal = [(galsim.Exponential(half_light_radius=hlr).shear(g1=g1, g2=g2), sed_disk)]
            if rng.random() < 0.4:
                sed_bulge = np.sort(rng.dirichlet(np.full(nb, 4.0)))
                gal.append((galsim.DeVaucouleurs(half_light_radius=0.6 * hlr, trunc=6 * hlr), sed_bulge))
            frac = float(rng.uniform(0.2, 0.5)) if len(gal) == 2 else 0.0
            flux = np.zeros(nb)
            for j in range(nb):
                offset = galsim.PositionD(x - (size - 1) / 2, y - (size - 1) / 2)
                for k, (prof, sed) in enumerate(gal):
                    f = total * sed[j] * ((1 - frac) if k == 0 else frac)
                    if f <= 0:
                        continue
                    conv = galsim.Convolve(prof.withFlux(f), psfs[j])
                    img = conv.drawImage(nx=size, ny=size, scale=scale, offset=offset)
                    data[j] += img.array
                    flux[j] += f
            r, d = wcs.pixel_to_world_values(x, y)
            rows["file"].append(f"blend_{b:05d}.fits")
            rows["ra"].append(float(r))
            rows["dec"].append(float(d))
            rows["true_flux"].append(flux)
            rows["blend"].append(b)
        data += rng.normal(0.0, noise, data.shape)
        write_blend_fits(
            directory / f"blend_{b:05d}.fits",
            data,
            weights=np.full(data.shape, 1.0 / noise**2),
            psf=psf_imgs,
            bands=bands,
            wcs=wcs,
        )
    table = Table(
        {
            "file": rows["file"],
            "ra": np.array(rows["ra"]),
            "dec": np.array(rows["dec"]),
            "true_flux": np.array(rows["true_flux"]),
            "blend": np.array(rows["blend"]),
        }
    )
    table.meta["bands"] = list(bands)
    path = directory / catalog_name
    table.write(path, overwrite=True)
    return path, table
