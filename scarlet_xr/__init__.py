"""scarlet_xr: multi-band, multi-instrument scene modelling (deblending) in JAX.

Importing the package registers the ``.scarlet`` xarray accessor; it does not
import plotting or widget libraries.
"""

from ._version import __version__ as __version__
from .core import AbstractMorphology as AbstractMorphology
from .core import AbstractSpectrum as AbstractSpectrum
from .core import LightCurve as LightCurve
from .core import AutoMorphology as AutoMorphology
from .core import Component as Component
from .core import FreeFormMorphology as FreeFormMorphology
from .core import GaussianMorphology as GaussianMorphology
from .core import Identity as Identity
from .core import Interval as Interval
from .core import FlatPrior as FlatPrior
from .core import NormalPrior as NormalPrior
from .core import LogPositive as LogPositive
from .core import Parameter as Parameter
from .core import PointSourceMorphology as PointSourceMorphology
from .core import Positive as Positive
from .core import SersicMorphology as SersicMorphology
from .core import Simplex as Simplex
from .core import Source as Source
from .core import Spectrum as Spectrum
from .core import SpergelMorphology as SpergelMorphology
from .core import StarletMorphology as StarletMorphology
from .infer import FitDivergedError as FitDivergedError
from .infer import FitHistory as FitHistory
from .scene import Scene as Scene
from .scene import detect_sources as detect_sources
from .scene import fit_observations as fit_observations
from .scene import fit_sources as fit_sources
from .scene import initialize_sources as initialize_sources
from .scene import load_scene as load_scene
from .scene import save_scene as save_scene
from .wcs import Frame as Frame
from .xr import BoundObservation as BoundObservation
from .xr import bind_observations as bind_observations
from .xr import frame_from_observations as frame_from_observations
from .xr import make_observation as make_observation
from .xr import open_observation as open_observation
from .xr import observation_wcs as observation_wcs
from .survey import deblend_catalog as deblend_catalog
from . import accessor as accessor  # registers the .scarlet accessors
from .core import AbstractPrior as AbstractPrior
from .core import ScorePrior as ScorePrior
from .scene import attach_posterior as attach_posterior
from .scene import sample_scene as sample_scene
from .scene import summarize as summarize_posterior
from .scene import measure_scene as measure_scene
from .survey import deblend_field as deblend_field
from .survey import survey_catalog as survey_catalog
from .xr import catalog_from_tree as catalog_from_tree

__all__ = [
    "__version__",
    "AbstractMorphology",
    "AbstractPrior",
    "AbstractSpectrum",
    "attach_posterior",
    "AutoMorphology",
    "bind_observations",
    "BoundObservation",
    "catalog_from_tree",
    "Component",
    "deblend_catalog",
    "deblend_field",
    "detect_sources",
    "fit_observations",
    "fit_sources",
    "FitDivergedError",
    "FitHistory",
    "FlatPrior",
    "Frame",
    "frame_from_observations",
    "FreeFormMorphology",
    "GaussianMorphology",
    "Identity",
    "initialize_sources",
    "Interval",
    "LightCurve",
    "load_scene",
    "LogPositive",
    "make_observation",
    "measure_scene",
    "NormalPrior",
    "observation_wcs",
    "open_observation",
    "Parameter",
    "PointSourceMorphology",
    "Positive",
    "sample_scene",
    "save_scene",
    "Scene",
    "ScorePrior",
    "SersicMorphology",
    "Simplex",
    "Source",
    "Spectrum",
    "SpergelMorphology",
    "StarletMorphology",
    "summarize_posterior",
    "survey_catalog",
]
