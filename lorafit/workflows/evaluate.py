"""`lorafit eval`: load a target (or read an outputs file), predict, score, print a table, write JSON.

    TARGET -> its recipe (a run) -> task, split, items -> load_target (models/loader.py)
           -> eval.predict.evaluate -> table + JSON
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from lorafit import __version__
from lorafit.console import Reporter, print_metrics
from lorafit.errors import DataError
from lorafit.eval.generate import DECODING_KEYS, decoding_settings
from lorafit.eval.predict import eval_items, evaluate, read_predictions, score
from lorafit.models import looks_like_path
from lorafit.models.device import compute_device
from lorafit.models.loader import load_target
from lorafit.recipe import Recipe, load_recipe
from lorafit.recipe.schema import DataConfig, EvalConfig
from lorafit.runs.atomic import write_text_atomic
from lorafit.runs.rundir import RECIPE_FILE, is_run_dir
from lorafit.tasks import get_task, task_data_dir


@dataclass(frozen=True)
class EvalRequest:
    """Everything `lorafit eval` was asked; None means "from the run's recipe, else the default"."""

    target: str | None = None
    task: str | None = None
    split: str | None = None
    limit: int | None = None
    output: Path | None = None
    predictions: Path | None = None
    data_dir: str | None = None
    beam_size: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    chat_template: bool | None = None


def requested_settings(recipe: Recipe | None, request: EvalRequest) -> EvalConfig:
    """Flags override the recipe's eval section, which overrides the defaults."""
    base = recipe.eval if recipe is not None else EvalConfig()
    flags = {key: getattr(request, key) for key in DECODING_KEYS}  # the flags share the recipe keys' names
    return replace(base, **{key: value for key, value in flags.items() if value is not None})


def recipe_of_target(target: str | None) -> Recipe | None:
    """The resolved recipe of a run directory target, else None."""
    if target and is_run_dir(Path(target)):
        return load_recipe(Path(target) / RECIPE_FILE)
    return None


def missing_task_message(target: str | None) -> str:
    """Why --task is needed, naming TARGET when it is a path that is missing or not a run directory."""
    if target is not None:
        path = Path(target).expanduser()
        if not path.exists() and looks_like_path(target):
            return f"{target}: no such run directory"
        if path.is_dir():
            return f"{target}: not a run directory (no {RECIPE_FILE}); give --task to evaluate it as an adapter or model"
    return "--task is required unless TARGET is a run directory"


def run_eval(request: EvalRequest, reporter: Reporter) -> dict:
    """Evaluate request.target (or score request.predictions); prints a table, writes JSON if asked."""
    if request.target is None and request.predictions is None:
        raise DataError("give a TARGET to evaluate or --predictions FILE to score")
    recipe = recipe_of_target(request.target)
    task_name = request.task or (recipe.task if recipe else None)
    if task_name is None:
        raise DataError(missing_task_message(request.target))
    options = recipe.data if recipe is not None else DataConfig()
    task = get_task(task_name, options)
    split = request.split or (recipe.eval.split if recipe else "dev")
    data_dir = task_data_dir(task, request.data_dir or (recipe.data_dir if recipe else None))
    items = eval_items(task, data_dir, split, options, request.limit)
    settings = requested_settings(recipe, request)

    result: dict = {"task": task.name, "split": split, "num_examples": len(items), "lorafit_version": __version__}
    if request.predictions is not None:
        predictions = read_predictions(request.predictions, task, len(items))
        result.update(source=str(request.predictions), kind="predictions", **score(task, predictions, items))
    else:
        loaded = load_target(request.target, task)
        loaded.model.to(compute_device())  # $LORAFIT_DEVICE, else a GPU when there is one
        label = "generate" if task.kind == "generation" else "classify"
        with reporter.progress(label, len(items)) as progress:
            evaluated = evaluate(loaded.model, loaded.tokenizer, task, items, settings, options.max_length,
                                 on_batch=progress.advance)
        predictions = evaluated["predictions"]
        result.update(source=request.target, kind=loaded.kind, base=loaded.base.path_or_id, metrics=evaluated["metrics"],
                      settings=decoding_settings(settings) if task.kind == "generation" else {"batch_size": settings.batch_size},
                      seconds=evaluated["seconds"])
    result["predictions"] = predictions
    print_metrics(reporter, result)
    if request.output is not None:
        request.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(request.output, json.dumps(result, indent=2, default=str) + "\n")
        reporter.info(f"wrote {request.output}")
    return result
