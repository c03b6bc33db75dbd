"""`lorafit report RUN_DIR [RUN_DIR ...]`: runs side by side, settings and final numbers, and their curves.

Everything is read back from what `lorafit train` left in each run directory, nothing is recomputed:

    recipe.yaml    -> settings: model, task, rank, alpha, targets, lr, steps, batch
    summary.json   -> trainable parameters, seconds (absent while a run is still going or was stopped)
    metrics.jsonl  -> final train / validation loss, tokens/s, the curves
    eval.json      -> task metrics, when the run evaluated at the end
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lorafit.errors import RecipeError, RunDirError
from lorafit.recipe.parse import Recipe, load_recipe
from lorafit.runs.rundir import EVAL_FILE, METRICS_FILE, RECIPE_FILE, SUMMARY_FILE, is_run_dir, read_metrics


@dataclass
class RunRecord:
    """What one run directory says about itself."""

    path: Path
    recipe: Recipe
    summary: dict | None
    evaluation: dict | None
    history: list[dict]


def read_json(path: Path) -> dict | None:
    """A JSON file's object, None when it is absent; a corrupt one is an error naming the file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: cannot read it: {e}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return data


def read_run(path: str | Path) -> RunRecord:
    """A run directory's recipe, summary, evaluation and metrics; RunDirError if it is not a run."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    if not is_run_dir(path):
        raise RunDirError(f"{path}: not a lorafit run directory (no {RECIPE_FILE} in it)")
    try:
        recipe = load_recipe(path / RECIPE_FILE)
    except RecipeError as e:
        raise RunDirError(f"{path}: its {RECIPE_FILE} does not load: {str(e).splitlines()[0]}") from None
    metrics = path / METRICS_FILE
    history = read_metrics(metrics) if metrics.is_file() else []
    return RunRecord(path, recipe, read_json(path / SUMMARY_FILE), read_json(path / EVAL_FILE), history)


def last_value(history: list[dict], key: str):
    """The newest non-null `key` in the metrics records, or None."""
    return next((r[key] for r in reversed(history) if r.get(key) is not None), None)


def settings(run: RunRecord) -> dict:
    """The settings people compare runs by."""
    r, summary = run.recipe, run.summary or {}
    batch = r.train.batch_size if r.train.grad_accum == 1 else f"{r.train.batch_size}x{r.train.grad_accum}"
    return {
        "model": r.model,
        "task": r.task,
        "rank": r.lora.rank if r.train.method == "lora" else f"{r.train.method} fine-tune",
        "alpha": r.lora.alpha,
        "targets": r.lora.targets_regex or ",".join(r.lora.targets),
        "lr": r.train.lr,
        "steps": summary.get("steps", last_value(run.history, "step")),
        "batch": batch,
        "trainable_params": summary.get("trainable_params"),
    }


def final_metrics(run: RunRecord) -> dict:
    """Final losses and throughput from metrics.jsonl, task metrics from eval.json, seconds from summary.json.

    tokens_per_s is the whole training phase's: real input tokens seen / seconds since training
    started, validation passes included, as read from the last training record.
    """
    train_records = [r for r in run.history if r.get("loss") is not None]
    last_train = train_records[-1] if train_records else {}
    tokens, elapsed = last_train.get("tokens_seen"), last_train.get("elapsed_s")
    seconds = (run.summary or {}).get("seconds")
    out = {
        "final_train_loss": last_value(run.history, "loss"),
        "final_valid_loss": last_value(run.history, "valid_loss"),
        "tokens_per_s": round(tokens / elapsed) if tokens and elapsed else None,
        "seconds": round(seconds) if isinstance(seconds, int | float) else None,
    }
    task_metrics = (run.evaluation or {}).get("metrics") or {}
    for name, value in task_metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"eval_{name}"] = value
    return out


def run_labels(runs: list[RunRecord]) -> list[str]:
    """Each run's name, or its directory when two runs share a name."""
    names = [run.recipe.name for run in runs]
    return [name if names.count(name) == 1 else str(run.path) for name, run in zip(names, runs, strict=True)]


def format_value(value) -> str:
    """A setting or metric as one short table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e5:
            return f"{value:g}"  # alpha 16, exact_match 0
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.2e}"  # a learning rate 2.00e-04
        return f"{value:.4f}"  # losses and metrics to four places, so columns line up
    return str(value)


def comparison_table(runs: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): one row per setting or metric, one column per run; a metric only some runs
    have (eval_bleu for generation runs) shows '-' for the others."""
    per_run = [{**settings(run), **final_metrics(run)} for run in runs]
    keys: list[str] = []
    for values in per_run:
        keys.extend(k for k in values if k not in keys)
    rows = [[key, *(format_value(values.get(key)) for values in per_run)] for key in keys]
    return ["", *run_labels(runs)], rows


def report_data(runs: list[RunRecord]) -> list[dict]:
    """The --json form: one object per run."""
    return [
        {"name": label, "run_dir": str(run.path), "settings": settings(run), "final": final_metrics(run)}
        for label, run in zip(run_labels(runs), runs, strict=True)
    ]
