"""Layer ``core``: pure JAX/Equinox models, renderers and likelihoods.

This layer imports only jax, equinox and numpy.
"""

from ._constraints import AbstractConstraint as AbstractConstraint
from ._constraints import Identity as Identity
from ._constraints import Interval as Interval
from ._constraints import LogPositive as LogPositive
from ._constraints import Positive as Positive
from ._constraints import Simplex as Simplex
from ._context import active_collector as active_collector
from ._context import collecting as collecting
from ._context import reverse_mode_only as reverse_mode_only
from ._context import reverse_mode_rendering as reverse_mode_rendering
from ._fft import convolve_fft as convolve_fft
from ._fft import fast_size as fast_size
from ._fft import fourier_shift as fourier_shift
from ._likelihood import CorrelatedGaussianLikelihood as CorrelatedGaussianLikelihood
from ._likelihood import SKY_MODELS as SKY_MODELS
from ._likelihood import GaussianLikelihood as GaussianLikelihood
from ._likelihood import log_likelihood as log_likelihood
from ._likelihood import render_observations as render_observations
from ._likelihood import noise_power_spectrum as noise_power_spectrum
from ._model import SceneModel as SceneModel
from ._model import evaluate_morphologies as evaluate_morphologies
from ._model import morphology_image as morphology_image
from ._model import morphology_images as morphology_images
from ._device import to_device as to_device
from ._morphology import AbstractMorphology as AbstractMorphology
from ._morphology import AutoMorphology as AutoMorphology
from ._morphology import FreeFormMorphology as FreeFormMorphology
from ._morphology import GaussianMorphology as GaussianMorphology
from ._morphology import PointSourceMorphology as PointSourceMorphology
from ._morphology import SersicMorphology as SersicMorphology
from ._parameter import Parameter as Parameter
from ._parameter import default_complex as default_complex
from ._parameter import default_float as default_float
from ._parameter import is_parameter as is_parameter
from ._psf import check_psf as check_psf
from ._psf import difference_kernel_fft as difference_kernel_fft
from ._psf import gaussian_psf_image as gaussian_psf_image
from ._render import AbstractRenderer as AbstractRenderer
from ._render import ConvolutionRenderer as ConvolutionRenderer
from ._source import Component as Component
from ._source import Source as Source
from ._spectrum import AbstractSpectrum as AbstractSpectrum
from ._spectrum import LightCurve as LightCurve
from ._spectrum import Spectrum as Spectrum
from ._monotonic import MonotonicMorphology as MonotonicMorphology
from ._resample import ResamplingRenderer as ResamplingRenderer
from ._resample import affine_from_coords as affine_from_coords
from ._resample import psf_core_width as psf_core_width
from ._resample import psf_spectrum as psf_spectrum
from ._prior import AbstractPrior as AbstractPrior
from ._prior import FlatPrior as FlatPrior
from ._prior import NormalPrior as NormalPrior
from ._prior import ScorePrior as ScorePrior
from ._prior import score_surrogate as score_surrogate
from ._jit import filter_jit as filter_jit
from ._spergel import SpergelMorphology as SpergelMorphology
from ._spergel import spergel_radius as spergel_radius
from ._starlet import StarletMorphology as StarletMorphology
from ._starlet import StarletSparsity as StarletSparsity
from ._starlet import starlet_reconstruct as starlet_reconstruct
from ._starlet import starlet_transform as starlet_transform
from ._prior import score_line_integral as score_line_integral

__all__ = [
    "AbstractConstraint",
    "AbstractMorphology",
    "AbstractPrior",
    "AbstractRenderer",
    "AbstractSpectrum",
    "LightCurve",
    "AutoMorphology",
    "Component",
    "ConvolutionRenderer",
    "CorrelatedGaussianLikelihood",
    "FreeFormMorphology",
    "GaussianLikelihood",
    "render_observations",
    "log_likelihood",
    "SKY_MODELS",
    "GaussianMorphology",
    "Identity",
    "Interval",
    "LogPositive",
    "MonotonicMorphology",
    "FlatPrior",
    "NormalPrior",
    "Parameter",
    "PointSourceMorphology",
    "Positive",
    "ResamplingRenderer",
    "SceneModel",
    "ScorePrior",
    "SersicMorphology",
    "Simplex",
    "Source",
    "Spectrum",
    "SpergelMorphology",
    "StarletMorphology",
    "StarletSparsity",
    "active_collector",
    "affine_from_coords",
    "check_psf",
    "collecting",
    "convolve_fft",
    "default_complex",
    "default_float",
    "fast_size",
    "difference_kernel_fft",
    "evaluate_morphologies",
    "filter_jit",
    "fourier_shift",
    "gaussian_psf_image",
    "is_parameter",
    "morphology_image",
    "morphology_images",
    "reverse_mode_only",
    "reverse_mode_rendering",
    "to_device",
    "noise_power_spectrum",
    "psf_core_width",
    "psf_spectrum",
    "score_line_integral",
    "score_surrogate",
    "spergel_radius",
    "starlet_reconstruct",
    "starlet_transform",
]
