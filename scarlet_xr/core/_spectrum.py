"""Spectra: per-band amplitudes of a component."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from ._constraints import Identity, LogPositive
from ._parameter import Parameter
from ._prior import FlatPrior

__all__ = ["AbstractSpectrum", "LightCurve", "Spectrum", "num_epochs_of"]


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


class LightCurve(AbstractSpectrum):
    """Per-epoch, per-band amplitudes of a variable component (a transient, a variable star).

    A source whose components carry a light curve is *variable*: in an
    observation of epoch ``e`` its amplitude in band ``b`` is
    ``values[e, b]``, while every other source keeps one spectrum for all
    epochs. The scene's frame must have the same number of epochs
    (``Frame.epochs``, read from the observations' ``epoch`` coordinate).

    Calling it returns the amplitudes flattened epoch by epoch,
    ``(epoch * band,)``: the model renders a variable component once for all
    epochs.

    Parameters
    ----------
    values : array (epoch, band) or Parameter
        Initial amplitudes.
    positive : bool
        False (default): amplitudes of either sign, as forced photometry of a
        transient needs (zero before it appears, noise may take it below);
        True: strictly positive (log parameterisation).
    step : float, optional
        Step of the default optimizer: relative for ``positive=True`` (default
        0.03); in flux units otherwise (default 3% of the largest ``|values|``,
        or 1e-3 if all are zero).
    prior : optional
        Prior of the values (see :class:`~scarlet_xr.core.Parameter`). Default:
        flat (:class:`~scarlet_xr.core.FlatPrior`) for ``positive=False``: the
        likelihood alone constrains amplitudes.
    fixed : bool
        Keep the values fixed.

    Examples
    --------
    >>> lc = LightCurve([[0.0, 0.0], [5.0, 4.0], [3.0, 2.5]])
    >>> lc.num_epochs, lc.num_bands
    (3, 2)
    >>> lc().shape
    (6,)
    """

    values: Parameter
    positive: bool = eqx.field(static=True, default=False)

    def __init__(self, values, *, positive: bool = False, step: float | None = None, prior=None,
                 fixed: bool = False):
        self.positive = bool(positive)
        if isinstance(values, Parameter):
            if len(values.shape) != 2:
                raise ValueError(f"light curve must be 2-D (epoch, band); got shape {values.shape}")
            self.values = values
            return
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 2 or min(arr.shape) < 1:
            raise ValueError(f"light curve must be 2-D (epoch, band); got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("light curve values must be finite")
        if self.positive:
            self.values = Parameter(arr, LogPositive(), step=0.03 if step is None else step, prior=prior,
                                    fixed=fixed)
        else:
            scale = float(np.abs(arr).max())
            default = 0.03 * scale if scale > 0 else 1e-3
            self.values = Parameter(arr, Identity(), step=default if step is None else step,
                                    prior=FlatPrior() if prior is None else prior, fixed=fixed)

    def __call__(self):
        """Return the amplitudes flattened epoch by epoch, ``(epoch * band,)``."""
        return self.values.value.reshape(-1)

    def epochs(self) -> jax.Array:
        """The amplitudes ``(epoch, band)``."""
        return self.values.value

    @property
    def num_bands(self) -> int:
        """Number of bands."""
        return self.values.shape[1]

    @property
    def num_epochs(self) -> int:
        """Number of epochs."""
        return self.values.shape[0]


def num_epochs_of(spectrum) -> int:
    """Epochs of a spectrum: its ``num_epochs`` for a :class:`LightCurve`, 0 for a static spectrum."""
    return int(spectrum.num_epochs) if isinstance(spectrum, LightCurve) else 0
