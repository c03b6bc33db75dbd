"""The one loader of base + LoRA: every command gets its model here.

    load_for_training(recipe, num_labels)   the recipe's base, seeded fresh LoRA (or full / head training)
    load_target(target, num_labels)         a run directory, an adapter directory, or a model (a merged
                                            model directory, an HF id or an alias: no LoRA)

Both go through the same steps: resolve the base name -> load the base (+ a new head of num_labels for a
classifier) -> check an adapter's recorded base identity -> add_lora(spec) -> load the adapter's
tensors. An adapter is applied to the base it names: lorafit's metadata records the alias (found on
any machine) and the base identity (checked before anything is produced); a PEFT-saved adapter without
that metadata is checked by tensor shapes alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lorafit.errors import AdapterError, TargetError
from lorafit.fast.precision import resolve_precision
from lorafit.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    InjectionReport,
    LoraSpec,
    add_lora,
    count_parameters,
    load_adapter_tensors,
    mark_all_trainable,
    read_adapter_config,
    read_adapter_tensors,
    spec_from_config,
)
from lorafit.lora.inject import find_saved_modules, output_head_names
from lorafit.models.base import HEAD_MODULES, identity_mismatch, load_base, model_identity
from lorafit.models.quantize import quantize_base
from lorafit.models.resolve import ModelRef, resolve_model
from lorafit.recipe.schema import Recipe
from lorafit.rng import seed_everything
from lorafit.runs.rundir import ADAPTER_DIR, is_run_dir


@dataclass
class Loaded:
    """A model and where it came from."""

    model: nn.Module
    tokenizer: object
    kind: str  # "recipe" (fresh, for training), "run", "adapter", "model"
    source: str
    base: ModelRef
    spec: LoraSpec | None = None  # None: no LoRA (a bare or merged model, full / head training)
    report: InjectionReport | None = None  # what was adapted and trained (training only)
    metadata: dict | None = None  # an adapter's safetensors header (lorafit_* keys)


# ---------------------------------------------------------------------------------------------- shared steps


def load_base_model(ref: ModelRef, num_labels: int, metadata: dict | None = None, source: str = "", *,
                    quantize: str = "none", precision: str = "fp32", keep: tuple[str, ...] = ()) -> tuple:
    """(model, tokenizer) of the base; with an adapter's `metadata`, refuse a base other than the one
    it was trained on. `quantize` "nf4" / "int8": the linear layers stored in 4 / 8 bits
    (models/quantize.py), all but the output head, a classifier's head and the modules in `keep`
    (trained in full); they compute in bf16 where `precision` resolves to bf16, else fp32."""
    if quantize == "none":
        model, tokenizer = load_base(ref, num_labels)
    else:
        # The checkpoint's own dtype (bf16 for most published models): no rounding, half an fp32 read's peak.
        model, tokenizer = load_base(ref, num_labels, dtype="auto")
        compute = torch.bfloat16 if resolve_precision(precision, torch.device("cpu")) == "bf16" else torch.float32
        kept = output_head_names(model) | set(head_names(model)) | set(find_saved_modules(model, keep))
        quantize_base(model, quantize, compute, keep=kept)
    if metadata:
        check_base_identity(model, metadata, source)
    return model, tokenizer


def check_base_identity(model: nn.Module, metadata: dict, source: str) -> None:
    """Refuse a base whose identity differs from the one recorded when the adapter was trained."""
    recorded = metadata.get("lorafit_base_identity")
    if not recorded:
        return  # a PEFT-saved adapter: tensor shapes are checked when loading
    mismatch = identity_mismatch(json.loads(recorded), model_identity(model))
    if mismatch:
        raise AdapterError(f"{source}: adapter was trained on another base model ({mismatch})")


# ---------------------------------------------------------------------------------------------- training


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The freshly initialised sequence-classification head modules the model has (HEAD_MODULES:
    BERT/RoBERTa `classifier`, Llama/GPT-2 `score`, DistilBERT `pre_classifier` + `classifier`,
    DeBERTa `pooler` + `classifier`)."""
    children = dict(model.named_children())
    return tuple(name for name in HEAD_MODULES if name in children)


def lora_spec(recipe: Recipe, model: nn.Module) -> LoraSpec:
    """The recipe's lora section as a LoraSpec; a classifier's new head is always trained in full."""
    lora = recipe.lora
    saved = tuple(lora.modules_to_save) + tuple(h for h in head_names(model) if h not in lora.modules_to_save)
    return LoraSpec(rank=lora.rank, alpha=float(lora.alpha), dropout=lora.dropout, targets=tuple(lora.targets),
                    targets_regex=lora.targets_regex, rslora=lora.rslora, init=lora.init, bias=lora.bias,
                    modules_to_save=saved, variant=lora.variant, rank_pattern=dict(lora.rank_pattern),
                    alpha_pattern=dict(lora.alpha_pattern))


def train_only(model: nn.Module, names: list[str]) -> int:
    """Freeze every weight but those of the modules `names`; returns the trainable count."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        for param in model.get_submodule(name).parameters():
            param.requires_grad_(True)
    return count_parameters(model, trainable_only=True)


def load_for_training(recipe: Recipe, num_labels: int) -> Loaded:
    """Seed, load the base, then make the right parameters trainable for `train.method`:

    lora: inject LoRA (and train the head / modules_to_save in full); full: every weight;
    head: only the classification head and modules_to_save (the "linear probe" baseline).
    """
    seed_everything(recipe.seed)  # LoRA's A and a new head are random: seeded for reproducible runs
    ref = resolve_model(recipe.model)
    if recipe.quantize != "none" and recipe.train.method == "full":
        raise TargetError(f"quantize: {recipe.quantize} freezes the base in {recipe.quantize}; train.method full "
                          "trains every weight (use lora or head, or quantize: none)")
    if recipe.quantize != "none" and (recipe.lora.variant == "dora" or recipe.lora.init.startswith(("pissa", "olora"))):
        key = "lora.variant: dora" if recipe.lora.variant == "dora" else f"lora.init: {recipe.lora.init}"
        raise TargetError(f"quantize: {recipe.quantize} cannot be combined with {key} yet (both need the "
                          "full-precision W); use quantize: none, or plain LoRA on the quantized base")
    if recipe.quantize == "int8" and recipe.train.gradient_checkpointing:
        # bitsandbytes' int8 CPU training path keeps each layer's input on its autograd context, outside
        # the saved tensors checkpointing drops: SmolLM2-135M E2E reached 13.5 GB (docs/quantization.md).
        raise TargetError("quantize: int8 does not work with train.gradient_checkpointing (bitsandbytes keeps "
                          "every int8 layer's input alive); use quantize: nf4, or gradient_checkpointing: false")
    model, tokenizer = load_base_model(ref, num_labels, quantize=recipe.quantize, precision=recipe.precision,
                                       keep=tuple(recipe.lora.modules_to_save))
    loaded = Loaded(model, tokenizer, "recipe", recipe.name, ref)
    spec = lora_spec(recipe, model)
    if recipe.train.method == "lora":
        try:
            report = add_lora(model, spec)
        except TargetError as e:  # the LoRA core knows patterns, not recipe keys
            key = "lora.targets_regex" if spec.targets_regex is not None else "lora.targets"
            raise TargetError(f"{key}: {e}") from None
        return replace(loaded, spec=spec, report=report)
    saved = find_saved_modules(model, spec.modules_to_save)
    if recipe.train.method == "full":
        trainable = mark_all_trainable(model)
    elif not saved:
        raise TargetError(f"train.method: head trains only the classification head / modules_to_save; {recipe.model} has none")
    else:
        trainable = train_only(model, saved)
    return replace(loaded, report=InjectionReport([], saved, trainable, count_parameters(model)))


# ---------------------------------------------------------------------------------------------- inference


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
    name = metadata.get("lorafit_base_alias") or config.get("base_model_name_or_path")
    if not name:
        raise AdapterError(f"{source}: adapter_config.json names no base_model_name_or_path")
    return resolve_model(name)


def num_labels_of(tensors: dict, metadata: dict) -> int:
    """Classifier output size: from lorafit's metadata, else from the saved head's last weight."""
    if metadata.get("lorafit_num_labels"):
        return int(metadata["lorafit_num_labels"])
    heads = [v for k, v in tensors.items() if k.endswith(("classifier.weight", "out_proj.weight", "score.weight"))]
    if not heads:
        raise AdapterError("sequence-classification adapter without a saved head (modules_to_save)")
    return heads[-1].shape[0]


def load_adapter(directory: str | Path, base_override: str | None = None) -> Loaded:
    """Base model + adapter applied (unmerged, eval mode), after checking the adapter fits the base."""
    directory = Path(directory)
    source = str(directory)
    config = read_adapter_config(directory)
    tensors, metadata = read_adapter_tensors(directory)
    spec = spec_from_config(config, source=str(directory / CONFIG_NAME))
    ref = resolve_model(base_override) if base_override else adapter_base_ref(config, metadata, source)
    num_labels = num_labels_of(tensors, metadata) if config.get("task_type") == "SEQ_CLS" else 0
    model, tokenizer = load_base_model(ref, num_labels, metadata, source)
    add_lora(model, spec)
    load_adapter_tensors(model, spec, tensors, source)
    model.eval()
    return Loaded(model, tokenizer, "adapter", source, ref, spec, metadata=metadata)


def load_target(target: str, task=None, *, num_labels: int | None = None) -> Loaded:
    """Load TARGET for inference: a run directory's adapter (or fully fine-tuned model), an adapter,
    or a model (zero-shot; a classifier gets a new head of `num_labels`, else the task's)."""
    kind = target_kind(target)
    if kind == "run":
        # A LoRA run holds an adapter; a full fine-tuning run holds a whole model in the same place.
        loaded = load_target(str(Path(target) / ADAPTER_DIR), task, num_labels=num_labels)
        return replace(loaded, kind="run", source=target)
    if kind == "adapter":
        return load_adapter(target)
    if num_labels is None:
        num_labels = task.num_labels if task is not None else 0
    ref = resolve_model(target)
    model, tokenizer = load_base_model(ref, num_labels)
    model.eval()
    return Loaded(model, tokenizer, "model", target, ref)
