"""Merging LoRA updates into the frozen weights, and undoing it: explicit functions, never hidden.

    W' = W + scale * B A        (computed in fp32, cast back to W's dtype)
    W' = m / ||W + scale B A||_row * (W + scale B A)        for DoRA (lorafit/lora/dora.py)

After `merge_lora` every LoRALinear computes only W' x, so inference costs what the base costs.
`unload_lora` then swaps each LoRALinear back for the original module class, leaving a plain model
whose state dict has exactly the base model's keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from lorafit.errors import MergeError
from lorafit.lora.layer import LoRALinear, replace_module


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every LoRALinear in `model` with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


@torch.no_grad()
def merge_lora(model: nn.Module, keep_original: bool = True) -> int:
    """Add scale * B A into each LoRA layer's weight; returns how many layers were merged.

    Every delta is computed and checked before any weight changes, so a non-finite delta leaves the
    model untouched. Merging a layer that is already merged is an error (never a double add).
    With `keep_original`, the pre-merge weights are kept so `unmerge_lora` restores them bit for bit;
    without it (exporting a merged model), unmerge subtracts the delta instead.
    """
    layers = lora_layers(model)
    already = [name for name, layer in layers if layer.merged]
    if already:
        raise MergeError(f"{len(already)} LoRA layer(s) already merged (first: {already[0]}); unmerge first")
    quantized = [name for name, layer in layers if layer._quantized is not None]
    if quantized:  # W + BA rounded back to 4 / 8 bits would lose most of BA: merge into the full-precision base
        raise MergeError(f"{quantized[0]} has a quantized base weight; merge the adapter into the full-precision "
                         "base (lorafit merge loads it unquantized)")
    updates = []
    for name, layer in layers:
        merged = layer.weight.float() + layer.delta_weight()
        if not torch.isfinite(merged).all():
            raise MergeError(f"merging {name} gives non-finite weights; the adapter or base is corrupted")
        updates.append((layer, merged.to(layer.weight.dtype)))
    for layer, merged in updates:
        if keep_original:
            layer._weight_before_merge = layer.weight.detach().clone()
        layer.weight.data.copy_(merged)
        layer.merged = True
    return len(updates)


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> int:
    """Undo `merge_lora`: restore the saved base weights (exact), or subtract the delta if none was kept
    (not possible for DoRA, whose delta depends on the pre-merge W: MergeError before anything changes)."""
    lost = [name for name, layer in lora_layers(model) if layer.merged and layer.dora and layer._weight_before_merge is None]
    if lost:
        raise MergeError(f"{lost[0]}: a DoRA layer merged without keep_original cannot be unmerged")
    count = 0
    for _, layer in lora_layers(model):
        if not layer.merged:
            continue
        if layer._weight_before_merge is not None:
            layer.weight.data.copy_(layer._weight_before_merge)
            layer._weight_before_merge = None
        else:
            layer.weight.data.copy_((layer.weight.float() - layer.delta_weight()).to(layer.weight.dtype))
        layer.merged = False
        count += 1
    return count


def unload_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its original module (nn.Linear / Conv1D) and drop the adapters.

    Call after `merge_lora` to get a plain model with the update baked in (or without merging to get
    the base model back). Returns `model`, modified in place.
    """
    for name, layer in lora_layers(model):
        replace_module(model, name, layer.unwrap())
    return model


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes the base model's outputs (unmerged adapters are skipped)."""
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise MergeError("cannot disable merged LoRA layers; unmerge first")
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False
