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
import os

__all__ = ["MAP_FRACTION", "bound_compiled_programs", "memory_map_count", "resident_memory_mb",
           "return_free_memory", "drop_compiled_programs", "release_compiled_memory"]

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


def resident_memory_mb() -> float | None:
    """This process's resident memory in MB.

    Returns
    -------
    float or None
        Resident set size (MiB); None when it cannot be read.
    """
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError, IndexError):
        try:
            import psutil

            return psutil.Process().memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 - no way to read it
            return None


def return_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``).

    Programs that JAX drops are freed into the C heap, which keeps the pages
    for reuse: without this the resident memory hardly falls after a drop.

    Returns
    -------
    bool
        False where the C library has no ``malloc_trim`` (not glibc: macOS,
        musl); nothing is done then.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def drop_compiled_programs() -> float | None:
    """Drop JAX's in-memory compiled programs and hand their pages back.

    Call it between fits, never while a traced function runs. Programs
    needed again are compiled anew, or read from the persistent compilation
    cache when one is configured.

    Returns
    -------
    float or None
        Resident memory (MiB) afterwards; None when it cannot be read.
    """
    import jax

    jax.clear_caches()
    gc.collect()
    return_free_memory()
    return resident_memory_mb()


def release_compiled_memory(limit_mb: float, *, trim_first: bool = True) -> float | None:
    """Drop the compiled programs when this process holds more than ``limit_mb``.

    With ``trim_first``, the C heap's free pages are handed back first and
    the programs are dropped (:func:`drop_compiled_programs`) only if the
    process still holds more than ``limit_mb``. The command line calls it
    between a fit and its results, without ``trim_first`` (the pages a trim
    returns are taken again by the measurements): a crowded scene's results
    then do not come on top of its fit's programs.

    Parameters
    ----------
    limit_mb : float
        Resident memory (MiB) above which anything is done.
    trim_first : bool
        Hand the heap's free pages back first, and drop only if that is not
        enough.

    Returns
    -------
    float or None
        Resident memory (MiB) after dropping; None when nothing was dropped
        (at or under the limit, or the memory cannot be read).

    Examples
    --------
    >>> from scarlet_xr.infer import release_compiled_memory
    >>> release_compiled_memory(1e9) is None  # far under the limit: nothing dropped
    True
    """
    rss = resident_memory_mb()
    if rss is None or rss <= limit_mb:
        return None
    if trim_first and return_free_memory():
        rss = resident_memory_mb() or rss
        if rss <= limit_mb:
            return None
    before = rss
    after = drop_compiled_programs()
    log.info("compiled programs dropped: %.0f MiB resident before, %s after", before,
             "?" if after is None else f"{after:.0f} MiB")
    return after
