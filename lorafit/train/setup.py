"""The steps `lorafit train` runs, each a small function, so the CLI body reads as the data flow:

    recipe -> task -> base model + tokenizer -> add LoRA -> encoded data -> fit -> adapter -> eval
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from torch import nn

from lorafit import __version__
from lorafit.data.batches import (
    Encoded,
    EncodeStats,
    encode_classification,
    encode_generation,
    resolve_batching,
    subsample,
)
from lorafit.errors import DataError, TargetError
from lorafit.eval.generate import GenerationSettings
from lorafit.fast.dropout import use_fast_dropout
from lorafit.lora import (
    InjectionReport,
    LoraSpec,
    add_lora,
    count_parameters,
    mark_all_trainable,
    safetensors_os_errors,
    save_adapter,
)
from lorafit.lora.inject import find_saved_modules
from lorafit.models import HEAD_MODULES, ModelRef, load_base, model_identity, resolve_model
from lorafit.recipe.parse import Recipe, recipe_hash
from lorafit.runs.atomic import atomic_directory
from lorafit.tasks import get_task, task_data_dir
from lorafit.tasks.types import DataOptions, Task
from lorafit.train.loop import LoopSettings, seed_everything
from lorafit.train.loss import causal_lm_loss, classification_loss


@dataclass
class Prepared:
    """A base model ready to train: LoRA injected (or fully trainable), with what it was built from."""

    model: nn.Module
    tokenizer: object
    ref: ModelRef
    spec: LoraSpec | None  # None for full fine-tuning
    report: InjectionReport


def from_section(cls: type, section: object, **values: object):
    """An instance of the dataclass `cls`: each field from `values` if given, else from `section`'s
    attribute of the same name.

    The recipe's sections and the settings the library takes share their field names (one name per
    concept), so a field found in neither is a bug and raises AttributeError.
    """
    return cls(**{f.name: values[f.name] if f.name in values else getattr(section, f.name) for f in fields(cls)})


def data_options(recipe: Recipe) -> DataOptions:
    """The recipe's `data:` file and field settings, as the task loaders take them."""
    return from_section(DataOptions, recipe.data)


def generation_settings(recipe: Recipe) -> GenerationSettings:
    """The recipe's `eval:` decoding settings (batch size, beams, lengths, chat template)."""
    return from_section(GenerationSettings, recipe.eval)


def load_task(recipe: Recipe) -> Task:
    """The recipe's task, built with its `data:` settings."""
    return get_task(recipe.task, data_options(recipe))


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The freshly initialised sequence-classification head modules the model has (HEAD_MODULES:
    BERT/RoBERTa `classifier`, Llama/GPT-2 `score`, DistilBERT `pre_classifier` + `classifier`)."""
    children = dict(model.named_children())
    return tuple(name for name in HEAD_MODULES if name in children)


def lora_spec(recipe: Recipe, model: nn.Module) -> LoraSpec:
    """The recipe's lora section as a LoraSpec; a classifier's new head is always trained in full."""
    lora = recipe.lora
    saved = tuple(lora.modules_to_save)
    saved += tuple(head for head in head_names(model) if head not in saved)
    return from_section(LoraSpec, lora, alpha=float(lora.alpha), targets=tuple(lora.targets), modules_to_save=saved)


def inject_lora(model: nn.Module, spec: LoraSpec) -> InjectionReport:
    """`add_lora`, with a target that matches nothing reported under the recipe key to fix."""
    try:
        return add_lora(model, spec)
    except TargetError as e:  # the LoRA core knows patterns, not recipe keys
        key = "lora.targets_regex" if spec.targets_regex is not None else "lora.targets"
        raise TargetError(f"{key}: {e}") from None


def prepare_model(recipe: Recipe, task: Task) -> Prepared:
    """Seed, load the base, then make the right parameters trainable for `train.method`:

    lora: inject LoRA (and train the head / modules_to_save in full); full: every weight;
    head: only the classification head and modules_to_save (the "linear probe" baseline).
    """
    seed_everything(recipe.seed)  # LoRA's A and a new head are random: seeded for reproducible runs
    ref = resolve_model(recipe.model)
    model, tokenizer = load_base(ref, task.num_labels)
    use_fast_dropout(model)  # the model's own dropout, same probability, a cheaper mask (lora/dropout.py)
    method = recipe.train.method
    if method == "lora":
        spec = lora_spec(recipe, model)
        return Prepared(model, tokenizer, ref, spec, inject_lora(model, spec))
    saved = find_saved_modules(model, lora_spec(recipe, model).modules_to_save)
    if method == "full":
        trainable = mark_all_trainable(model)
    else:
        if not saved:
            raise TargetError(f"train.method: head trains only the classification head / modules_to_save; {recipe.model} has none")
        for param in model.parameters():
            param.requires_grad_(False)
        for name in saved:
            for param in model.get_submodule(name).parameters():
                param.requires_grad_(True)
        trainable = count_parameters(model, trainable_only=True)
    report = InjectionReport([], saved, trainable, count_parameters(model))
    return Prepared(model, tokenizer, ref, None, report)


def encode(task: Task, examples: list, tokenizer, max_length: int) -> tuple[list[Encoded], EncodeStats]:
    """Token ids and loss masks for `examples`, the way the task's kind needs them."""
    if task.kind == "generation":
        return encode_generation(examples, tokenizer, max_length)
    return encode_classification(examples, tokenizer, max_length)


def prepare_data(recipe: Recipe, task: Task, tokenizer) -> tuple[list[Encoded], list[Encoded], dict]:
    """Encoded training and validation examples, and counts for the log."""
    if resolve_batching(recipe.train.batching, task.kind) == "pack" and task.kind != "generation":
        raise DataError(f"train.batching: 'pack' joins causal-LM examples; task {task.name} is {task.kind}, use 'bucket' or 'pad'")
    data_dir = task_data_dir(task, recipe.data_dir)
    options = data_options(recipe)
    train_split, valid_split = "train", recipe.eval.split
    train_examples = subsample(task.load_train(data_dir, train_split, options), recipe.data.max_train_examples, recipe.seed)
    valid_examples = task.load_train(data_dir, valid_split, options) if valid_split in task.splits else []
    valid_examples = subsample(valid_examples, recipe.data.max_valid_examples, recipe.seed)
    train, train_stats = encode(task, train_examples, tokenizer, recipe.data.max_length)
    valid, valid_stats = encode(task, valid_examples, tokenizer, recipe.data.max_length)
    counts = {
        "train_examples": train_stats.examples,
        "train_truncated": train_stats.truncated,
        "train_skipped": train_stats.skipped,
        "valid_examples": valid_stats.examples,
        "valid_truncated": valid_stats.truncated,
        "valid_skipped": valid_stats.skipped,
    }
    return train, valid, counts


def loss_function(task: Task):
    """The training loss for the task's kind: next-token loss on completions, or the classification loss."""
    return causal_lm_loss if task.kind == "generation" else classification_loss


def loop_settings(recipe: Recipe, task: Task) -> LoopSettings:
    """The recipe's `train:` section, seed and precision, as the training loop takes them
    (`train.batching: auto` resolved for the task)."""
    return from_section(LoopSettings, recipe.train, seed=recipe.seed, precision=recipe.precision,
                        task_eval_every=recipe.eval.every, batching=resolve_batching(recipe.train.batching, task.kind))


def adapter_metadata(prepared: Prepared, recipe: Recipe, task: Task) -> dict[str, str]:
    """lorafit's own facts about an adapter, stored in the safetensors header (strings only)."""
    return {
        "lorafit_version": __version__,
        "lorafit_base_name": prepared.ref.name,
        "lorafit_base_alias": prepared.ref.alias or "",
        "lorafit_base_identity": json.dumps(model_identity(prepared.model), sort_keys=True),
        "lorafit_recipe_hash": recipe_hash(recipe),
        "lorafit_task": task.name,
        "lorafit_num_labels": str(task.num_labels),
    }


def save_trained(prepared: Prepared, recipe: Recipe, task: Task, directory: Path) -> Path:
    """Save the adapter (PEFT format), or, without LoRA (method full / head), the whole model, atomically."""
    if prepared.spec is None:
        with atomic_directory(directory) as tmp, safetensors_os_errors():
            prepared.model.save_pretrained(tmp)
            prepared.tokenizer.save_pretrained(tmp)
        return directory
    return save_adapter(
        prepared.model,
        directory,
        prepared.spec,
        base_model_name_or_path=prepared.ref.path_or_id,
        task_type="CAUSAL_LM" if task.kind == "generation" else "SEQ_CLS",
        metadata=adapter_metadata(prepared, recipe, task),
    )


def parameter_summary(report: InjectionReport) -> dict:
    """Counts for logs and summaries."""
    return {
        "trainable_params": report.trainable_params,
        "total_params": report.total_params,
        "trainable_percent": round(report.trainable_percent, 4),
        "adapted_layers": len(report.adapted),
    }
