"""Keep glibc from handing every large freed tensor back to the kernel.

By default glibc serves an allocation above its mmap threshold (dynamic, at most 32 MiB on
64-bit) with its own ``mmap`` and unmaps it on ``free``. torch's CPU allocator frees the
activations after every forward pass, so each batch maps its pages again and the kernel zeroes
them: a large share of a CPU inference loop goes to page faults in the kernel. Raising the mmap
and trim thresholds to 1 GiB keeps the freed memory in the process for the next batch (the
README's "Known gaps" gives the measured effect on distillation). The same knobs exist as the
environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``; this sets them
from inside a process that has already started.

The thresholds only help threads that allocate from glibc's main arena. glibc gives other
threads arenas of their own whose heaps hold at most 64 MiB, and serves any larger block (a
batch's activations) with a mapping of its own that ``free`` unmaps again, whatever the
thresholds: a teacher run in a worker thread (a Dask task) faults its activations in again on
every batch. A process that runs inference in such threads is therefore started with
:data:`SINGLE_ARENA_ENVIRONMENT` (glibc reads it once, at start-up), which keeps every thread on
the main arena.

This changes the allocator of the whole process, so only code that owns the process calls it:
the command-line entry points (through :func:`tdt.process.configure_for_cli`) and worker
processes started to run this project's tasks. Importing this module changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations above this still get their own mapping. glibc's own dynamic maximum (32 MiB)
# is not enough: some activations of the larger teachers and students are bigger.
MMAP_THRESHOLD_BYTES = 1024 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

# For the environment of a process about to be started: every thread allocates from the main arena.
SINGLE_ARENA_ENVIRONMENT = {"MALLOC_ARENA_MAX": "1"}

_result: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); False where there is no glibc."""
    global _result
    if _result is None:
        _result = _set_thresholds()
    return _result


def applied_in_this_process() -> bool:
    """Whether :func:`keep_freed_memory` has run in this process (whatever its outcome)."""
    return _result is not None


def started_with_single_arena() -> bool:
    """Whether this process's environment asks glibc for one arena (see :data:`SINGLE_ARENA_ENVIRONMENT`)."""
    return all(os.environ.get(name) == value for name, value in SINGLE_ARENA_ENVIRONMENT.items())


def _set_thresholds() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mmap_ok and trim_ok
