"""`lorafit train`, top to bottom:

    recipe.yaml -> load_recipe -> task -> prepare_model (base + LoRA) -> prepare_data -> fit
                -> save adapter -> (evaluate) -> plot, summary, base-vs-adapted examples
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from lorafit.console import Reporter, format_train_record, format_train_status
from lorafit.errors import RunDirError
from lorafit.fast.precision import resolve_precision
from lorafit.recipe.parse import Recipe, dump_recipe, load_recipe, recipe_hash
from lorafit.runs.interrupts import sigterm_as_interrupt
from lorafit.runs.rundir import TENSORBOARD_DIR, RunDir
from lorafit.runs.tensorboard import TensorBoardLog, summary_writer_class
from lorafit.train.loop import fit, total_optimizer_steps
from lorafit.train.setup import (
    load_task,
    loop_settings,
    loss_function,
    parameter_summary,
    prepare_data,
    prepare_model,
    save_trained,
)
from lorafit.workflows.train_outputs import finish_run, periodic_eval_record


def run_directory(recipe: Recipe, output: Path | None) -> RunDir:
    """--output, else the recipe's output_dir, else runs/<name>."""
    return RunDir(output or (Path(recipe.output_dir) if recipe.output_dir else Path("runs") / recipe.name))


def locate_run(
    recipe_path: Path, overrides: list[str], output: Path | None, *, resume: bool
) -> tuple[Recipe, RunDir]:
    """The recipe and the run directory to train in.

    RECIPE is a recipe file (the run goes to --output, else its output_dir, else runs/<name>) or, with
    --resume, a run directory (`lorafit train --resume runs/x`), whose saved recipe.yaml is read.
    """
    if not recipe_path.is_dir():
        recipe = load_recipe(recipe_path, overrides)
        return recipe, run_directory(recipe, output)
    if not resume:
        raise RunDirError(f"{recipe_path}: is a directory; give a recipe file, or add --resume to continue the run in it")
    if output is not None and output.resolve() != recipe_path.resolve():
        raise RunDirError(f"--output {output}: differs from the run directory {recipe_path} given to --resume")
    run = RunDir(recipe_path)
    run.check(overwrite=False, resume=True)  # it must hold a run; run_training then checks --overwrite
    return load_recipe(run.recipe, overrides), run


def warn(message: str) -> None:
    """One line on stderr, even with --quiet: it changes what the run continues from."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def run_training(
    recipe_path: Path, overrides: list[str], output: Path | None, *, overwrite: bool, resume: bool, reporter: Reporter
) -> dict:
    """Train as the recipe says and write the run directory; returns the summary dict.

    `recipe_path` is a recipe file, or with `resume` a run directory (see `locate_run`).
    """
    started = time.perf_counter()
    recipe, run = locate_run(recipe_path, overrides, output, resume=resume)
    run.check(overwrite=overwrite, resume=resume)  # fail fast, before any model is loaded
    if resume:
        saved = load_recipe(run.recipe)
        if recipe_hash(saved) != recipe_hash(recipe):
            reporter.info(f"note: resuming with the recipe saved in {run.recipe}; {recipe_path} "
                          f"{'with --set ' if overrides else ''}differs from it and is not used")
        recipe = saved
    task = load_task(recipe)
    if recipe.log.tensorboard:
        summary_writer_class()  # fail now, not after loading the model, when tensorboard is missing

    prepared = prepare_model(recipe, task)
    counts = parameter_summary(prepared.report)
    precision = resolve_precision(recipe.precision, next(prepared.model.parameters()).device)
    reporter.info(
        f"{recipe.name}: {recipe.model} on {task.name}; trainable {counts['trainable_params']:,} of "
        f"{counts['total_params']:,} parameters ({counts['trainable_percent']:.3f}%), "
        f"{counts['adapted_layers']} LoRA layers; precision {precision}"
    )
    train_data, valid_data, data_counts = prepare_data(recipe, task, prepared.tokenizer)
    settings = loop_settings(recipe, task)
    reporter.info(
        f"data: {data_counts['train_examples']} train / {data_counts['valid_examples']} validation examples "
        f"({data_counts['train_truncated']} truncated, {data_counts['train_skipped']} skipped as too long); "
        f"batching {settings.batching}"
    )

    if not resume:
        run.prepare(overwrite=overwrite)
    recipe_text = dump_recipe(recipe)
    run.write_recipe(recipe_text)
    snapshot = None
    if resume:
        found = run.latest_checkpoint(on_skip=warn)
        if found is None:
            reporter.info(f"note: {run.path} has no readable checkpoint; starting from step 0")
        else:
            path, snapshot = found
            reporter.info(f"resuming from {path} (step {snapshot['state']['step']})")
        run.truncate_metrics(after_step=snapshot["state"]["step"] if snapshot else 0)
        if snapshot is None and run.metrics.exists():
            run.metrics.unlink()

    total = total_optimizer_steps(len(train_data), settings)

    def save_checkpoint(snapshot_fn) -> None:
        run.save_checkpoint(snapshot_fn(), recipe_text, recipe.train.keep_checkpoints)

    def on_step(state, snapshot_fn) -> None:
        progress.advance(1, status=format_train_status(last))
        if recipe.train.save_every and state.step % recipe.train.save_every == 0:
            save_checkpoint(snapshot_fn)

    def on_log(record: dict) -> None:
        run.append_metrics(record)
        progress.log(format_train_record(record, total))
        if "loss" in record:
            last.update(record)
        if tensorboard is not None:
            tensorboard.log(record)

    def on_validate(state) -> dict:
        return periodic_eval_record(recipe, task, prepared, reporter)

    def on_interrupt(snapshot_fn) -> None:
        save_checkpoint(snapshot_fn)
        reporter.info(f"interrupted: checkpoint written; continue with: lorafit train --resume {run.path}")

    last: dict = {}  # the latest training record: the bar's status (epoch, loss, lr, tok/s)

    done_before = snapshot["state"]["step"] if snapshot else 0
    tensorboard = TensorBoardLog(run.path / TENSORBOARD_DIR, done_before) if recipe.log.tensorboard else None
    with (
        sigterm_as_interrupt(),
        warnings.catch_warnings(),
        reporter.progress("train", total, plain_ticks=False) as progress,
    ):
        warnings.simplefilter("ignore", UserWarning)
        progress.advance(done_before)
        result = fit(
            prepared.model, train_data, valid_data, settings,
            loss_fn=loss_function(task), pad_id=prepared.tokenizer.pad_token_id,
            on_log=on_log, on_step=on_step, on_validate=on_validate, on_interrupt=on_interrupt, resume=snapshot,
        )
    save_trained(prepared, recipe, task, run.adapter)
    summary = finish_run(run, recipe, task, prepared, result, counts, data_counts, reporter, started)
    if tensorboard is not None:
        tensorboard.log_eval(summary["metrics"] or {}, result.state.step)
        tensorboard.close()
    return summary
