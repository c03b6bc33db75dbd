"""Tiny random models of many architecture families, built from their transformers configs (no network).

Every model has 2 layers, hidden size 32 (64 where the family needs wider heads), 4 heads and the
128-token vocabulary of `tiny.tiny_tokenizer` (pad 0, bos 1, eos 2). Models with sliding-window
attention get a window of WINDOW tokens, so prompts + generations of a few dozen tokens outgrow it
and the window really changes the output.

    model = build("mistral")            # seeded: two calls give identical weights
    CAUSAL_FAMILIES, ENCODER_FAMILIES   # the names `build` knows, in the order docs/models.md lists them
"""

from __future__ import annotations

import torch

WINDOW = 8
VOCAB = 128
_IDS = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 128}

# family -> (transformers model_type, config kwargs). Hybrid families alternate sliding and full layers.
_CAUSAL = {
    "llama": ("llama", {**_DECODER, "num_key_value_heads": 2}),
    "mistral": ("mistral", {**_DECODER, "num_key_value_heads": 2, "sliding_window": WINDOW}),
    "qwen2": ("qwen2", {**_DECODER, "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": WINDOW,
                        "max_window_layers": 1}),
    "qwen3": ("qwen3", {**_DECODER, "num_key_value_heads": 2, "head_dim": 8, "use_sliding_window": True,
                        "sliding_window": WINDOW, "max_window_layers": 1}),
    "gemma": ("gemma", {**_DECODER, "num_key_value_heads": 1, "head_dim": 8}),
    "gemma2": ("gemma2", {**_DECODER, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": WINDOW,
                          "query_pre_attn_scalar": 8}),
    "gemma3_text": ("gemma3_text", {**_DECODER, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": WINDOW,
                                    "query_pre_attn_scalar": 8,
                                    "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("phi3", {**_DECODER, "num_key_value_heads": 4}),
    "gpt2": ("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}),
    "gpt_neox": ("gpt_neox", {**_DECODER, "rotary_pct": 0.5}),
    "opt": ("opt", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "word_embed_proj_dim": 32, "max_position_embeddings": 128}),
    "falcon": ("falcon", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "new_decoder_architecture": True, "num_kv_heads": 2}),
    "bloom": ("bloom", {"hidden_size": 32, "n_layer": 2, "n_head": 4}),
    "starcoder2": ("starcoder2", {**_DECODER, "num_key_value_heads": 2, "sliding_window": WINDOW}),
    # Chunked attention (tokens see only their own chunk): decoding it is refused at load, on purpose.
    "llama4_text": ("llama4_text", {**_DECODER, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size_mlp": 64,
                                    "num_local_experts": 1, "attention_chunk_size": WINDOW}),
}
_ENCODER = {
    "bert": ("bert", {**_DECODER}),
    "roberta": ("roberta", {**_DECODER, "max_position_embeddings": 130, "pad_token_id": 1}),
    "deberta_v2": ("deberta-v2", {**_DECODER, "relative_attention": True, "position_buckets": 16,
                                  "pos_att_type": ["p2c", "c2p"]}),
    "distilbert": ("distilbert", {"dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 4,
                                  "max_position_embeddings": 128}),
}
CAUSAL_FAMILIES = tuple(_CAUSAL)
ENCODER_FAMILIES = tuple(_ENCODER)


def config(family: str, num_labels: int = 2):
    """The transformers config of `family`'s tiny model."""
    from transformers import AutoConfig

    model_type, kwargs = {**_CAUSAL, **_ENCODER}[family]
    extra = {"num_labels": num_labels} if family in _ENCODER else {"tie_word_embeddings": False}
    return AutoConfig.for_model(model_type, **{**_IDS, **kwargs, **extra})


def build(family: str, seed: int = 0, num_labels: int = 2) -> torch.nn.Module:
    """A seeded tiny random model of `family`: a causal LM, or an encoder with a classification head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if family in _ENCODER else AutoModelForCausalLM
    return auto.from_config(config(family, num_labels)).eval()
