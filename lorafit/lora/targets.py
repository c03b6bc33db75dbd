"""Target keywords: which linear layers `lora.targets: default | attention | mlp` name in a model.

- `default`: the attention's query and value projections, as in the LoRA paper (W_q, W_v) and PEFT's
  per-architecture defaults. Known model types use the table below; for another model the rule is:
  the first naming convention in QUERY_VALUE_CONVENTIONS whose every name is the leaf name of a linear
  layer inside attention (a path part containing "attn" or "attention"). A fused projection (GPT-2's
  `c_attn`, BLOOM's `query_key_value`, Phi-3's `qkv_proj`) is the query/value projection there: it
  holds them, together with the key.
- `attention`: every linear layer inside attention (query, key, value, output projections).
- `mlp`: every linear layer inside the repeated blocks (a path part that is a layer number) that is
  not in attention: the feed-forward layers (Llama's gate/up/down_proj, BERT's intermediate/output.dense).

The caller passes the candidate layers (linear, not the output head, not inside modules trained in
full), so a classification head is never a target.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lorafit.errors import TargetError

DEFAULT, ATTENTION, MLP = "default", "attention", "mlp"
MODEL_KEYWORDS = (DEFAULT, ATTENTION, MLP)  # keywords resolved from the model's own layer names

_Q_V = ("q_proj", "v_proj")
# model_type (transformers' config.model_type) -> leaf names of its query and value projections.
QUERY_VALUE_BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
                     "gemma3_text", "opt", "starcoder2", "olmo", "olmo2", "stablelm", "phi", "cohere", "cohere2",
                     "granite", "smollm3", "gpt_neo", "gptj", "llama4_text", "biogpt", "xglm"), _Q_V),
    "phi3": ("qkv_proj",), "codegen": ("qkv_proj",),
    "gpt2": ("c_attn",), "gpt_bigcode": ("c_attn",),
    "gpt_neox": ("query_key_value",), "bloom": ("query_key_value",), "falcon": ("query_key_value",),
    "mpt": ("Wqkv",),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra", "layoutlm", "megatron-bert"),
                    ("query", "value")),
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
    "t5": ("q", "v"), "mt5": ("q", "v"), "bart": _Q_V,
}
# The rule for model types not in the table, tried in this order (separate projections before fused ones).
QUERY_VALUE_CONVENTIONS: tuple[tuple[str, ...], ...] = (
    _Q_V, ("query", "value"), ("query_proj", "value_proj"), ("q_lin", "v_lin"), ("q", "v"),
    ("qkv_proj",), ("query_key_value",), ("c_attn",), ("Wqkv",), ("qkv",),
)


def _in_attention(name: str) -> bool:
    return any("attn" in part.lower() or "attention" in part.lower() for part in name.split(".")[:-1])


def _in_block(name: str) -> bool:
    return any(part.isdigit() for part in name.split("."))


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def query_value_names(model: nn.Module, candidates: Sequence[str]) -> tuple[str, ...]:
    """The leaf names `default` stands for in `model` (table, else the rule); TargetError if none."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in QUERY_VALUE_BY_MODEL_TYPE:
        return QUERY_VALUE_BY_MODEL_TYPE[model_type]
    leaves = {_leaf(n) for n in candidates if _in_attention(n)}
    for names in QUERY_VALUE_CONVENTIONS:
        if leaves.issuperset(names):
            return names
    raise TargetError(
        f"lora.targets default: no query/value projection found in model type {model_type!r}; list the layers "
        f"to adapt (attention layer names: {', '.join(sorted(leaves)) or 'none found'})"
    )


def resolve_keyword(model: nn.Module, keyword: str, candidates: Sequence[str]) -> list[str]:
    """Qualified names of the `candidates` that `keyword` (one of MODEL_KEYWORDS) selects in `model`."""
    if keyword == DEFAULT:
        names = set(query_value_names(model, candidates))
        return [n for n in candidates if _leaf(n) in names]
    if keyword == ATTENTION:
        return [n for n in candidates if _in_attention(n)]
    if keyword == MLP:
        return [n for n in candidates if _in_block(n) and not _in_attention(n)]
    raise ValueError(f"not a target keyword: {keyword!r}")
