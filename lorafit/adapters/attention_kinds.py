"""Which models the mixed-adapter decode loop (adapters/decode.py) can run, from the config alone:
checked when a host loads a model, so an unsupported one is refused at start, never at its first request."""

from __future__ import annotations

from lorafit.errors import ModelError

# Per-layer attention kinds the loop decodes (transformers' `layer_types` names). Others (chunked
# attention, linear/recurrent layers) need cache layouts the row joins and crops here do not handle.
DECODABLE_LAYER_TYPES = ("full_attention", "sliding_attention")


def attention_layer_types(config) -> list[str]:
    """Each decoder layer's attention kind, as transformers' caches see it ("full_attention", ...)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    return get_layer_types_and_kwargs(config.get_text_config(decoder=True))[0]


def check_decodable(config) -> None:
    """Raise ModelError (one line) if DecodeBatch cannot decode a model of this config."""
    # "dummy": a layer that reuses another layer's keys/values (transformers' name for KV sharing).
    kinds = sorted({"kv_shared" if k == "dummy" else k for k in attention_layer_types(config)} - set(DECODABLE_LAYER_TYPES))
    if kinds:
        raise ModelError(f"model type {config.model_type!r} has {', '.join(kinds)} layers; batched decoding "
                         f"(generate, serve) supports {' and '.join(DECODABLE_LAYER_TYPES)} layers only")
