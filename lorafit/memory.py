"""Hand freed heap memory back to the operating system during long training runs.

Why: torch's CPU allocator takes tensor memory from the C library's malloc. With length-bucketed
batches every step has a different sequence length, so activations of many different sizes are
allocated and freed; glibc keeps the freed pieces in its heap for reuse, and pieces that no later
request fits stay resident. The process's resident memory (RSS) then climbs over a run even though the
live tensors do not (a 250-step E2E/SmolLM2 run grew by ~1.2 GB). glibc's `malloc_trim(0)` returns
every whole free page inside the heap to the OS (madvise), which bounds that growth; the price is that
those pages fault back in when they are used again, so it runs every few steps, not every step
(docs/performance.md measures the trade-off with `bench/bench_train.py --trim-every`).

Only glibc has `malloc_trim`; elsewhere (macOS, musl) `release_free_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

# Optimizer steps between two malloc_trim calls in fit(); 0 turns trimming off.
TRIM_EVERY_STEPS = 10


@cache
def _malloc_trim():
    """glibc's malloc_trim(size_t pad) -> int, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library among them
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; True when memory was actually released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def trim_due(step: int, every: int | None = None) -> bool:
    """Whether fit() should call release_free_heap after optimizer step `step` (1-based)."""
    every = TRIM_EVERY_STEPS if every is None else every
    return every > 0 and step % every == 0
