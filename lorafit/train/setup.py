"""The steps `lorafit train` runs around the loop, each a small function: the task, the encoded data,
the loss for the task's kind, and saving what was trained (the model itself comes from
models/loader.py, the one loader)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lorafit import __version__
from lorafit.data.batches import (
    Encoded,
    EncodeStats,
    encode_classification,
    encode_generation,
    resolve_batching,
)
from lorafit.errors import DataError
from lorafit.fast.precision import resolve_precision
from lorafit.lora import InjectionReport, safetensors_os_errors, save_adapter
from lorafit.models import model_identity, resolve_model
from lorafit.models.base import config_dict
from lorafit.models.loader import Loaded
from lorafit.recipe import Recipe, recipe_hash
from lorafit.runs.atomic import atomic_directory
from lorafit.tasks import get_task
from lorafit.tasks.types import Task
from lorafit.train.estimate import DecoderShape, MemoryEstimate, adapted, estimate_memory
from lorafit.train.loss import causal_lm_loss, classification_loss


def load_task(recipe: Recipe) -> Task:
    """The recipe's task, built with its `data:` settings."""
    return get_task(recipe.task, recipe.data)


def encode(task: Task, examples: list, tokenizer, max_length: int) -> tuple[list[Encoded], EncodeStats]:
    """Token ids and loss masks for `examples`, the way the task's kind needs them."""
    if task.kind == "generation":
        return encode_generation(examples, tokenizer, max_length)
    return encode_classification(examples, tokenizer, max_length)


def prepare_data(recipe: Recipe, task: Task, tokenizer, *, use_cache: bool = True) -> tuple[Sequence[Encoded], Sequence[Encoded], dict]:
    """Encoded training and validation examples (lazy, Arrow-backed: data/pipeline.py), and counts for the log.

    Tokens are cached on disk (data/cache.py) unless `use_cache` is False (`lorafit train --no-cache`)."""
    from lorafit.data.pipeline import cache_line, prepare

    if resolve_batching(recipe.train.batching, task.kind) == "pack" and task.kind != "generation":
        raise DataError(f"train.batching: 'pack' joins causal-LM examples; task {task.name} is {task.kind}, use 'bucket' or 'pad'")
    prepared = prepare(recipe, task, tokenizer, use_cache=use_cache)
    return prepared.train, prepared.valid, {**prepared.counts, "data_cache": cache_line(prepared)}


def loss_function(task: Task):
    """The training loss for the task's kind: next-token loss on completions, or the classification loss."""
    return causal_lm_loss if task.kind == "generation" else classification_loss


def adapter_metadata(loaded: Loaded, recipe: Recipe, task: Task) -> dict[str, str]:
    """lorafit's own facts about an adapter, stored in the safetensors header (strings only)."""
    return {
        "lorafit_version": __version__,
        "lorafit_base_name": loaded.base.name,
        "lorafit_base_alias": loaded.base.alias or "",
        "lorafit_base_identity": json.dumps(model_identity(loaded.model), sort_keys=True),
        "lorafit_recipe_hash": recipe_hash(recipe),
        "lorafit_task": task.name,
        "lorafit_num_labels": str(task.num_labels),
    }


def save_trained(loaded: Loaded, recipe: Recipe, task: Task, directory: Path) -> Path:
    """Save the adapter (PEFT format), or, without LoRA (method full / head), the whole model, atomically."""
    if loaded.spec is None:
        with atomic_directory(directory) as tmp, safetensors_os_errors():
            loaded.model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
        return directory
    return save_adapter(
        loaded.model,
        directory,
        loaded.spec,
        base_model_name_or_path=loaded.base.path_or_id,
        task_type="CAUSAL_LM" if task.kind == "generation" else "SEQ_CLS",
        metadata=adapter_metadata(loaded, recipe, task),
    )


def parameter_summary(report: InjectionReport) -> dict:
    """Counts for logs and summaries."""
    return {
        "trainable_params": report.trainable_params,
        "total_params": report.total_params,
        "trainable_percent": round(report.trainable_percent, 4),
        "adapted_layers": len(report.adapted),
    }


def memory_estimate(recipe: Recipe) -> MemoryEstimate | None:
    """What the recipe's run will need in memory (train/estimate.py), from the base's config alone;
    None for a model that is not a Llama-style decoder or a run that does not train LoRA."""
    shape = DecoderShape.from_config(config_dict(resolve_model(recipe.model)))
    if shape is None or recipe.train.method != "lora":
        return None
    import torch

    lora = recipe.lora
    return estimate_memory(
        shape, quantize=recipe.quantize, bf16=resolve_precision(recipe.precision, torch.device("cpu")) == "bf16",
        targets=adapted(tuple(lora.targets), lora.targets_regex), rank=lora.rank, dropout=lora.dropout,
        tokens=recipe.train.batch_size * recipe.data.max_length, checkpointing=recipe.train.gradient_checkpointing)
