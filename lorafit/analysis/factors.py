"""An adapter directory read as what the analysis needs: per adapted layer the factors A, B and the scale.

PEFT's file layout (lorafit/lora/adapter.py), for every adapted module `<path>`:

    base_model.model.<path>.lora_A.weight   A: (r, d_in)
    base_model.model.<path>.lora_B.weight   B: (d_out, r)

so that the update is ΔW = scale · B A, (d_out, d_in), scale = lora_alpha / r (alpha / sqrt(r) for
rsLoRA). GPT-2's Conv1D keeps its *base* weight transposed, (d_in, d_out), but PEFT (and lorafit) store
its A and B in this same orientation (PEFT transposes B A only when merging, `fan_in_fan_out`), so the
factors mean the same thing for every layer kind; only amplification.py, which reads the base weight,
has to care.

Every other tensor (saved heads, `base_layer.bias`) is kept as `other` so truncation can copy it.
Each layer carries its own scale (rank_pattern / alpha_pattern give layers their own rank and alpha)
and, for a DoRA adapter, its magnitude vector m: a DoRA update is W' - W, which needs the base weight
(the analysis workflow computes it with lorafit/lora/dora.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorafit.errors import AdapterError
from lorafit.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    lora_scale,
    read_adapter_config,
    read_adapter_tensors,
    spec_from_config,
)

PREFIX = "base_model.model."
A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
M_SUFFIX = ".lora_magnitude_vector"
RUN_RECIPE = "recipe.yaml"  # a run directory holds its resolved recipe and the adapter under adapter/
RUN_ADAPTER = "adapter"


@dataclass
class LayerFactors:
    """One adapted layer: its module path, the factors (fp32 as stored) and where it sits in the model."""

    name: str  # module path inside the base model, e.g. model.layers.3.self_attn.q_proj
    a: torch.Tensor  # (r, d_in)
    b: torch.Tensor  # (d_out, r)
    scale: float = 1.0  # this layer's alpha / r (or alpha / sqrt(r))
    magnitude: torch.Tensor | None = None  # DoRA's m (d_out,); None for plain LoRA

    @property
    def target(self) -> str:
        """The module's own name (q_proj, v_proj, query, c_attn...): what `lora.targets` lists."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def depth(self) -> int | None:
        """The transformer block index: the first integer in the path (None for a module outside blocks)."""
        found = re.search(r"(?:^|\.)(\d+)(?:\.|$)", self.name)
        return int(found.group(1)) if found else None

    @property
    def shape(self) -> tuple[int, int]:
        """ΔW's shape, (d_out, d_in)."""
        return (self.b.shape[0], self.a.shape[1])


@dataclass
class AdapterFactors:
    """An adapter directory: config, header metadata, the scale, adapted layers (in file order), the rest."""

    directory: Path
    config: dict
    metadata: dict[str, str]
    rank: int
    scale: float
    layers: list[LayerFactors]
    other: dict[str, torch.Tensor] = field(default_factory=dict)
    variant: str = "lora"  # "dora": every layer has a magnitude vector
    patterned: bool = False  # rank_pattern / alpha_pattern: layers differ in rank or scale

    def layer_map(self) -> dict[str, LayerFactors]:
        return {layer.name: layer for layer in self.layers}


def adapter_dir_of(target: str | Path) -> Path:
    """The adapter directory of TARGET: `<run>/adapter` for a run directory, else TARGET itself."""
    path = Path(target)
    if (path / RUN_RECIPE).is_file() and (path / RUN_ADAPTER).is_dir():
        return path / RUN_ADAPTER
    if (path / RUN_RECIPE).is_file():
        raise AdapterError(f"{path}: a run directory without {RUN_ADAPTER}/ (training has not saved an adapter yet)")
    return path


def read_factors(target: str | Path) -> AdapterFactors:
    """Read an adapter (or a run's adapter) into per-layer factors; AdapterError naming file and key."""
    directory = adapter_dir_of(target)
    config = read_adapter_config(directory)
    spec = spec_from_config(config, source=str(directory / CONFIG_NAME))
    tensors, metadata = read_adapter_tensors(directory)
    source = directory / WEIGHTS_NAME
    layers, other = [], {}
    magnitudes = {key[len(PREFIX) : -len(M_SUFFIX)]: t for key, t in tensors.items()
                  if spec.variant == "dora" and key.endswith(M_SUFFIX) and key.startswith(PREFIX)}
    for key, tensor in tensors.items():
        if key.endswith(B_SUFFIX) or key[len(PREFIX) : -len(M_SUFFIX)] in magnitudes:
            continue
        if not key.endswith(A_SUFFIX):
            other[key] = tensor
            continue
        if not key.startswith(PREFIX):
            raise AdapterError(f"{source}: tensor {key} does not start with {PREFIX!r} (not PEFT's key layout)")
        name = key[len(PREFIX) : -len(A_SUFFIX)]
        b_key = PREFIX + name + B_SUFFIX
        if b_key not in tensors:
            raise AdapterError(f"{source}: {key} has no matching {b_key}")
        a, b = tensor, tensors[b_key]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{source}: {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not (r, d_in) and (d_out, r)"
            )
        rank = spec.rank_for(name)
        if a.shape[0] != rank:
            raise AdapterError(f"{source}: {key} has rank {a.shape[0]}, {CONFIG_NAME} says r={rank}")
        magnitude = magnitudes.get(name)
        if spec.variant == "dora" and (magnitude is None or magnitude.shape != (b.shape[0],)):
            raise AdapterError(f"{source}: {name} has no lora_magnitude_vector of {b.shape[0]} values (use_dora is true)")
        scale = lora_scale(rank, spec.alpha_for(name), spec.rslora)
        layers.append(LayerFactors(name, a, b, scale, magnitude))
    orphans = [k for k in tensors if k.endswith(B_SUFFIX) and k[: -len(B_SUFFIX)] + A_SUFFIX not in tensors]
    if orphans:
        raise AdapterError(f"{source}: {orphans[0]} has no matching lora_A")
    if not layers:
        raise AdapterError(f"{source}: no lora_A / lora_B tensors (nothing to analyse)")
    scale = lora_scale(spec.rank, spec.alpha, spec.rslora)
    return AdapterFactors(directory, config, metadata, spec.rank, scale, layers, other, spec.variant,
                          bool(spec.rank_pattern or spec.alpha_pattern))
