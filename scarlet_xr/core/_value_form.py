"""Parametric profiles in the form their images are evaluated in outside a fit.

A compiled function's cache key holds the static part of its arguments: for
a morphology, its type, box and oversampling, and also each parameter's
constraint, step, ``fixed`` flag and whether it carries a prior. None of these
change the image, yet each variant compiled its own image program: a Sersic
with a prior on its index, one without (the initialisation), a bulge with its
index fixed, in every box size. :func:`value_form` replaces each parameter by a
free, prior-less one holding its constrained value, so that all of them share
one program per type and box size.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from ._constraints import Identity, Interval, LogPositive, Positive
from ._morphology import GaussianMorphology, PointSourceMorphology, SersicMorphology, sersic_pixels
from ._parameter import Parameter, default_float, is_parameter
from ._spergel import SpergelMorphology

__all__ = ["VALUE_FORM_TYPES", "value_form", "host_images", "host_value"]

VALUE_FORM_TYPES = (SersicMorphology, GaussianMorphology, PointSourceMorphology, SpergelMorphology)
"""Morphology types whose images depend on their parameters' values only (read through
``Parameter.value``): :func:`value_form` rewrites these and leaves any other type as it is."""

_IDENTITY = Identity()


def host_value(p: Parameter):
    """``p.value``, computed with numpy for a concrete ``raw`` and the profiles' constraints.

    Eager JAX would compile each operation of the constraint once per shape
    and dtype (about 20 small programs over a crowded scene); numpy agrees
    with it to float32 rounding.
    """
    raw, c = p.raw, p.constraint
    if isinstance(raw, jax.core.Tracer) or type(c) not in (Identity, LogPositive, Interval, Positive):
        return p.value
    u = np.asarray(raw)
    if type(c) is Identity:
        return u
    if type(c) is LogPositive:
        return np.exp(u)
    if type(c) is Positive:
        return np.logaddexp(u, np.zeros((), u.dtype))
    sig = np.exp(-np.logaddexp(np.zeros((), u.dtype), -u))  # sigmoid, without overflow
    return (c.lower + (c.upper - c.lower) * sig).astype(u.dtype)


def _plain(p: Parameter) -> Parameter:
    """A free, prior-less, unconstrained parameter holding ``p``'s value (no checks, no copy)."""
    q = object.__new__(Parameter)
    for name, v in (("raw", host_value(p)), ("constraint", _IDENTITY), ("prior", None), ("fixed", False),
                    ("step", 0.05)):
        object.__setattr__(q, name, v)
    return q


def value_form(morphology):
    """``morphology`` with every parameter free, prior-less and holding its constrained value.

    Its image is the same (up to float rounding of the constraint, now
    applied before a compiled call instead of inside it), and its static
    structure depends only on the morphology's type and box: images evaluated
    through compiled calls share one program per type and box size.

    Parameters
    ----------
    morphology : AbstractMorphology
        Stacked (leaves with a leading member axis) or not. Types other than
        :data:`VALUE_FORM_TYPES` are returned unchanged.

    Returns
    -------
    AbstractMorphology
        Not for fitting: its parameters have lost their constraints and priors.
    """
    if type(morphology) not in VALUE_FORM_TYPES:
        return morphology
    return jax.tree_util.tree_map(lambda x: _plain(x) if is_parameter(x) else x, morphology,
                                  is_leaf=is_parameter)


_np_erf = np.vectorize(math.erf, otypes=[float])


def _concrete(p: Parameter):
    """The value of a value-form parameter as a float64 numpy array, or None if it is traced."""
    raw = p.raw
    return None if isinstance(raw, jax.core.Tracer) else np.asarray(raw, np.float64)


def host_images(morphology, offsets):
    """Images of a :func:`value_form` Sersic or point source computed with numpy, else None.

    Evaluating a profile through a compiled call compiles one program per
    morphology type and box size, about 0.3 s each: on a 300-source cutout the
    default path compiled 20 of them for its initialisation, linear solves and
    model choices (6 s). Sersic profiles (:func:`~scarlet_xr.core._morphology.sersic_pixels`,
    the same sampling as the compiled image) and points with a Gaussian model
    PSF (``sigma``) are computed here instead, all members of a stack in one
    batch; the images agree with the compiled ones to float32 rounding.

    Parameters
    ----------
    morphology : AbstractMorphology
        A value form (:func:`value_form`), its parameters' leaves concrete and
        stacked with a leading member axis ``(m, ...)``.
    offsets : array (m, 2)
        Sub-pixel offset ``(dy, dx)`` of each member's centre.

    Returns
    -------
    numpy.ndarray (m, h, w) or None
        None for other types, a point source without ``sigma`` and traced values.
    """
    offsets = np.asarray(offsets, np.float64)
    dt = default_float()
    if type(morphology) is SersicMorphology:
        values = [_concrete(morphology.n), _concrete(morphology.r_e), _concrete(morphology.ellipticity)]
        if any(v is None for v in values):
            return None
        n, r_e, ell = values
        m = len(offsets)
        n, r_e, ell = np.broadcast_to(n, (m,)), np.broadcast_to(r_e, (m,)), np.broadcast_to(ell, (m, 2))
        img = sersic_pixels(n, r_e, ell, offsets, morphology.shape, morphology.oversample, xp=np)
        return img.astype(dt)
    if type(morphology) is PointSourceMorphology and morphology.sigma is not None:
        scale = np.sqrt(2.0) * morphology.sigma

        def axis(size, o):
            edges = np.arange(size + 1) - size // 2 - 0.5 - o[:, None]
            return np.diff(0.5 * _np_erf(edges / scale), axis=-1)

        h, w = morphology.shape
        return (axis(h, offsets[:, 0])[:, :, None] * axis(w, offsets[:, 1])[:, None, :]).astype(dt)
    return None
