"""The CPU fast paths as explicit options, so a benchmark switches one off by passing an option, never
by changing a lorafit module's globals.

Every default is what `lorafit train` runs; docs/performance.md measures each against its alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafit.data.batches import BUCKET_WINDOW_BATCHES


@dataclass(frozen=True)
class FastOptions:
    """Which fast paths `fit` uses, and their tuning."""

    # The model's own nn.Dropout modules get the 4-lanes-per-draw mask (fast/dropout.py).
    model_dropout: bool = True
    # SDPA calls with dropout > 0 go to the same math with the cheap mask (fast/attention.py).
    attention_dropout: bool = True
    # malloc_trim after at least this many optimizer steps (0: never) and this many seconds (fast/memory.py).
    trim_every_steps: int = 10
    trim_min_seconds: float = 5.0
    # oneDNN primitives kept for reuse; None leaves oneDNN's default (1024) or the user's setting.
    onednn_primitive_cache: int | None = 64
    # bucket mode sorts by length within windows of this many batches (data/batches.py).
    bucket_window_batches: int = BUCKET_WINDOW_BATCHES
    # collate rounds each batch's width up to a multiple of this (1: no extra padding; experiments only).
    pad_to_multiple: int = 1
