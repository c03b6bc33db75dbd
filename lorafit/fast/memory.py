"""Keep a training run's resident memory flat: hand freed heap memory back to the operating system,
and keep oneDNN's cache of matmul kernels small.

Why: torch's CPU allocator takes tensor memory from the C library's malloc. With length-bucketed
batches every step has a different sequence length, so activations of many different sizes are
allocated and freed; glibc keeps the freed pieces in its heap for reuse, and pieces that no later
request fits stay resident. The process's resident memory (RSS) then climbs over a run even though the
live tensors do not (a 250-step E2E/SmolLM2 bf16 run: +2.2 GB, peak 1.12x PEFT + Trainer's).
glibc's `malloc_trim(0)` returns every whole free page inside the heap to the OS (madvise), which
bounds that growth (same run: peak 0.96x PEFT's); the price is that those pages fault back in when
they are next used, about one step's time per trim (every step: -28% speed; every 10 steps: -8% on
E2E, -13% on SST-2, whose steps take 0.08 s). So fit() trims after `FastOptions.trim_every_steps`
steps and at least `trim_min_seconds` since the last trim: slow steps (large working sets, fast growth) are trimmed
every 10 steps, fast ones about every 5 seconds (docs/performance.md, `bench/bench_train.py
--trim-every`).

Only glibc has `malloc_trim`; elsewhere (macOS, musl) `release_free_heap` does nothing.

oneDNN, which runs torch's bf16 matmuls on CPU, builds a "primitive" (a kernel specialised to one shape)
per matmul shape and keeps up to 1024 of them in a process-wide cache, each holding memory of its
own. Packed or bucketed batches change the sequence length every step, so every step adds ~20 new
shapes that never recur, and the cache keeps growing for the first ~50 steps of a run. With 64
entries a step's shapes (all reused across its layers) still fit: on 250 E2E/SmolLM2 bf16 steps peak
RSS fell to 0.74x of oneDNN's default and the speed did not drop (docs/performance.md, `bench/bench_train.py
--variant NAME:onednn_primitive_cache=1024`); with no cache at all every matmul builds its kernel again
(much slower). `limit_onednn_primitive_cache` sets 64 through the environment variable oneDNN reads
when it creates its cache, i.e. before the process's first bf16 matmul. lorafit calls it where it starts
work (the CLI entry point and the start of `fit`), never at import: a library import must not change
the environment that child processes inherit. A size the user set (ONEDNN_ or
DNNL_PRIMITIVE_CACHE_CAPACITY) is kept. fp32 matmuls do not go
through oneDNN.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")


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


def trim_due(steps_since: int, seconds_since: float, every_steps: int, min_seconds: float) -> bool:
    """Whether fit() should call release_free_heap, `steps_since` optimizer steps and `seconds_since`
    seconds after the last call (or the start of training): at least `every_steps` steps (0: never)
    and `min_seconds` seconds (bounds the cost when steps are short)."""
    return every_steps > 0 and steps_since >= every_steps and seconds_since >= min_seconds


def limit_onednn_primitive_cache(capacity: int | None = 64) -> bool:
    """Set oneDNN's primitive cache to `capacity` entries (None: leave it) unless the user chose a
    size; True when it set it. Takes effect only before the process's first oneDNN matmul."""
    if capacity is None or any(name in os.environ for name in ONEDNN_CACHE_VARIABLES):
        return False
    os.environ[ONEDNN_CACHE_VARIABLES[0]] = str(capacity)
    return True
