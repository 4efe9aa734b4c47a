"""Learned morphology priors (Equinox networks); imports ``core`` only.

The training code lives in :mod:`scarlet_xr.nn.train` (needs galsim and optax).
"""

from ._network import ScoreNet as ScoreNet
