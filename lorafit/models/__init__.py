"""Base models: `resolve` a name (alias, local directory, HF id) to a `ModelRef`, `base` loads it
(`aliases`: the built-in models and their one-time GGUF conversion), and `loader` is the one loader of
base + LoRA that train, eval, merge and the multi-adapter host use.

The names most callers need are re-exported here."""

from lorafit.models.base import (
    HEAD_MODULES,
    load_base,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
    model_identity,
)
from lorafit.models.resolve import ModelRef, looks_like_path, resolve_model

__all__ = [
    "HEAD_MODULES", "ModelRef", "load_base", "load_causal_lm", "load_classifier", "load_tokenizer",
    "looks_like_path", "model_identity", "resolve_model",
]
