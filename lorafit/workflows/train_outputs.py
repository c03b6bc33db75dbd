"""What a finished training run leaves besides the adapter: eval.json, loss.png, summary.json, and a
few held-out inputs with the base model's output beside the adapted model's."""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import asdict

import psutil
import torch

from lorafit import __version__
from lorafit.console import Reporter
from lorafit.eval.generate import generate
from lorafit.lora import lora_disabled
from lorafit.recipe.parse import Recipe
from lorafit.runs.plots import plot_runs
from lorafit.runs.rundir import EVAL_FILE, SUMMARY_FILE, RunDir
from lorafit.tasks import task_data_dir
from lorafit.tasks.types import Task
from lorafit.train.loop import FitResult
from lorafit.train.setup import Prepared, data_options, generation_settings
from lorafit.workflows.evaluate import eval_items, evaluate_model, print_metrics


def split_items(recipe: Recipe, task: Task, limit: int | None) -> list:
    """The first `limit` (None: all) eval inputs of recipe.eval.split."""
    return eval_items(task, task_data_dir(task, recipe.data_dir), recipe.eval.split, data_options(recipe), limit)


def evaluate_split(recipe: Recipe, task: Task, prepared: Prepared, reporter: Reporter) -> dict:
    """Task metrics on recipe.eval.split (its first eval.limit inputs) for the model as it is now."""
    items = split_items(recipe, task, recipe.eval.limit)
    settings = generation_settings(recipe)
    predictions, metrics, seconds = evaluate_model(
        prepared.model, prepared.tokenizer, task, items, settings, recipe.data.max_length, reporter
    )
    return {"task": task.name, "split": recipe.eval.split, "num_examples": len(items), "metrics": metrics,
            "settings": asdict(settings), "seconds": round(seconds, 2), "predictions": predictions}


def periodic_eval_record(recipe: Recipe, task: Task, prepared: Prepared, reporter: Reporter) -> dict:
    """Numeric task metrics as flat `eval_<name>` keys for metrics.jsonl (eval.every during training)."""
    result = evaluate_split(recipe, task, prepared, reporter)
    return {f"eval_{k}": v for k, v in result["metrics"].items() if isinstance(v, int | float)}


def end_of_run_eval(run: RunDir, recipe: Recipe, task: Task, prepared: Prepared, reporter: Reporter) -> dict:
    """The task's metrics at the end of training, printed and written to eval.json."""
    result = evaluate_split(recipe, task, prepared, reporter)
    print_metrics(reporter, result)
    run.write_json(EVAL_FILE, result)
    return result


def show_examples(recipe: Recipe, task: Task, prepared: Prepared, reporter: Reporter) -> list[dict]:
    """Generate for a few held-out inputs with the adapter off (base) and on, and print both."""
    count = recipe.eval.show_examples
    if count <= 0 or task.kind != "generation" or prepared.spec is None:
        return []
    items = split_items(recipe, task, count)
    prompts = [item.prompt for item in items]
    settings = generation_settings(recipe)
    with lora_disabled(prepared.model):
        base = generate(prepared.model, prepared.tokenizer, prompts, settings)
    adapted = generate(prepared.model, prepared.tokenizer, prompts, settings)
    examples = []
    reporter.info("\nheld-out inputs, base model vs. with the trained adapter:")
    for item, b, a in zip(items, base, adapted, strict=True):
        reporter.info("\ninput:     " + " | ".join(line.strip() for line in item.prompt.strip().splitlines()))
        reporter.info(f"base:      {b}")
        reporter.info(f"lorafit:   {a}")
        reporter.info(f"reference: {item.references[0]}")
        examples.append({"prompt": item.prompt, "base": b, "adapted": a, "reference": item.references[0]})
    return examples


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Versions and CPU facts recorded in summary.json, so timings can be compared across machines."""
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_name(),
        "cores": psutil.cpu_count(logical=True),
        "threads": torch.get_num_threads(),
    }


def finish_run(
    run: RunDir, recipe: Recipe, task: Task, prepared: Prepared, result: FitResult, counts: dict,
    data_counts: dict, reporter: Reporter, started: float,
) -> dict:
    """Evaluate (if asked), plot, show examples, and write summary.json; returns the summary."""
    evaluation = end_of_run_eval(run, recipe, task, prepared, reporter) if recipe.eval.at_end else None
    if recipe.log.plot:
        method = f"LoRA rank {recipe.lora.rank}" if recipe.train.method == "lora" else f"{recipe.train.method} fine-tune"
        plot_runs({recipe.name: result.history}, run.plot, title=f"{recipe.name}: {recipe.model} on {task.name}, {method}")
    examples = show_examples(recipe, task, prepared, reporter)
    first_valid = next((r["valid_loss"] for r in result.history if r.get("valid_loss") is not None), None)
    summary = {
        "name": recipe.name,
        "run_dir": str(run.path),
        "adapter": str(run.adapter),
        "model": recipe.model,
        "task": task.name,
        "steps": result.state.step,
        "examples_seen": result.state.examples_seen,
        "tokens_seen": result.state.tokens_seen,
        "precision": result.precision,  # as run: the recipe's "auto" resolved for this hardware
        "final_train_loss": result.train_loss,
        "initial_valid_loss": first_valid,
        "final_valid_loss": result.valid_loss,
        **counts,
        **data_counts,
        "metrics": evaluation["metrics"] if evaluation else None,
        "examples": examples,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "seconds": round(time.perf_counter() - started, 1),
        "lorafit_version": __version__,
        "machine": machine_info(),
    }
    run.write_json(SUMMARY_FILE, summary)
    valid = "n/a" if result.valid_loss is None else f"{result.valid_loss:.4f}"
    start = "" if first_valid is None else f" (from {first_valid:.4f})"
    reporter.info(f"\ndone in {summary['seconds']:.0f}s: {result.state.step} steps, validation loss {valid}{start}; "
                  f"adapter in {run.adapter}")
    return summary
