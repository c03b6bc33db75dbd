"""Training losses that compute only what counts.

Causal LM: the usual path computes logits (B, T, V) for every position and then masks the prompt.
With V = 49k (SmolLM2) that head is a fifth of the model and most positions are prompt or padding.
`causal_lm_loss` runs the backbone, gathers the hidden states of the positions that predict a
completion token, and applies the output head to those rows only: same loss and gradients, a fraction
of the head's FLOPs and memory. The loss is returned as a SUM over tokens; the caller divides by the
number of target tokens in the whole optimizer step, so gradient accumulation weighs every token alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import IGNORE_INDEX


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer body under a *ForCausalLM model (Llama: .model, GPT-2: .transformer)."""
    return model.base_model if hasattr(model, "base_model") else model.model


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over completion tokens (labels != -100).

    input_ids, attention_mask, labels: (B, T). Hidden states (B, T, d) -> the N rows whose next
    token is a target -> head (N, V) -> cross entropy against labels shifted by one.
    """
    hidden = _backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]  # (B, T-1): the token each position must predict
    keep = targets != IGNORE_INDEX
    rows = hidden[:, :-1][keep]  # (N, d)
    logits = model.get_output_embeddings()(rows).float()  # (N, V)
    return F.cross_entropy(logits, targets[keep], reduction="sum")


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
