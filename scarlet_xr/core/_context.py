"""The active source collector and position converter, held in ContextVars (no global mutable state).

``core`` knows nothing of sky coordinates: a scene layer that does (with its
frame's WCS) provides ``to_pixel``, which :class:`~scarlet_xr.core.Source`
calls for a centre that is not array-like (e.g. an astropy ``SkyCoord``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

__all__ = ["active_collector", "active_position_converter", "collecting"]

_collector: ContextVar[Callable | None] = ContextVar("scarlet_xr_scene_collector", default=None)
_to_pixel: ContextVar[Callable | None] = ContextVar("scarlet_xr_scene_to_pixel", default=None)


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
