"""Keep a long-lived process under the kernel's limit on memory mappings.

JAX's CPU backend maps each compiled kernel's code into its own memory
areas (about 160 areas for one fit's loss and gradient, measured with JAX
0.10.2), and keeps every compiled program for the life of the process.
Linux caps the areas of one process (``/proc/sys/vm/max_map_count``,
65530 by default); a process that passes the cap aborts inside the compiler
("Fatal Python error: Aborted", no Python traceback). Fitting a few hundred
different scenes in one Jupyter kernel or one test process reaches it
(measured: a test worker at 65003 areas aborted while compiling).
:func:`bound_compiled_programs` drops the compiled programs well before the
cap; those needed again are compiled anew (or read from the persistent
compilation cache, when one is configured).
"""

from __future__ import annotations

import gc
import logging

__all__ = ["MAP_FRACTION", "bound_compiled_programs", "memory_map_count"]

log = logging.getLogger(__name__)

MAP_FRACTION = 0.6
"""Fraction of the kernel's cap on memory areas above which compiled programs are dropped."""

_DEFAULT_MAX_MAP_COUNT = 65530


def memory_map_count() -> tuple[int, int] | None:
    """This process's memory areas and the kernel's cap on them.

    Returns
    -------
    (int, int) or None
        ``(areas in use, max_map_count)``; None where ``/proc`` cannot be
        read (not Linux), where there is no such cap to keep under.
    """
    try:
        with open("/proc/self/maps", "rb") as f:
            used = f.read().count(b"\n")  # about 7 ms per 10 000 areas
    except OSError:
        return None
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            cap = int(f.read().strip())
    except (OSError, ValueError):
        cap = _DEFAULT_MAX_MAP_COUNT
    return used, cap


def bound_compiled_programs(fraction: float = MAP_FRACTION) -> bool:
    """Drop JAX's compiled programs when this process nears the cap on memory areas.

    Call it between fits (never while a traced function runs): the default
    path calls it when a fit starts. Cheap when far from the cap (one read of
    ``/proc/self/maps``).

    Parameters
    ----------
    fraction : float
        Drop when the areas in use exceed this fraction of
        ``/proc/sys/vm/max_map_count`` (default :data:`MAP_FRACTION`).

    Returns
    -------
    bool
        True when the programs were dropped.

    Examples
    --------
    >>> from scarlet_xr.infer import bound_compiled_programs
    >>> bound_compiled_programs()  # far from the cap: nothing to do
    False
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    counts = memory_map_count()
    if counts is None or counts[0] <= fraction * counts[1]:
        return False
    import jax

    jax.clear_caches()
    gc.collect()
    after = memory_map_count()
    log.warning(
        "this process held %d memory areas (the kernel allows %d; JAX maps each compiled kernel): "
        "compiled programs dropped, %s areas now; programs needed again are compiled anew",
        counts[0], counts[1], "?" if after is None else after[0],
    )
    return True
