"""The memory a LoRA run will need, from the model's config alone (no weights read): what `lorafit
inspect` prints before loading anything.

    weights      frozen linears per `quantize` (fp32 4 B; int8 1 B + a row scale; nf4 0.5 B + one fp32
                 absmax per 64 weights = 0.5625 B), plus bf16 copies of the frozen fp32 linears when the
                 run computes in bf16 (fast/precision.py caches them, 2 B each); embeddings, an untied
                 head and norms in fp32
    trainable    LoRA A and B: the parameter, its gradient and AdamW's two moments, 16 B per element
    activations  what autograd keeps for the backward pass, per token and decoder layer, in fp32 floats:
                     3.6 * (hidden + intermediate)                       (norms, attention, MLP)
                   + 0.47 * sum of the adapted layers' d_in             (LoRA's saved inputs)
                   + 1.5 * the same sum when lora.dropout > 0           (masks and dropped inputs)
                 a fit to the tensors autograd saves (torch.autograd.graph.saved_tensors_hooks) on
                 SmolLM2-135M's shapes, q/v and all-linear, with and without dropout (each within 4%;
                 tests/test_memory_estimate.py checks another shape); bf16 autocast keeps about 0.9x. With checkpointing: one hidden-size
                 input per token and layer, plus one layer's activations while it is recomputed.
    runtime      the Python process with torch and transformers imported, and the allocator's slack:
                 a constant measured on this machine (RUNTIME_BYTES)
    peak         the larger of loading (the checkpoint read in its own dtype: fp32 for a plain run, the
                 stored dtype when quantizing) and training (weights + trainable + activations + runtime)

Tokens per step: batch_size x data.max_length, the most a batch can hold (packed rows are at most that
long; most batches hold fewer). Attention is taken as torch's fused SDPA (no tokens x tokens matrix).
Llama-style decoders only (q/k/v/o + gate/up/down projections): other models get no estimate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUNTIME_BYTES = 600 * 2**20  # measured: torch + transformers + lorafit imported, data pipeline, allocator slack
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite")
BYTES_PER_WEIGHT = {"none": 4.0, "int8": 1.0, "nf4": 0.5 + 4 / 64}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Llama-style decoder that memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    checkpoint_bytes_per_weight: float = 4.0  # the dtype weights are stored in (fp32 4, bf16 2)

    @classmethod
    def from_config(cls, config: dict) -> DecoderShape | None:
        """From a config.json dict; None when it is not a Llama-style decoder."""
        if config.get("model_type") not in DECODER_TYPES:
            return None
        heads = config["num_attention_heads"]
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        return cls(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                   layers=config["num_hidden_layers"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                   vocab=config["vocab_size"], tied=bool(config.get("tie_word_embeddings", False)),
                   checkpoint_bytes_per_weight=2.0 if "16" in dtype else 4.0)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer in one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def parameters(self) -> int:
        """All parameters: the decoder layers' linears and norms, the embeddings, an untied head."""
        per_layer = sum(a * b for a, b in self.linears().values()) + 2 * self.hidden
        return self.layers * per_layer + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes, by what holds them."""

    weights: int
    trainable: int  # LoRA parameters + gradients + AdamW moments
    activations: int  # without checkpointing
    activations_checkpointed: int
    runtime: int
    loading: int  # the peak while loading the checkpoint
    checkpointing: bool  # which activations the peak counts
    trainable_params: int

    @property
    def training(self) -> int:
        acts = self.activations_checkpointed if self.checkpointing else self.activations
        return self.weights + self.trainable + acts + self.runtime

    @property
    def peak(self) -> int:
        return max(self.loading, self.training)


def adapted(targets: tuple[str, ...], targets_regex: str | None) -> list[str]:
    """Which of one layer's linears the LoRA targets select (name suffixes, all-linear, or a regex on the
    leaf name, an approximation: a regex over full paths is matched against `layers.0.<group>.<name>`)."""
    if targets_regex is not None:
        rx = re.compile(targets_regex)
        return [n for n in LINEARS if rx.fullmatch(f"model.layers.0.{'self_attn' if n[0] in 'qkvo' else 'mlp'}.{n}")]
    if tuple(targets) == ("all-linear",):
        return list(LINEARS)
    return [n for n in LINEARS if any(t == n or t.endswith("." + n) for t in targets)]


def estimate_memory(shape: DecoderShape, *, quantize: str, bf16: bool, targets: list[str], rank: int,
                    dropout: float, tokens: int, checkpointing: bool) -> MemoryEstimate:
    """Bytes a LoRA run on `shape` needs (module docstring). `targets`: the adapted linears of a layer
    (`adapted`); `tokens`: per forward pass (batch x length); `bf16`: the resolved precision."""
    h, layers = shape.hidden, shape.layers
    linears = shape.linears()
    linear_weights = layers * sum(a * b for a, b in linears.values())
    other_weights = shape.parameters() - linear_weights
    per_weight = BYTES_PER_WEIGHT[quantize] + (2.0 if bf16 and quantize == "none" else 0.0)
    head_copy = 2.0 * shape.vocab * h if bf16 else 0.0  # the head's bf16 copy (fast/precision.py)
    weights = linear_weights * per_weight + other_weights * 4.0 + head_copy
    lora_params = layers * sum(rank * (linears[n][0] + linears[n][1]) for n in targets)
    d_in = sum(linears[n][0] for n in targets)
    floats = 3.6 * (h + shape.intermediate) + 0.47 * d_in + (1.5 * d_in if dropout > 0 else 0.0)
    per_float = 4.0 * (0.9 if bf16 else 1.0)
    per_layer = tokens * floats * per_float
    activations = layers * per_layer
    checkpointed = layers * tokens * h * 4.0 + per_layer
    loading = shape.parameters() * shape.checkpoint_bytes_per_weight if quantize != "none" else shape.parameters() * 4.0
    return MemoryEstimate(weights=int(weights), trainable=16 * lora_params, activations=int(activations),
                          activations_checkpointed=int(checkpointed), runtime=RUNTIME_BYTES,
                          loading=int(loading + RUNTIME_BYTES), checkpointing=checkpointing,
                          trainable_params=lora_params)


def describe(estimate: MemoryEstimate) -> list[str]:
    """Lines for `lorafit inspect`."""
    def gb(n: int) -> str:
        return f"{n / 2**30:.2f} GB"

    on = "with" if estimate.checkpointing else "without"
    return [
        f"memory estimate (train.gradient_checkpointing: {str(estimate.checkpointing).lower()}):",
        f"  weights                   {gb(estimate.weights)}",
        f"  trainable + AdamW state   {gb(estimate.trainable)} ({estimate.trainable_params:,} LoRA parameters)",
        f"  activations               {gb(estimate.activations)} without checkpointing, "
        f"{gb(estimate.activations_checkpointed)} with",
        f"  runtime                   {gb(estimate.runtime)}",
        f"  loading peak              {gb(estimate.loading)}",
        f"  expected peak             {gb(estimate.peak)} ({on} checkpointing)",
    ]
