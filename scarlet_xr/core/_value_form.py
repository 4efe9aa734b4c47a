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

from ._constraints import Identity
from ._morphology import GaussianMorphology, PointSourceMorphology, SersicMorphology
from ._parameter import Parameter, is_parameter
from ._spergel import SpergelMorphology

__all__ = ["VALUE_FORM_TYPES", "value_form"]

VALUE_FORM_TYPES = (SersicMorphology, GaussianMorphology, PointSourceMorphology, SpergelMorphology)
"""Morphology types whose images depend on their parameters' values only (read through
``Parameter.value``): :func:`value_form` rewrites these and leaves any other type as it is."""

_IDENTITY = Identity()


def _plain(p: Parameter) -> Parameter:
    """A free, prior-less, unconstrained parameter holding ``p``'s value (no checks, no copy)."""
    q = object.__new__(Parameter)
    for name, v in (("raw", p.value), ("constraint", _IDENTITY), ("prior", None), ("fixed", False),
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
