"""Tune glibc's malloc for a process that moves blobs in chunks of 64 KiB to 1 MiB.

glibc serves an allocation of 128 KiB or more with mmap, and gives freed memory at the top
of its heap back to the kernel. A blob moving through socket reads, decryption and file
writes allocates and frees such buffers thousands of times per GiB, and each fresh
mapping costs page faults: measured here, a 1 GiB download spent 1.0 s more in the kernel
(3.7 s against 2.7 s) than with the thresholds below.

Raising the mmap threshold to 4 MiB keeps those buffers in the heap, and a 32 MiB trim
threshold keeps the freed ones there for reuse. The price is freed memory held: up to
the trim threshold at the top of the main heap, and what thread arenas keep (glibc trims
those by other rules). Measured with it, the 1 GiB transfers of the benchmark peak at
~78 MB client RSS and ~52 MB server RSS (docs/performance.md).

Only glibc has mallopt; anywhere else this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Larger than the biggest buffer a blob moves in (1 MiB file chunks), with headroom.
MMAP_THRESHOLD = 4 << 20
# Freed heap kept for reuse before glibc trims it: a few dozen chunks' worth.
TRIM_THRESHOLD = 32 << 20

_done = False


def tune_allocator() -> bool:
    """Set the thresholds once per process; True when glibc took them."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The symbols the interpreter already has (libc's among them): find_library
        # would run ldconfig, 16 ms of every command's start.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    _done = ok
    return ok
