"""The process's memory allocator: glibc malloc keeps what a training step frees.

By default glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free, and trims the top of its heap: each training step then faults its largest
activations in again and the kernel zeroes their pages once more. `run_stream` turns both off at
the start of a run, so from the second step on the pages of the first are reused. Measured side by
side (benchmarks/step_overheads.py, BENCHMARKS.md "Training cost"): at the bench preset 1.03-1.10x
per step, the page faults of a step from thousands to none. The results do not change (the
allocator hands out memory, it does not compute), and the resident size stays at the largest step's
peak, which every step reaches anyway. The setting is process-wide and lasts until the process ends.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4       # <malloc.h>
kept = False   # whether keep_freed_memory() has taken effect in this process (a run's environment.json)


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large blocks and its heap trimming. False (nothing changed) where
    malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt   # the process's own libc
    except (OSError, AttributeError):
        return False
    global kept
    kept = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return kept
