"""transformers made quiet while lorafit loads a model: lorafit reports what matters itself."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_transformers(progress: bool = False):
    """transformers at ERROR level (no LOAD REPORT tables, no "newly initialized" notes) and, unless
    `progress`, no progress bars. Errors are still raised or printed; lorafit warns about what matters."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
