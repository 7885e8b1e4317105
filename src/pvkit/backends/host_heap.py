"""Keep every vCPU engine's allocations in glibc's main malloc arena.

Measured here (pvkit bench, ALU loop): a Unicorn engine created on a vCPU thread runs guest
code about 13% slower than one created on the main thread, because glibc gives each new
thread its own arena and the engine's CPU state lands there. One arena removes the gap;
engines allocate almost nothing after creation, so the shared arena's lock is not contended.
Threads pick their arena at their first malloc, so call this before vCPU threads start.
"""

from __future__ import annotations

import ctypes
import functools

_M_ARENA_MAX = -8  # glibc <malloc.h>


@functools.cache
def use_one_malloc_arena() -> bool:
    """Idempotent; False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, 1))
