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

import jax
import numpy as np

from ._constraints import Identity, Interval, LogPositive, Positive
from ._morphology import GaussianMorphology, PointSourceMorphology, SersicMorphology
from ._parameter import Parameter, is_parameter
from ._spergel import SpergelMorphology

__all__ = ["VALUE_FORM_TYPES", "value_form"]

VALUE_FORM_TYPES = (SersicMorphology, GaussianMorphology, PointSourceMorphology, SpergelMorphology)
"""Morphology types whose images depend on their parameters' values only (read through
``Parameter.value``): :func:`value_form` rewrites these and leaves any other type as it is."""

_IDENTITY = Identity()


def _host_value(p: Parameter):
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
    for name, v in (("raw", _host_value(p)), ("constraint", _IDENTITY), ("prior", None), ("fixed", False),
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
