"""The active source collector, held in a ContextVar (no global mutable state)."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

__all__ = ["active_collector", "collecting"]

_collector: ContextVar[Callable | None] = ContextVar("scarlet_xr_scene_collector", default=None)


def active_collector() -> Callable | None:
    """Return the callable that collects new sources in this context, if any."""
    return _collector.get()


class collecting:  # noqa: N801  (used as a context manager)
    """Context manager that makes ``fn`` receive every Source created inside it."""

    def __init__(self, fn: Callable):
        self._fn = fn
        self._tokens = []

    def __enter__(self):
        self._tokens.append(_collector.set(self._fn))
        return self

    def __exit__(self, *exc):
        _collector.reset(self._tokens.pop())
        return False
