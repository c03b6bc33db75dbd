"""`lorafit merge`: adapter + base -> a plain Hugging Face model directory with W + scale * B A baked in.

The merged directory is checked before it is published (PEFT#2502, #1388: merges that load fine and
compute something else). Before merging, the unmerged adapter model's logits on a few probe inputs are
kept; after merging and saving into the atomic temporary directory, the saved model is loaded back
from there with transformers alone and run on the same probes. Only if the two agree (`tolerance`)
does the directory replace `output`; otherwise a MergeError names the adapter and the difference, the
temporary directory is discarded and an existing output stays as it was. `lorafit_merge.json` in the
output records what was merged and what the check found.
"""

from __future__ import annotations

import gc
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorafit import __version__
from lorafit.errors import DataError, LorafitError, MergeError, RunDirError
from lorafit.lora import merge_lora, read_adapter_config, safetensors_os_errors, unload_lora
from lorafit.models.loader import load_target, target_kind
from lorafit.models.quiet import quiet_transformers
from lorafit.runs.atomic import atomic_directory
from lorafit.runs.rundir import ADAPTER_DIR, RECIPE_FILE, is_run_dir

SIDE_FILE = "lorafit_merge.json"
PROBES = 4  # probe inputs: enough to pass through every layer with varied tokens, a second or so
PROBE_MAX_TOKENS = 64
FIXED_PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "name[The Eagle], eatType[coffee shop], food[French], area[riverside]",
    "Merging an adapter must not change what the model computes: 3 + 4 = 7.",
)
# Relative tolerance by the merged weights' dtype (see `tolerance`).
RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class Probes:
    """Tokenized probe inputs (one dict of (1, T) tensors each) and where their texts came from."""

    source: str
    texts: list
    inputs: list


def merge_adapter(adapter: str, output: Path, *, overwrite: bool, verify: bool = True) -> dict:
    """Merge `adapter` (an adapter or run directory) into its base and save to `output` atomically.

    Nothing is written unless the adapter loads, fits its base, merges to finite weights and (with
    `verify`) the saved merged model, reloaded, gives the unmerged adapter's logits within
    `tolerance`. An existing `output` is replaced only with --overwrite.
    """
    if target_kind(adapter) == "model":
        raise RunDirError(f"{adapter}: not an adapter or run directory (no adapter_config.json / recipe.yaml)")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise RunDirError(f"{output}: already exists; pass --overwrite to replace it")
    loaded = load_target(adapter)
    if loaded.spec is None:
        raise RunDirError(f"{adapter}: holds a fully fine-tuned model, which has nothing to merge")
    auto_class = "AutoModelForSequenceClassification" if is_classifier(adapter) else "AutoModelForCausalLM"
    probes = probe_inputs(adapter, loaded.tokenizer) if verify else None
    expected = probe_logits(loaded.model, probes) if verify else None  # the unmerged adapter's
    layers = merge_lora(loaded.model, keep_original=False)
    model = unload_lora(loaded.model)
    dtype = next(model.parameters()).dtype
    record = {"adapter": adapter, "base": loaded.base.path_or_id, "layers": layers, "verified": False,
              "max_abs_diff": None, "tolerance": None, "probes": None, "dtype": str(dtype).removeprefix("torch."),
              "lorafit_version": __version__}
    with atomic_directory(output) as tmp, safetensors_os_errors():
        with quiet_transformers():  # no "Writing model shards" bar on stderr
            model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
        if verify:
            attention = getattr(model.config, "_attn_implementation", None)
            device = next(model.parameters()).device
            loaded.model = model = None  # the reload below needs the memory; the logits are kept
            gc.collect()
            got = probe_logits(reload_saved(tmp, auto_class, dtype, attention, device), probes)
            diff = max_abs_diff(expected, got)
            tol = tolerance(expected, dtype)
            record.update(verified=True, max_abs_diff=diff, tolerance=tol,
                          probes={"source": probes.source, "count": len(probes.texts), "texts": probes.texts})
            if not diff <= tol:  # NaN fails too
                raise MergeError(
                    f"{adapter}: the merged model's logits differ from the adapter's by {diff:.3g} "
                    f"(tolerance {tol:.3g}, {record['dtype']}, {len(probes.texts)} probes from {probes.source}); "
                    f"nothing written to {output}"
                )
        (tmp / SIDE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {
        "adapter": adapter,
        "output": str(output),
        "layers": layers,
        "base": loaded.base.path_or_id,
        "files": sorted(p.name for p in output.iterdir()),
        "config": json.loads((output / "config.json").read_text()).get("architectures"),
        "verification": {k: record[k] for k in ("verified", "max_abs_diff", "tolerance", "dtype")}
        | {"probes": record["probes"]["count"] if record["probes"] else 0},
    }


def is_classifier(adapter: str) -> bool:
    """Whether the adapter's PEFT task type is sequence classification (else a causal LM)."""
    directory = Path(adapter) / ADAPTER_DIR if is_run_dir(Path(adapter)) else Path(adapter)
    return read_adapter_config(directory).get("task_type") == "SEQ_CLS"


def tolerance(expected: list[torch.Tensor], dtype: torch.dtype) -> float:
    """The largest |merged - unmerged| logit difference accepted: rel(dtype) * max(1, max |logit|).

    rel is 1e-4 for fp32 (the merged W + scale * B A is rounded once where the unmerged model adds
    W x and scale * B (A x): ~1e-6 relative per layer, well inside), 5e-3 for fp16 and 3e-2 for bf16
    (their rounding of W + delta is ~5e-4 and ~4e-3 per weight, compounded through the layers). Scaled by
    the largest logit, floored at 1, so near-zero logits are not held to an impossible absolute bound.
    A wrong merge (a missing or doubled delta, a transposed Conv1D update, a lost head) moves logits
    by the adapter's whole effect, far beyond it.
    """
    rel = RELATIVE_TOLERANCE.get(dtype, RELATIVE_TOLERANCE[torch.bfloat16])
    largest = max(float(e.abs().max()) for e in expected)
    return rel * max(1.0, largest)


def max_abs_diff(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    return max(float((e - g).abs().max()) for e, g in zip(expected, got, strict=True))


def probe_inputs(adapter: str, tokenizer) -> Probes:
    """A few inputs from the run's task (its eval split) when `adapter` is a run directory whose task
    data can be read here, else fixed text; tokenized one by one (no padding to get in the way)."""
    source, texts = "fixed text", [(t, None) for t in FIXED_PROBES]
    if is_run_dir(Path(adapter)):
        try:
            source, texts = task_probe_texts(Path(adapter))
        except (LorafitError, OSError):  # the task's data is not on this machine: fixed text still checks
            pass
    inputs = []
    for text, pair in texts:
        encoded = tokenizer(text, pair, truncation=True, max_length=PROBE_MAX_TOKENS, return_tensors="pt")
        inputs.append(dict(encoded))
    return Probes(source, [t if p is None else [t, p] for t, p in texts], inputs)


def task_probe_texts(run: Path) -> tuple[str, list[tuple[str, str | None]]]:
    """(source, [(text, text_pair or None)]) from the first PROBES eval inputs of the run's task:
    a generation prompt with its first reference, or a classification sentence (pair)."""
    from lorafit.recipe import load_recipe
    from lorafit.tasks import get_task, task_data_dir

    recipe = load_recipe(run / RECIPE_FILE)
    task = get_task(recipe.task, recipe.data)
    split = recipe.eval.split if recipe.eval.split in task.splits else task.splits[-1]
    items = task.load_eval(task_data_dir(task, recipe.data_dir), split, recipe.data)[:PROBES]
    if task.kind == "generation":
        texts = [(item.prompt + (item.references[0] if item.references else ""), None) for item in items]
    else:
        texts = [(item.text, item.text_pair) for item in items]
    if not texts:
        raise DataError(f"task {task.name} {split}: no inputs")  # caught: fixed text instead
    return f"task {task.name} {split}", texts


@torch.no_grad()
def probe_logits(model: nn.Module, probes: Probes) -> list[torch.Tensor]:
    """The model's fp32 logits on each probe, on the CPU (only the inputs its forward takes: a causal
    LM gets no token_type_ids)."""
    device = next(model.parameters()).device
    accepted = inspect.signature(model.forward).parameters
    was_training = model.training
    model.eval()
    try:
        return [model(**{k: v.to(device) for k, v in x.items() if k in accepted}).logits.float().cpu()
                for x in probes.inputs]
    finally:
        model.train(was_training)


def reload_saved(directory: Path, auto_class: str, dtype: torch.dtype, attention: str | None, device) -> nn.Module:
    """The saved merged model as anyone would load it: transformers' Auto class, no lorafit code."""
    import transformers

    options = {"dtype": dtype} | ({"attn_implementation": attention} if attention else {})
    with quiet_transformers():
        model = getattr(transformers, auto_class).from_pretrained(directory, **options)
    return model.to(device).eval()
