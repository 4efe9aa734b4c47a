"""Layer ``wcs``: model frames and sky <-> pixel conversion (astropy)."""

from ._cutout import shift_wcs as shift_wcs
from ._frame import DEFAULT_MODEL_PSF_SIGMA as DEFAULT_MODEL_PSF_SIGMA
from ._frame import Frame as Frame
from ._frame import celestial_frame as celestial_frame
from ._frame import is_icrs_like as is_icrs_like
from ._frame import normalize_epochs as normalize_epochs
from ._frame import observation_epochs as observation_epochs

__all__ = [
    "DEFAULT_MODEL_PSF_SIGMA",
    "Frame",
    "celestial_frame",
    "is_icrs_like",
    "normalize_epochs",
    "observation_epochs",
    "shift_wcs",
]
