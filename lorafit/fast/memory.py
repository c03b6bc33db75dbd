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
E2E, -13% on SST-2, whose steps take 0.08 s). So fit() trims after TRIM_EVERY_STEPS steps and at
least TRIM_MIN_SECONDS since the last trim: slow steps (large working sets, fast growth) are trimmed
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
when it creates its cache, i.e. before the process's first bf16 matmul; `import lorafit` calls it,
and a size the user set (ONEDNN_ or DNNL_PRIMITIVE_CACHE_CAPACITY) is kept. fp32 matmuls do not go
through oneDNN.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

# fit() calls malloc_trim after at least this many optimizer steps (0: never) ...
TRIM_EVERY_STEPS = 10
# ... and at least this many seconds since the last call (bounds the cost when steps are short).
TRIM_MIN_SECONDS = 5.0
# oneDNN primitives (one per matmul shape) kept for reuse; oneDNN's own default is 1024.
ONEDNN_PRIMITIVE_CACHE_CAPACITY = 64
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


def trim_due(steps_since: int, seconds_since: float) -> bool:
    """Whether fit() should call release_free_heap, `steps_since` optimizer steps and `seconds_since`
    seconds after the last call (or the start of training)."""
    return TRIM_EVERY_STEPS > 0 and steps_since >= TRIM_EVERY_STEPS and seconds_since >= TRIM_MIN_SECONDS


def limit_onednn_primitive_cache() -> bool:
    """Set oneDNN's primitive cache to ONEDNN_PRIMITIVE_CACHE_CAPACITY entries unless the user chose a
    size; True when it set it. Takes effect only before the process's first oneDNN matmul."""
    if any(name in os.environ for name in ONEDNN_CACHE_VARIABLES):
        return False
    os.environ[ONEDNN_CACHE_VARIABLES[0]] = str(ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    return True
