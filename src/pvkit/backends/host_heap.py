"""Keep every vCPU engine's allocations in glibc's main malloc arena.

Measured here (pvkit bench, ALU loop): a Unicorn engine whose state lives in a non-main
glibc arena (the one a new thread gets) runs guest code 10-13% slower than one in the main
arena. With one arena every engine allocates from the main one; engines allocate almost
nothing after creation, so the shared lock is not contended. An arena is picked at a
thread's first malloc and any thread may already have made a second arena, so call this
before the process starts any thread (`pvkit`'s entry point does; so does each platform).
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
