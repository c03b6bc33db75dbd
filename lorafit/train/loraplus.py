"""LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): B learns faster than A.

The paper shows that with one learning rate for A and B, feature learning is inefficient at large width;
giving B a learning rate `ratio` times A's (ratio ~ 16) fixes it. The parameter groups are PEFT's
`create_loraplus_optimizer`, so a recipe means the same thing in both tools:

    A            every other trainable parameter (lora_A, 2-D head weights)      lr,               weight decay
    embedding    LoRA factors of a wrapped embedding layer (lorafit wraps only  lr_embedding,     weight decay
                 linear layers, so this group is empty today)
    B            lora_B and 1-D parameters (DoRA's magnitude, RMSNorm weights)   lr * ratio,       weight decay
    B, no decay  biases and LayerNorm parameters                                 lr * ratio,       no decay

The scheduler scales every group's lr by the same factor (warm-up, decay), as with one group.
"""

from __future__ import annotations

from torch import nn


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases and nn.LayerNorm parameters: what PEFT (and transformers' Trainer) never decays."""
    names = {name for name, _ in model.named_parameters() if "bias" in name}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            names |= {f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters()}
    return names


def loraplus_groups(model: nn.Module, *, lr: float, ratio: float, lr_embedding: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups for LoRA+ over `model`'s trainable parameters (empty groups left out)."""
    no_decay = _no_decay_names(model)
    modules = dict(model.named_modules())
    groups: dict[str, list[nn.Parameter]] = {"a": [], "embedding": [], "b": [], "b_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # The LoRA layer owning lora_A.weight / lora_B.weight is two levels up.
        owner = modules.get(".".join(name.split(".")[:-2]))
        wrapped = getattr(owner, "_original", None)
        if isinstance(wrapped, nn.Embedding):
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["b_no_decay" if name in no_decay else "b"].append(param)
        else:
            groups["a"].append(param)
    settings = {
        "a": (lr, weight_decay),
        "embedding": (lr_embedding, weight_decay),
        "b": (lr * ratio, weight_decay),
        "b_no_decay": (lr * ratio, 0.0),
    }
    return [
        {"params": params, "lr": settings[key][0], "weight_decay": settings[key][1]}
        for key, params in groups.items()
        if params
    ]


def parameter_groups(model: nn.Module, params: list[nn.Parameter], config) -> list:
    """What AdamW is given: the trainable `params` as one group, or, with train.loraplus_lr_ratio set,
    LoRA+'s groups (`loraplus_groups`). `config`: the recipe's TrainConfig."""
    if config.loraplus_lr_ratio is None:
        return params
    return loraplus_groups(model, lr=config.lr, ratio=config.loraplus_lr_ratio,
                           lr_embedding=config.loraplus_lr_embedding, weight_decay=config.weight_decay)
