"""Layer ``scene``: the user's Scene and source initialisation."""

from ._init import BOX_SIZES as BOX_SIZES
from ._init import detection_image as detection_image
from ._init import initialize_sources as initialize_sources
from ._scene import Scene as Scene
