r"""Choosing which layers get LoRA, wrapping them, and freezing everything else.

Targets follow PEFT's matching rules so adapter_config.json means the same thing in both tools:
- a list of names: a module matches when its qualified name equals a name or ends with "." + name;
- the keyword "all-linear": every nn.Linear / Conv1D except the output head (lm_head) and the
  modules trained in full (`modules_to_save`, e.g. the classification head);
- the keywords "default" (the attention's query and value projections), "attention" and "mlp",
  resolved from the model's type and layer names (lora/targets.py), among those same layers;
- a regex (`targets_regex`): `re.fullmatch` against the qualified module name.

Per-module rank and alpha (`rank_pattern`, `alpha_pattern`) follow PEFT's `get_pattern_key`: the first
key (in the mapping's order) for which `re.match(rf"(.*\.)?({key})$", module name)` succeeds gives the
module its rank (alpha); a module no key matches keeps `rank` (`alpha`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from lorafit.errors import TargetError
from lorafit.lora.layer import LoRALinear, is_linear, replace_module, weight_numel
from lorafit.lora.targets import DEFAULT, MODEL_KEYWORDS, resolve_keyword

ALL_LINEAR = "all-linear"
KEYWORDS = (ALL_LINEAR, *MODEL_KEYWORDS)  # a keyword is a recipe's only target
BiasMode = Literal["none", "all", "lora_only"]
Variant = Literal["lora", "dora"]


@dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how: the LoRA hyper-parameters of one adapter."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = (DEFAULT,)
    targets_regex: str | None = None
    rslora: bool = False
    init: str = "kaiming"  # kaiming, gaussian, pissa, pissa_niter_K, olora (lorafit/lora/inits.py)
    bias: BiasMode = "none"
    modules_to_save: tuple[str, ...] = ()
    variant: Variant = "lora"  # "dora": a magnitude vector per layer (lorafit/lora/dora.py)
    rank_pattern: Mapping[str, int] = field(default_factory=dict)  # PEFT's keys: regex -> rank
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)  # regex -> alpha

    def rank_for(self, module_name: str) -> int:
        """The rank of the layer `module_name`: rank_pattern's first matching key, else `rank`."""
        key = pattern_key(self.rank_pattern, module_name)
        return int(self.rank_pattern[key]) if key is not None else self.rank

    def alpha_for(self, module_name: str) -> float:
        """The alpha of the layer `module_name`: alpha_pattern's first matching key, else `alpha`."""
        key = pattern_key(self.alpha_pattern, module_name)
        return float(self.alpha_pattern[key]) if key is not None else self.alpha


def pattern_key(patterns: Mapping[str, object], module_name: str) -> str | None:
    """The first key of `patterns` matching `module_name` by PEFT's rule (the key is a regex that must
    match a dotted suffix of the name: `q_proj`, `layers.0.self_attn.q_proj`, `mlp\\..*_proj`)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return None


@dataclass
class InjectionReport:
    """What `add_lora` did: the wrapped layers, the fully trained modules, and parameter counts."""

    adapted: list[str]
    saved_modules: list[str]
    trainable_params: int
    total_params: int
    matched_by_target: dict[str, list[str]] = field(default_factory=dict)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)


def _name_matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def output_head_names(model: nn.Module) -> set[str]:
    """Qualified names of the output projection(s), which `all-linear` must skip.

    Found through transformers' `get_output_embeddings()` when the model has it (duck typed), and by
    the conventional name `lm_head` otherwise.
    """
    heads = {name for name, _ in model.named_modules() if name.split(".")[-1] == "lm_head"}
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        heads |= {name for name, m in model.named_modules() if m is out}
    return heads


def find_saved_modules(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Qualified names of the modules trained in full, matched like targets (suffix match)."""
    found = []
    for name, _ in model.named_modules():
        if name and any(_name_matches(name, n) for n in names):
            # A module inside one already chosen (e.g. classifier.dense under classifier) is covered.
            if not any(name.startswith(f + ".") for f in found):
                found.append(name)
    return found


def select_targets(model: nn.Module, spec: LoraSpec) -> dict[str, list[str]]:
    """Map each target pattern to the qualified names of the linear layers it selects.

    Raises TargetError when nothing matches, naming the pattern and listing the layer names
    that exist, so the user can pick valid ones.
    """
    saved = find_saved_modules(model, spec.modules_to_save)

    def inside_saved(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in saved)

    linear = [name for name, m in model.named_modules() if is_linear(m) and not isinstance(m, LoRALinear)]
    linear = [name for name in linear if not inside_saved(name)]
    if spec.targets_regex is not None:
        rx = re.compile(spec.targets_regex)
        matched = {spec.targets_regex: [n for n in linear if rx.fullmatch(n)]}
    elif len(spec.targets) == 1 and spec.targets[0] in KEYWORDS:
        heads = output_head_names(model)
        candidates = [n for n in linear if n not in heads]
        keyword = spec.targets[0]
        matched = {keyword: candidates if keyword == ALL_LINEAR else resolve_keyword(model, keyword, candidates)}
    else:
        matched = {t: [n for n in linear if _name_matches(n, t)] for t in spec.targets}
    empty = [t for t, names in matched.items() if not names]
    if empty:
        leaves = sorted({n.split(".")[-1] for n in linear})
        raise TargetError(
            f"target {empty[0]!r} matches no linear layer; layer names in this model: {', '.join(leaves)}"
        )
    return matched


def add_lora(model: nn.Module, spec: LoraSpec) -> InjectionReport:
    """Wrap the selected layers in LoRALinear (in place), freeze the rest, and count parameters.

    Trainable afterwards: every lora_A / lora_B; the modules in `spec.modules_to_save` in full;
    and biases per `spec.bias` ("all": every bias in the model, "lora_only": the adapted layers').
    """
    matched = select_targets(model, spec)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    targets = sorted({n for names in matched.values() for n in names}, key=order.__getitem__)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in targets:
        layer = LoRALinear.wrap(
            model.get_submodule(name),
            rank=spec.rank_for(name),
            alpha=spec.alpha_for(name),
            dropout=spec.dropout,
            rslora=spec.rslora,
            init=spec.init,
            dora=spec.variant == "dora",
        )
        replace_module(model, name, layer)
    for name, param in model.named_parameters():
        if is_lora_parameter(name):
            param.requires_grad_(True)
    if spec.bias == "all":
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.requires_grad_(True)
    elif spec.bias == "lora_only":
        for name in targets:
            bias = model.get_submodule(name).bias
            if bias is not None:
                bias.requires_grad_(True)
    saved = find_saved_modules(model, spec.modules_to_save)
    for name in saved:
        for param in model.get_submodule(name).parameters():
            param.requires_grad_(True)
    return InjectionReport(
        adapted=targets,
        saved_modules=saved,
        trainable_params=count_parameters(model, trainable_only=True),
        total_params=count_parameters(model),
        matched_by_target=matched,
    )


def is_lora_parameter(name: str) -> bool:
    """True for an adapter's own parameters: lora_A / lora_B weights and DoRA's magnitude vector."""
    return ".lora_A." in name or ".lora_B." in name or name.endswith(".lora_magnitude_vector")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements, each shared (tied) tensor counted once."""
    seen, total = set(), 0
    for param in model.parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        total += weight_numel(param)
    return total


def mark_all_trainable(model: nn.Module) -> int:
    """Full fine-tuning baseline: every parameter trainable. Returns the trainable count."""
    for param in model.parameters():
        param.requires_grad_(True)
    return count_parameters(model, trainable_only=True)
