"""Adapters on disk in PEFT's format, so PEFT reads ours and we read PEFT's.

    <dir>/adapter_config.json         PEFT LoraConfig fields (peft_type LORA, r, lora_alpha, ...)
    <dir>/adapter_model.safetensors   base_model.model.<module path>.lora_A.weight   (rank, d_in)
                                      base_model.model.<module path>.lora_B.weight   (d_out, rank)
                                      base_model.model.<head path>.<param>           (modules_to_save)
                                      base_model.model.<path>.base_layer.bias        (adapted layer's bias)
                                      base_model.model.<path>.lora_magnitude_vector  (d_out,) DoRA's m

Variants use PEFT's own config keys: `use_dora`, `rank_pattern` / `alpha_pattern` (per-module rank and
alpha), `init_lora_weights` ("gaussian", "pissa", "pissa_niter_K", "olora"). An adapter trained from a
pissa / olora init (whose base weight was replaced by the residual W - s B0 A0 while training) is saved
converted, as PEFT's `save_pretrained(path_initial_model_for_weight_conversion=...)` does: rank 2r,
A' = [A; A0], B' = [B | -B0], alpha doubled (x sqrt 2 for rsLoRA), so s' B' A' = s (B A - B0 A0) applies
to the ORIGINAL base weight, and `init_lora_weights: true`; the header records `lorafit_converted_from`.

lorafit's own metadata (base model identity, recipe hash, version) goes into the safetensors header
under `lorafit_*` keys; PEFT ignores them. Saving is atomic: the directory appears complete or not
at all, and a failed save leaves the previous adapter intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lorafit.errors import AdapterError
from lorafit.lora.inits import init_problem, uses_base_weight
from lorafit.lora.inject import (
    ALL_LINEAR,
    KEYWORDS,
    LoraSpec,
    find_saved_modules,
    is_lora_parameter,
    output_head_names,
)
from lorafit.lora.layer import LoRALinear
from lorafit.lora.merge import lora_layers
from lorafit.runs.atomic import atomic_directory

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."

# PEFT LoraConfig features that change the math; an adapter using them is refused, not misread.
_UNSUPPORTED = {
    "layers_to_transform": (None,),
    "layer_replication": (None,),
    "lora_bias": (False, None),
    "exclude_modules": (None, [], ()),
    "target_parameters": (None, [], ()),
    "trainable_token_indices": (None,),
    "use_qalora": (False, None),
}


def adapter_tensors(model: nn.Module, spec: LoraSpec) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's key names (what `save_adapter` writes)."""
    lora_names = {name for name, _ in lora_layers(model)}
    saved = find_saved_modules(model, spec.modules_to_save)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        module_name, _, leaf = name.rpartition(".")
        in_saved = any(name.startswith(s + ".") for s in saved)
        is_lora = is_lora_parameter(name)
        is_bias = leaf == "bias" and (
            spec.bias == "all" or (spec.bias == "lora_only" and module_name in lora_names)
        )
        if not (is_lora or in_saved or is_bias):
            continue
        key = name
        if is_bias and module_name in lora_names and not in_saved:
            key = f"{module_name}.base_layer.bias"  # PEFT keeps the wrapped layer under `base_layer`
        tensors[PREFIX + key] = param.detach().to("cpu").contiguous()
    return tensors


def peft_target_modules(model: nn.Module, spec: LoraSpec) -> list[str] | str:
    """`target_modules` for adapter_config.json, selecting in PEFT exactly the layers we adapted.

    A name list is written as given; a regex as the string PEFT full-matches; a keyword (`all-linear`,
    `default`, `attention`, `mlp`) is resolved to the adapted layers' leaf names when those select
    exactly the same set, else to a regex listing the qualified names.
    """
    if spec.targets_regex is not None:
        return spec.targets_regex
    if not (len(spec.targets) == 1 and spec.targets[0] in KEYWORDS):
        return list(spec.targets)
    adapted = [name for name, _ in lora_layers(model)]
    leaves = sorted({n.split(".")[-1] for n in adapted})
    heads = output_head_names(model)
    would_match = [
        name
        for name, m in model.named_modules()
        if isinstance(m, LoRALinear | nn.Linear) and name not in heads and name.split(".")[-1] in leaves
    ]
    if sorted(would_match) == sorted(adapted):
        return leaves
    return "(?:" + "|".join(re.escape(n) for n in adapted) + ")"


@contextlib.contextmanager
def safetensors_os_errors() -> Iterator[None]:
    """Re-raise a failed safetensors write as the OSError it is, so the atomic writer around it reports
    it as one `cannot write <dir>: No space left on device` line.

    safetensors (0.8) reports I/O failures as SafetensorError("... I/O error: ... (os error 28)").
    """
    try:
        yield
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code)) from e


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    spec: LoraSpec,
    *,
    base_model_name_or_path: str,
    task_type: str | None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write adapter_config.json + adapter_model.safetensors atomically into `directory`.

    `task_type` is PEFT's ("CAUSAL_LM", "SEQ_CLS"); `metadata` string pairs go into the safetensors
    header (lorafit puts the base identity and recipe hash there).
    """
    directory = Path(directory)
    tensors = adapter_tensors(model, spec)
    converted = uses_base_weight(spec.init)
    if converted:
        tensors = converted_tensors(model, tensors)
        spec = converted_spec(spec)
        metadata = {**(metadata or {}), "lorafit_converted_from": spec_init_note(model)}
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": peft_target_modules(model, spec),
        "bias": spec.bias,
        "use_rslora": spec.rslora,
        "init_lora_weights": True if spec.init == "kaiming" else spec.init,
        "modules_to_save": list(spec.modules_to_save) or None,
        "fan_in_fan_out": any(layer.transposed for _, layer in lora_layers(model)),
        "inference_mode": True,
        "revision": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": dict(spec.rank_pattern),
        "alpha_pattern": dict(spec.alpha_pattern),
        "use_dora": spec.variant == "dora",
    }
    header = {"format": "pt", **(metadata or {})}
    with atomic_directory(directory) as tmp, safetensors_os_errors():
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=header)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def spec_init_note(model: nn.Module) -> str:
    """The init the saved adapter was converted from (the header's `lorafit_converted_from`)."""
    inits = sorted({layer.init for _, layer in lora_layers(model) if layer.initial_factors is not None})
    return ",".join(inits)


def converted_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PiSSA / OLoRA factors made to apply to the original base: for each layer with initial factors
    (A0 (r, d_in), B0 (d_out, r)), A' = [A; A0] (2r, d_in) and B' = [B | -B0] (d_out, 2r), so that
    B' A' = B A - B0 A0 = (W_res + s B A - W) / s (PEFT's `subtract_mutated_init`)."""
    out = dict(tensors)
    for name, layer in lora_layers(model):
        if layer.initial_factors is None:
            continue
        a0, b0 = layer.initial_factors
        key_a, key_b = f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight"
        out[key_a] = torch.cat([tensors[key_a], a0.to(tensors[key_a].dtype)], dim=0).contiguous()
        out[key_b] = torch.cat([tensors[key_b], -b0.to(tensors[key_b].dtype)], dim=1).contiguous()
    return out


def converted_spec(spec: LoraSpec) -> LoraSpec:
    """The spec of a converted adapter: every rank doubled, alpha doubled (rsLoRA: x sqrt 2) so each
    layer keeps its scale, and an init that no longer touches the base (as PEFT writes it)."""
    if spec.variant == "dora":
        # DoRA's magnitude was fitted to the residual base; [A; A0], [B | -B0] cannot carry it over.
        raise AdapterError("lora.init pissa/olora with variant dora cannot be converted on save")
    if spec.rslora and (spec.rank_pattern or spec.alpha_pattern):
        # alpha / sqrt(r) cannot keep its value by doubling alpha_pattern entries (PEFT refuses it too).
        raise AdapterError("lora.init pissa/olora with rslora and rank_pattern/alpha_pattern cannot be converted on save")
    return replace(
        spec,
        rank=2 * spec.rank,
        alpha=spec.alpha * (2**0.5 if spec.rslora else 2),
        rank_pattern={k: 2 * v for k, v in spec.rank_pattern.items()},
        alpha_pattern={k: 2 * v for k, v in spec.alpha_pattern.items()},
        init="kaiming",
    )


def read_adapter_config(directory: str | Path) -> dict:
    """adapter_config.json as a dict; AdapterError naming the file when missing or unreadable."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise AdapterError(f"{directory}: not an adapter directory (no such directory)")
    if not path.is_file():
        raise AdapterError(f"{path}: missing; an adapter directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type must be 'LORA', got {config.get('peft_type')!r}")
    return config


def spec_from_config(config: dict, source: str = CONFIG_NAME) -> LoraSpec:
    """Translate PEFT's LoraConfig fields into a LoraSpec; refuse PEFT features we do not implement."""
    for key, defaults in _UNSUPPORTED.items():
        if key in config and config[key] not in defaults:
            raise AdapterError(f"{source}: {key}={config[key]!r} is a PEFT feature lorafit does not support")
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"{source}: needs numeric 'r' and 'lora_alpha' ({e})") from None
    targets = config.get("target_modules")
    regex = None
    if isinstance(targets, str):
        targets, regex = ((ALL_LINEAR,), None) if targets == ALL_LINEAR else ((), targets)
    elif isinstance(targets, list | tuple) and targets:
        targets = tuple(str(t) for t in targets)
    else:
        raise AdapterError(f"{source}: target_modules must be a non-empty list or a regex string")
    init = config.get("init_lora_weights", True)
    init = "kaiming" if init is True or init is None else str(init)
    if init_problem(init):
        raise AdapterError(f"{source}: init_lora_weights={config.get('init_lora_weights')!r} is a PEFT init lorafit does not support")
    rank_pattern = _pattern(config, "rank_pattern", int, source)
    alpha_pattern = _pattern(config, "alpha_pattern", float, source)
    return LoraSpec(
        rank=rank,
        alpha=alpha,
        dropout=float(config.get("lora_dropout") or 0.0),
        targets=targets or ("",),
        targets_regex=regex,
        rslora=bool(config.get("use_rslora", False)),
        init=init,
        bias=config.get("bias") or "none",
        modules_to_save=tuple(config.get("modules_to_save") or ()),
        variant="dora" if config.get("use_dora") else "lora",
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )


def _pattern(config: dict, key: str, kind: type, source: str) -> dict:
    """rank_pattern / alpha_pattern: a mapping of regex -> positive number (None or {} when unused)."""
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise AdapterError(f"{source}: {key} must be a mapping of module patterns to numbers, got {value!r}")
    try:
        out = {str(k): kind(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise AdapterError(f"{source}: {key} values must be numbers, got {value!r}") from None
    bad = [k for k, v in out.items() if v <= 0]
    if bad:
        raise AdapterError(f"{source}: {key}[{bad[0]!r}] must be > 0, got {value[bad[0]]!r}")
    return out


def read_adapter_tensors(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The adapter's tensors and header metadata; AdapterError for a missing or corrupted file."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{path}: missing; an adapter directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterError(f"{path}: corrupted or truncated safetensors file ({e})") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AdapterError(f"{path}: tensor {key} holds non-finite values")
    return tensors, metadata


def load_adapter_tensors(model: nn.Module, spec: LoraSpec, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy adapter tensors into a model that `add_lora(model, spec)` prepared.

    Every expected key must be present with the right shape and no unknown key may be left over;
    otherwise AdapterError (the adapter belongs to another base model or another spec), and the model
    is left unchanged.
    """
    expected = adapter_tensors(model, spec)
    given = tensors
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise AdapterError(
            f"{source}: adapter does not fit this base model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors; {detail})"
        )
    for key, target in expected.items():
        if given[key].shape != target.shape:
            raise AdapterError(
                f"{source}: {key} has shape {tuple(given[key].shape)}, this base model needs "
                f"{tuple(target.shape)}; the adapter was trained on another base model"
            )
    params = dict(model.named_parameters(remove_duplicate=False))
    lora_names = {name for name, _ in lora_layers(model)}
    with torch.no_grad():
        for key, value in given.items():
            name = key[len(PREFIX) :]
            module_name, _, leaf = name.rpartition(".")
            if leaf == "bias" and module_name.endswith(".base_layer") and module_name[: -len(".base_layer")] in lora_names:
                name = module_name[: -len(".base_layer")] + ".bias"
            params[name].copy_(value.to(params[name].dtype))
