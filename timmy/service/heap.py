"""Keep a long-running process's memory flat under glibc's malloc: `pin_mmap_threshold` fixes
the mmap threshold that glibc otherwise raises as big blocks are freed (the measurements:
docs/operating.md, "Memory that stays flat under glibc").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3          # mallopt(3)
DEFAULT_THRESHOLD = 128 * 1024  # glibc's own starting value


def pin_mmap_threshold(nbytes: int = DEFAULT_THRESHOLD) -> int | None:
    """Fix glibc's mmap threshold at ``nbytes``; returns it, or None if nothing was changed.

    Does nothing (None) off glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is already set in
    the environment (the user's own choice wins).

    glibc serves a block of at least the threshold (128 KiB at start) with its own ``mmap``
    and gives it back on ``free``, but each such free raises the threshold to that block's
    size (up to 32 MiB); from then on big blocks come from the heap, where small long-lived
    allocations pin the holes they leave, and RSS only grows. This is what glibc's own
    ``MALLOC_MMAP_THRESHOLD_`` does, from inside, for ``timmy serve``.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return nbytes if mallopt(M_MMAP_THRESHOLD, nbytes) == 1 else None
