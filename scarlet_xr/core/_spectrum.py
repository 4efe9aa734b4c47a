"""Spectra: per-band amplitudes of a component."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from ._constraints import LogPositive
from ._parameter import Parameter

__all__ = ["AbstractSpectrum", "Spectrum"]


class AbstractSpectrum(eqx.Module):
    """Base class of spectra: ``__call__() -> (band,)`` amplitudes."""

    def __call__(self) -> jax.Array:
        """Return the per-band amplitudes."""
        raise NotImplementedError


class Spectrum(AbstractSpectrum):
    """Free per-band amplitudes, strictly positive (log parameterisation).

    A step in the unconstrained space is a relative change of the amplitude,
    which suits fluxes spanning orders of magnitude.

    Parameters
    ----------
    values : array (band,) or Parameter
        Initial amplitudes (> 0).
    step : float
        Relative step per iteration for the default optimizer. Default 0.03.
    """

    values: Parameter

    def __init__(self, values, *, step: float = 0.03, prior=None, fixed: bool = False):
        if isinstance(values, Parameter):
            self.values = values
        else:
            arr = np.atleast_1d(np.asarray(values, dtype=float))
            if arr.ndim != 1:
                raise ValueError(f"spectrum must be 1-D (band,); got shape {arr.shape}")
            self.values = Parameter(arr, LogPositive(), step=step, prior=prior, fixed=fixed)

    def __call__(self):
        """Return the amplitudes."""
        return self.values.value

    @property
    def num_bands(self) -> int:
        """Number of bands."""
        return self.values.shape[0]
