"""Layer ``wcs``: model frames and sky <-> pixel conversion (astropy)."""

from ._frame import DEFAULT_MODEL_PSF_SIGMA as DEFAULT_MODEL_PSF_SIGMA
from ._frame import Frame as Frame
from ._frame import celestial_frame as celestial_frame
from ._frame import is_icrs_like as is_icrs_like

__all__ = [
    "DEFAULT_MODEL_PSF_SIGMA",
    "Frame",
    "celestial_frame",
    "is_icrs_like",
]
