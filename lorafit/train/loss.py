"""Training losses that compute only what counts.

Causal LM: the usual path computes logits (B, T, V) for every position and then masks the prompt.
With V = 49k (SmolLM2) that head is a fifth of the model and most positions are prompt or padding.
`causal_lm_loss` runs the backbone, gathers the hidden states of the positions that predict a
completion token, and applies the output head to those rows only: same loss and gradients, a fraction
of the head's FLOPs and memory. The loss is returned as a SUM over tokens; the caller divides by the
number of target tokens in the whole optimizer step, so gradient accumulation weighs every token alike.

Even those N rows make an (N, V) logit matrix of tens of MB (N ~ 250 for a batch of 8 E2E examples),
and the usual cross-entropy walks it five times (cast, log-softmax, its gradient, a zero-filled
gradient buffer, the cast back), each a fresh allocation. `HeadCrossEntropy` instead takes the rows a
chunk at a time and computes each chunk's loss and its gradient (softmax - one-hot) in the forward
pass, keeping only the (N, d) input gradient for the backward: same loss and gradients, no (N, V)
tensor kept (docs/performance.md measures the head's share of a step).

Only for models whose logits ARE lm_head(last hidden state). Skipping the model's forward after the
backbone also skips whatever that forward does to the logits: Gemma 2 soft-caps them
(cap * tanh(logits / cap), `final_logit_softcapping`), Cohere multiplies them by `logit_scale`, Granite
divides them by `logits_scaling`. The head path would train those models on a different loss, with no
error. So the head path is an allowlist (`PLAIN_HEAD_MODELS`): a config.model_type and the transformers
class whose forward is checked, by tests/test_loss_matches_model.py, to compute logits = lm_head(hidden)
and nothing after; a config of that type that still carries a logit transform attribute (any set
attribute named like *logit*, e.g. a Llama config with `logit_scale`) is refused too. Every other model
(`uses_plain_head` False) takes `full_forward_loss`: the model's own forward to its (B, T, V) logits,
transforms included, then the same summed masked cross-entropy. Slower and larger for a big vocabulary,
never wrong: for any causal LM the loss / target tokens equals `model(..., labels=labels).loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorafit.data.batches import IGNORE_INDEX
from lorafit.errors import DataError
from lorafit.fast.attention import PackedAttention
from lorafit.fast.precision import autocast_weight

# Rows of the (rows, V) logit chunk: 128 x 49k fp32 is 25 MB, small enough to reuse its memory
# from chunk to chunk, large enough for an efficient matmul against the (V, d) head.
HEAD_CHUNK_ROWS = 128


# config.model_type -> the transformers class whose forward computes logits = lm_head(last_hidden_state)
# with nothing after it (transformers 5.x; each pair is checked against the model's own loss by
# tests/test_loss_matches_model.py). A model not listed here trains through its own forward.
PLAIN_HEAD_MODELS = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# Config attributes that transform logits after the head in some architecture (Gemma 2, Cohere,
# Granite, ...); any set attribute whose name contains "logit" counts as well.
LOGIT_TRANSFORM_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def uses_plain_head(model: nn.Module) -> bool:
    """Whether `model`'s logits are exactly lm_head(last hidden state), so the head path may replace its forward.

    True only for an allowlisted model_type whose class is the listed transformers class (not a
    remote-code or user subclass with another forward), and whose config sets no logit transform.
    """
    config = getattr(model, "config", None)
    expected = PLAIN_HEAD_MODELS.get(getattr(config, "model_type", None))
    cls = type(model)
    if expected is None or cls.__name__ != expected or not cls.__module__.startswith("transformers.models."):
        return False
    names = {*LOGIT_TRANSFORM_ATTRIBUTES, *(k for k in vars(config) if "logit" in k.lower())}
    return all(getattr(config, name, None) is None for name in names)


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer body under a *ForCausalLM model (Llama: .model, GPT-2: .transformer)."""
    return model.base_model if hasattr(model, "base_model") else model.model


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over completion tokens (labels != -100).

    input_ids, attention_mask, labels: (B, T), or a packed row (`data.collate_packed`: B = 1, plus
    position_ids and segment_lengths). Allowlisted models (`uses_plain_head`): hidden states (B, T, d)
    -> the N rows whose next token is a target -> head (N, V) -> cross entropy against labels shifted
    by one. Any other model: `full_forward_loss`.
    """
    if not uses_plain_head(model):
        return full_forward_loss(model, batch)
    hidden = _run_packed_or_padded(_backbone(model), batch).last_hidden_state
    targets = batch["labels"][:, 1:]  # (B, T-1): the token each position must predict
    keep = targets != IGNORE_INDEX
    rows = hidden[:, :-1][keep]  # (N, d)
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:  # e.g. LoRA on the head: the module's own forward
        return F.cross_entropy(head(rows).float(), targets[keep], reduction="sum")
    return head_cross_entropy(rows, head.weight, targets[keep])


def full_forward_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`causal_lm_loss` through the model's own forward: its logits (B, T, V), with whatever it does
    after the head (soft-capping, scaling), then the summed cross-entropy of the target positions."""
    logits = _run_packed_or_padded(model, batch).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")


def _run_packed_or_padded(module: nn.Module, batch: dict[str, torch.Tensor]):
    """module(...) on a padded batch, or on a packed row with its examples attended one by one."""
    # use_cache=False: no key/value cache to build (a copy per layer) for a single forward pass.
    if "segment_lengths" not in batch:
        return module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    # a packed row (data.collate_packed): attention stays inside each example
    packed = PackedAttention(batch["segment_lengths"].tolist())
    with packed:  # the all-ones mask spares transformers the (T, T) mask PackedAttention would not use
        out = module(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"], use_cache=False,
        )
    if packed.calls == 0:  # another attention path would have let the examples see each other
        raise DataError(
            "train.batching: 'pack' needs the model's attention to run through torch's "
            "scaled_dot_product_attention (attn_implementation 'sdpa'); use 'bucket' or 'pad'"
        )
    return out


def head_cross_entropy(rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of logits rows @ weight.T against targets, a chunk of rows at a time.

    rows (N, d), weight (V, d), targets (N,) -> scalar. Under autocast the matmuls run in its dtype
    (the weight cast once per run, precision.py) and the softmax in fp32, as autocast would.
    """
    device = rows.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else rows.dtype
    compute_weight = autocast_weight(weight, dtype).detach()
    with torch.autocast(device, enabled=False):
        if not (torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)):
            return _chunked_head_loss(rows.to(dtype), compute_weight, targets, None)
        return HeadCrossEntropy.apply(rows, weight, targets, compute_weight)


def _chunked_head_loss(rows, weight, targets, grads: dict | None) -> torch.Tensor:
    """The loss; with `grads`, also fill grads["rows"] (N, d) and grads["weight"] (V, d) if present
    with the gradients of the summed loss. rows and weight are already in the matmul dtype."""
    total = torch.zeros((), dtype=torch.float32, device=rows.device)
    for start in range(0, rows.shape[0], HEAD_CHUNK_ROWS):
        chunk = rows[start : start + HEAD_CHUNK_ROWS]  # (n, d)
        target = targets[start : start + HEAD_CHUNK_ROWS, None]  # (n, 1)
        logits = (chunk @ weight.T).float()  # (n, V)
        log_z = torch.logsumexp(logits, dim=1, keepdim=True)  # (n, 1)
        total += (log_z - logits.gather(1, target)).sum()
        if grads is None:
            continue
        probs = logits.sub_(log_z).exp_()  # softmax, in place of the logits
        probs.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=probs.dtype))  # d loss / d logits
        probs = probs.to(weight.dtype)
        grads["rows"][start : start + HEAD_CHUNK_ROWS] = probs @ weight  # (n, d)
        if "weight" in grads:
            grads["weight"] += (probs.T @ chunk).float()  # (V, d)
    return total


class HeadCrossEntropy(torch.autograd.Function):
    """`head_cross_entropy` with its gradients computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, rows, weight, targets, compute_weight):
        grads = {"rows": torch.empty(rows.shape, dtype=compute_weight.dtype, device=rows.device)}
        if weight.requires_grad:  # full fine-tuning: the head (often tied to the embeddings) trains too
            grads["weight"] = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss = _chunked_head_loss(rows.to(compute_weight.dtype), compute_weight, targets, grads)
        ctx.save_for_backward(grads["rows"], grads.get("weight"))
        ctx.input_dtypes = (rows.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_rows, grad_weight = ctx.saved_tensors
        rows_dtype, weight_dtype = ctx.input_dtypes
        d_rows = (grad_rows * grad_loss).to(rows_dtype)
        d_weight = None if grad_weight is None else (grad_weight * grad_loss).to(weight_dtype)
        return d_rows, d_weight, None, None


def causal_lm_loss_full_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reference path: full (B, T, V) logits, then masked summed cross-entropy. Used by tests."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over rows (classification) or summed squared error (regression, 1 label)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()  # (B, C)
    labels = batch["labels"]
    if labels.is_floating_point():
        return F.mse_loss(logits.squeeze(-1), labels, reduction="sum")
    return F.cross_entropy(logits, labels, reduction="sum")
