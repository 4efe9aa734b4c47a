"""Learned morphology priors (Equinox networks); imports ``core`` only.

The training code lives in :mod:`scarlet_xr.nn.train` (needs galsim and optax).
"""

from ._network import ScoreNet as ScoreNet
from ._learned import DEFAULT_WEIGHTS as DEFAULT_WEIGHTS
from ._learned import LearnedMorphologyPrior as LearnedMorphologyPrior
from ._learned import learned_prior as learned_prior
from ._learned import load_network as load_network
from ._learned import with_morphology_prior as with_morphology_prior

__all__ = [
    "DEFAULT_WEIGHTS",
    "LearnedMorphologyPrior",
    "ScoreNet",
    "learned_prior",
    "load_network",
    "with_morphology_prior",
]
