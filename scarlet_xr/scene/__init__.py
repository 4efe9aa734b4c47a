"""Layer ``scene``: the user's Scene and source initialisation."""

from ._auto import DEFAULT_E_REL as DEFAULT_E_REL
from ._auto import fit_sources as fit_sources
from ._detect import detect_sources as detect_sources
from ._detect import fit_observations as fit_observations
from ._host import host_products as host_products
from ._init import BOX_SIZES as BOX_SIZES
from ._init import bulge_disk_morphologies as bulge_disk_morphologies
from ._init import detection_image as detection_image
from ._init import initialize_sources as initialize_sources
from ._io import load_scene as load_scene
from ._measure import Measurements as Measurements
from ._measure import measure_scene as measure_scene
from ._measure import scene_stamps as scene_stamps
from ._missing import MISSING_MAX_SOURCES as MISSING_MAX_SOURCES
from ._missing import missing_sources as missing_sources
from ._io import save_scene as save_scene
from ._sample import attach_posterior as attach_posterior
from ._sample import sample_scene as sample_scene
from ._sample import summarize as summarize
from ._scene import Scene as Scene

__all__ = [
    "BOX_SIZES",
    "DEFAULT_E_REL",
    "MISSING_MAX_SOURCES",
    "Measurements",
    "Scene",
    "attach_posterior",
    "bulge_disk_morphologies",
    "detect_sources",
    "detection_image",
    "fit_observations",
    "fit_sources",
    "host_products",
    "initialize_sources",
    "load_scene",
    "measure_scene",
    "missing_sources",
    "sample_scene",
    "save_scene",
    "scene_stamps",
    "summarize",
]
