"""Loading what `eval` and `merge` are pointed at: a run, an adapter, a merged model, or a base model.

An adapter is applied to the base it names: lorafit's metadata records the alias (found on any
machine) and the base identity (checked before anything is produced); a PEFT-saved adapter without
that metadata is checked by tensor shapes alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lorafit.errors import AdapterError
from lorafit.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoraSpec,
    add_lora,
    load_adapter_tensors,
    read_adapter_config,
    read_adapter_tensors,
    spec_from_config,
)
from lorafit.models import ModelRef, load_base, model_identity, resolve_model
from lorafit.runs.rundir import ADAPTER_DIR, is_run_dir
from lorafit.tasks.types import Task


@dataclass
class Loaded:
    """A model ready for inference and where it came from."""

    model: nn.Module
    tokenizer: object
    kind: str  # "run", "adapter", "model"
    source: str
    base: ModelRef
    spec: LoraSpec | None = None
    metadata: dict | None = None


def target_kind(target: str) -> str:
    """What a TARGET argument is: "run" (run directory), "adapter", or "model" (dir, HF id or alias)."""
    path = Path(target)
    if path.is_dir() and is_run_dir(path):
        return "run"
    if path.is_dir() and any((path / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME)):
        return "adapter"  # with one of its two files missing, loading it says which one
    return "model"


def adapter_base_ref(config: dict, metadata: dict, source: str) -> ModelRef:
    """The base model an adapter was trained on: its alias if recorded, else base_model_name_or_path."""
    alias = metadata.get("lorafit_base_alias") or ""
    name = alias or config.get("base_model_name_or_path")
    if not name:
        raise AdapterError(f"{source}: adapter_config.json names no base_model_name_or_path")
    return resolve_model(name)


def check_base_identity(model: nn.Module, metadata: dict, source: str) -> None:
    """Refuse a base whose identity differs from the one recorded when the adapter was trained."""
    recorded = metadata.get("lorafit_base_identity")
    if not recorded:
        return  # a PEFT-saved adapter: tensor shapes are checked when loading
    expected = json.loads(recorded)
    actual = model_identity(model)
    # Sizes first (they say what differs); the fingerprint catches the rest (same sizes, other layout).
    keys = sorted(set(expected) | set(actual), key=lambda k: (k == "fingerprint", k))
    diffs = [k for k in keys if expected.get(k) != actual.get(k)]
    if diffs:
        key = diffs[0]
        raise AdapterError(
            f"{source}: adapter was trained on another base model ({key}: adapter has "
            f"{expected.get(key)!r}, base has {actual.get(key)!r})"
        )


def num_labels_of(tensors: dict, metadata: dict) -> int:
    """Classifier output size: from lorafit's metadata, else from the saved head's last weight."""
    if metadata.get("lorafit_num_labels"):
        return int(metadata["lorafit_num_labels"])
    heads = [v for k, v in tensors.items() if k.endswith(("classifier.weight", "out_proj.weight", "score.weight"))]
    if not heads:
        raise AdapterError("sequence-classification adapter without a saved head (modules_to_save)")
    return heads[-1].shape[0]


def load_adapter(directory: str | Path, base_override: str | None = None) -> Loaded:
    """Base model + adapter applied (unmerged), after checking the adapter fits the base."""
    directory = Path(directory)
    source = str(directory)
    config = read_adapter_config(directory)
    tensors, metadata = read_adapter_tensors(directory)
    spec = spec_from_config(config, source=str(directory / "adapter_config.json"))
    ref = resolve_model(base_override) if base_override else adapter_base_ref(config, metadata, source)
    num_labels = num_labels_of(tensors, metadata) if config.get("task_type") == "SEQ_CLS" else 0
    model, tokenizer = load_base(ref, num_labels)
    check_base_identity(model, metadata, source)
    add_lora(model, spec)
    load_adapter_tensors(model, spec, tensors, source)
    model.eval()
    return Loaded(model, tokenizer, "adapter", source, ref, spec, metadata)


def load_target(target: str, task: Task | None = None) -> Loaded:
    """Load TARGET for inference: a run directory's adapter, an adapter, or a model (zero-shot)."""
    kind = target_kind(target)
    if kind == "run":
        # A LoRA run holds an adapter; a full fine-tuning run holds a whole model in the same place.
        loaded = load_target(str(Path(target) / ADAPTER_DIR), task)
        loaded.kind, loaded.source = "run", target
        return loaded
    if kind == "adapter":
        return load_adapter(target)
    ref = resolve_model(target)
    model, tokenizer = load_base(ref, task.num_labels if task is not None else 0)
    model.eval()
    return Loaded(model, tokenizer, "model", target, ref)
