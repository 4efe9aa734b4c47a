"""The active source collector and position converter, held in ContextVars (no global mutable state).

``core`` knows nothing of sky coordinates: a scene layer that does (with its
frame's WCS) provides ``to_pixel``, which :class:`~scarlet_xr.core.Source`
calls for a centre that is not array-like (e.g. an astropy ``SkyCoord``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

__all__ = ["active_collector", "active_position_converter", "collecting", "reverse_mode_only",
           "reverse_mode_rendering"]

_collector: ContextVar[Callable | None] = ContextVar("scarlet_xr_scene_collector", default=None)
_to_pixel: ContextVar[Callable | None] = ContextVar("scarlet_xr_scene_to_pixel", default=None)
_reverse_only: ContextVar[bool] = ContextVar("scarlet_xr_reverse_only", default=False)


def active_collector() -> Callable | None:
    """Return the callable that collects new sources in this context, if any."""
    return _collector.get()


def active_position_converter() -> Callable | None:
    """Return the callable that turns a non-array position into model-frame pixels ``(y, x)``, if any."""
    return _to_pixel.get()


class collecting:  # noqa: N801  (used as a context manager)
    """Context manager that makes ``fn`` receive every Source created inside it.

    Parameters
    ----------
    fn : callable
        Called with each new Source.
    to_pixel : callable, optional
        Converts a centre that is not array-like (a sky position) into
        model-frame pixels ``(y, x)``; Sources created inside use it.
    """

    def __init__(self, fn: Callable, *, to_pixel: Callable | None = None):
        self._fn = fn
        self._to_pixel = to_pixel
        self._tokens = []

    def __enter__(self):
        self._tokens.append((_collector.set(self._fn), _to_pixel.set(self._to_pixel)))
        return self

    def __exit__(self, *exc):
        collector, to_pixel = self._tokens.pop()
        _to_pixel.reset(to_pixel)
        _collector.reset(collector)
        return False


def reverse_mode_only() -> bool:
    """Whether models traced in this context are differentiated in reverse mode only."""
    return _reverse_only.get()


class reverse_mode_rendering:  # noqa: N801  (used as a context manager)
    """Context manager: models traced inside are differentiated in reverse mode only.

    A :class:`~scarlet_xr.core.SceneModel` traced inside places its boxes with a
    rule that has a hand-written gradient (:func:`jax.custom_vjp`): faster in
    a fit's gradient steps, but forward-mode derivatives (``jax.jvp``,
    ``jax.jacfwd``, ``jax.hessian``) of what is traced inside are not
    available. :func:`scarlet_xr.infer.fit` traces its loop in it.
    """

    def __init__(self, enabled: bool = True):
        self._enabled = bool(enabled)
        self._tokens = []

    def __enter__(self):
        self._tokens.append(_reverse_only.set(self._enabled))
        return self

    def __exit__(self, *exc):
        _reverse_only.reset(self._tokens.pop())
        return False
