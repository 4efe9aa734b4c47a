"""Layer ``wcs``: model frames and sky <-> pixel conversion (astropy)."""

from ._frame import DEFAULT_MODEL_PSF_SIGMA as DEFAULT_MODEL_PSF_SIGMA
from ._frame import Frame as Frame
