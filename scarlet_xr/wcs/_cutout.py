"""The WCS of a cutout: the one function that moves a WCS's pixel origin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # (astropy is imported where a WCS is used: `import scarlet_xr` stays light)
    from astropy.wcs import WCS

__all__ = ["shift_wcs"]


def shift_wcs(wcs: WCS, y0: int, x0: int) -> WCS:
    """Return a copy of ``wcs`` whose pixel ``(0, 0)`` is pixel ``(y0, x0)`` of ``wcs``.

    The WCS of a cutout starting at ``(y0, x0)``. Works for negative offsets
    too (a frame that extends beyond the original image): the reference pixel
    (and the SIP reference pixel) is shifted.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
    y0, x0 : int
        Pixel of ``wcs`` that becomes the new ``(0, 0)``.

    Returns
    -------
    astropy.wcs.WCS
        A new object (``wcs`` is not modified).
    """
    w = wcs.deepcopy()
    if y0 == 0 and x0 == 0:
        return w
    w.wcs.crpix = w.wcs.crpix - np.array([x0, y0], dtype=float)
    if w.sip is not None:
        from astropy.wcs import Sip

        sip = w.sip
        w.sip = Sip(sip.a, sip.b, sip.ap, sip.bp, np.asarray(sip.crpix) - np.array([x0, y0], dtype=float))
    w.wcs.set()
    return w
