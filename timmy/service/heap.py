"""Keep a long-running process's memory flat under glibc's malloc.

glibc serves a big block (at least the *mmap threshold*, 128 KiB at start) with its
own ``mmap`` and gives it back on ``free``. But the threshold is dynamic: each
time such a block is freed, it rises to that block's size (up to 32 MiB). From
then on the big blocks a busy coordinator keeps replacing (the table of its
50,000-task finished cache, batch buffers) come from the heap instead, where
small long-lived allocations settle into the holes they leave, so the heap only
grows. Measured on ``timmy serve`` at full load: RSS crept up about 40 MB an
hour after its caches were full, with malloc's in-use bytes flat and its free
bytes growing; with the threshold pinned, it is flat once the caches are full
(1-hour soak, 1.2 million tasks: slope +0.00 MB/hour; ``benchmarks/soak.py``).
Pinning it is what glibc's own ``MALLOC_MMAP_THRESHOLD_`` does;
`pin_mmap_threshold` does it from inside, for ``timmy serve``.
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
