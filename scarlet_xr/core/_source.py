"""Sources: a centre plus one or more (spectrum, morphology) components."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import Identity
from ._context import active_collector, active_position_converter
from ._morphology import AbstractMorphology
from ._parameter import Parameter
from ._spectrum import AbstractSpectrum, Spectrum, num_epochs_of

__all__ = ["Component", "Source"]


def _pixel_center(center) -> np.ndarray:
    """``(y, x)`` pixels of a centre; a non-array position goes through the active scene's converter."""
    try:
        c = np.asarray(center, dtype=float)
    except (TypeError, ValueError):
        convert = active_position_converter()
        if convert is None:
            raise ValueError(
                f"center of type {type(center).__name__} is not a pixel position (y, x); a sky position "
                "(e.g. an astropy SkyCoord) needs a Scene with a WCS frame: create the Source inside "
                "`with Scene(frame):`, with a frame that has a WCS"
            ) from None
        c = np.asarray(convert(center), dtype=float)
    if c.shape != (2,):
        raise ValueError(f"center must be (y, x); got shape {c.shape}")
    return c


class Component(eqx.Module):
    """A spectrum times a morphology: ``spectrum[:, None, None] * morphology[None]``."""

    spectrum: AbstractSpectrum
    morphology: AbstractMorphology

    def __init__(self, spectrum, morphology):
        if not isinstance(spectrum, AbstractSpectrum):
            spectrum = Spectrum(spectrum)
        if not isinstance(morphology, AbstractMorphology):
            raise TypeError(f"morphology must be an AbstractMorphology; got {type(morphology).__name__}")
        self.spectrum = spectrum
        self.morphology = morphology

    def __call__(self, offset):
        """Return the ``(band, h, w)`` model of this component (``(epoch * band, h, w)`` if variable)."""
        return self.spectrum()[:, None, None] * self.morphology(offset)[None]

    @property
    def num_epochs(self) -> int:
        """Epochs of a variable component (a :class:`~scarlet_xr.core.LightCurve` spectrum); 0 if static."""
        return num_epochs_of(self.spectrum)

    @property
    def num_bands(self) -> int:
        """Number of bands of the spectrum (per epoch for a variable component)."""
        n = self.spectrum().shape[0]
        return int(n // self.num_epochs) if self.num_epochs else int(n)

    def light_curve(self):
        """Flux per epoch and band inside the box, ``(epoch, band)`` (variable components only)."""
        return self.spectrum.epochs() * jnp.sum(self.morphology(jnp.zeros(2)))

    def flux(self):
        """Flux per band inside the box (a variable component: its mean over epochs)."""
        if self.num_epochs:
            return jnp.mean(self.light_curve(), axis=0)
        return self.spectrum() * jnp.sum(self.morphology(jnp.zeros(2)))


class Source(eqx.Module):
    """An astronomical source: ``center`` and components.

    Created inside ``with Scene(frame):`` a source adds itself to that scene.

    Parameters
    ----------
    center : (y, x), Parameter or sky position
        Centre in model-frame pixels. Inside ``with Scene(frame):`` also a sky
        position (an astropy ``SkyCoord`` in any celestial frame), which the
        scene converts to pixels with the frame's WCS.
    spectrum : AbstractSpectrum or array, optional
        Spectrum of a single-component source.
    morphology : AbstractMorphology, optional
        Morphology of a single-component source.
    components : sequence of Component or (spectrum, morphology), optional
        For multi-component sources (e.g. bulge + disk with their own spectra).
    fix_center : bool, optional
        Keep the centre fixed. Default: fixed for free-form morphologies
        and other pixel-anchored morphologies (their pixels absorb shifts),
        free otherwise.
    name : str, optional
        A label used in results.
    """

    center: Parameter
    components: tuple[Component, ...]
    name: str | None = eqx.field(static=True)

    def __init__(
        self,
        center,
        spectrum=None,
        morphology=None,
        *,
        components=None,
        fix_center: bool | None = None,
        center_step: float = 0.05,
        name: str | None = None,
    ):
        if components is None:
            if spectrum is None or morphology is None:
                raise ValueError("Source needs spectrum and morphology, or components=[...]")
            comps = (Component(spectrum, morphology),)
        else:
            if spectrum is not None or morphology is not None:
                raise ValueError("give either spectrum/morphology or components, not both")
            comps = tuple(c if isinstance(c, Component) else Component(*c) for c in components)
            if not comps:
                raise ValueError("components must not be empty")
        nb = {c.num_bands for c in comps}
        if len(nb) != 1:
            raise ValueError(f"all components must have the same number of bands; got {sorted(nb)}")
        ne = {c.num_epochs for c in comps}
        if len(ne) != 1:
            raise ValueError(
                "the components of a source must all be static or all have light curves of the same "
                f"number of epochs; got epochs {sorted(ne)} (0: static). Make a transient on a static "
                "host its own Source"
            )
        if fix_center is None:
            fix_center = all(c.morphology.pixel_anchored for c in comps)
        if isinstance(center, Parameter):
            self.center = center
        elif isinstance(center, jax.core.Tracer):
            self.center = Parameter(center, Identity(), fixed=fix_center, step=center_step)
        else:
            c = _pixel_center(center)
            self.center = Parameter(c, Identity(), fixed=fix_center, step=center_step)
        self.components = comps
        self.name = name

    def __check_init__(self):
        collect = active_collector()
        if collect is not None:
            collect(self)

    @property
    def num_bands(self) -> int:
        """Number of bands of the spectra."""
        return self.components[0].num_bands

    @property
    def num_epochs(self) -> int:
        """Epochs of a variable source's light curves; 0 for a static source."""
        return self.components[0].num_epochs

    def light_curve(self) -> jax.Array:
        """Flux per epoch and band ``(epoch, band)`` of a variable source (sum over components)."""
        if not self.num_epochs:
            raise ValueError("a static source has no light curve; its flux is flux()")
        return sum(c.light_curve() for c in self.components)

    @property
    def kind(self) -> str:
        """Kind label: the morphology kind, joined with ``+`` for several components."""
        return "+".join(c.morphology.kind for c in self.components)

    def flux(self) -> jax.Array:
        """Total flux per band (sum over components; a variable source: mean over epochs)."""
        return sum(c.flux() for c in self.components)
