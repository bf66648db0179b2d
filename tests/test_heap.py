"""`timmy.service.heap`: glibc's mmap threshold stays where `pin_mmap_threshold` put it, in a fresh
interpreter each (the setting is process-wide), and ``timmy serve`` pins it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# Frees a 4 MiB block (which, unpinned, raises the threshold to 4 MiB), then holds a
# 1 MiB one: mmapped (hblkhd grows) only if the threshold stayed below 1 MiB.
PROBE = """
import ctypes, json, sys
from timmy.service.heap import pin_mmap_threshold
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else None
big = bytes(4 << 20)
del big
before = libc.mallinfo2().hblkhd
block = bytes(1 << 20)
print(json.dumps({"pinned": pinned, "mmapped": libc.mallinfo2().hblkhd - before}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=60, env={**clean, **env}, check=True)
    return json.loads(out.stdout)


def test_unpinned_glibc_moves_big_blocks_onto_the_heap():
    # what the fix is for: without it, the 1 MiB block is not mmapped
    result = probe("leave")
    assert result["mmapped"] < 1 << 20


def test_pinned_big_blocks_stay_mmapped_after_a_bigger_one_was_freed():
    result = probe("pin")
    assert result["pinned"] == 128 * 1024
    assert result["mmapped"] >= 1 << 20


def test_the_users_own_setting_wins():
    result = probe("pin", MALLOC_MMAP_THRESHOLD_="4194304")
    assert result["pinned"] is None
    assert result["mmapped"] < 1 << 20  # 1 MiB is under the user's 4 MiB threshold
