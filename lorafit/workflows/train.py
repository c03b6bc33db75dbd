"""`lorafit train`, top to bottom in `run_training`:

    recipe (located by the CLI) -> task -> [process group] -> model (the one loader) -> data -> run directory
        -> fit -> save adapter -> evaluate -> plot, base-vs-adapted examples -> summary.json

Several processes (torchrun, `lorafit train --nproc N`) each run all of it; rank 0 alone creates the
run directory (the others wait for it), writes files and prints; checkpoints and the adapter are taken
by all ranks together and written by rank 0, with a barrier after each; the task evaluation is shared
out and gathered. After the last collective the other ranks are done; rank 0 plots and summarises.
"""

from __future__ import annotations

import resource
import sys
import time
import warnings
from collections.abc import Callable, Sequence

from lorafit import __version__
from lorafit.console import Reporter, format_train_record, format_train_status, print_metrics
from lorafit.data.batches import describe_batching
from lorafit.data.chat import eval_prompts, plain_decoding
from lorafit.errors import RecipeError, RunDirError
from lorafit.eval.generate import decoding_settings, generate
from lorafit.eval.predict import eval_items, evaluate
from lorafit.fast.precision import has_native_bf16, resolve_precision
from lorafit.lora import lora_disabled
from lorafit.lora.inits import uses_base_weight
from lorafit.models.loader import Loaded, load_for_training
from lorafit.recipe import Recipe, dump_recipe
from lorafit.runs.interrupts import sigterm_as_interrupt
from lorafit.runs.machine import machine_info
from lorafit.runs.plots import plot_runs
from lorafit.runs.rundir import EVAL_FILE, SUMMARY_FILE, TENSORBOARD_DIR, RunDir
from lorafit.runs.tensorboard import TensorBoardLog, summary_writer_class
from lorafit.tasks import task_data_dir
from lorafit.tasks.types import Task
from lorafit.train import distributed
from lorafit.train.best import check_watch
from lorafit.train.checkpointing import enable_gradient_checkpointing
from lorafit.train.distributed import Dist
from lorafit.train.loop import FitResult, fit, total_optimizer_steps
from lorafit.train.setup import load_task, loss_function, parameter_summary, prepare_data, save_trained


def run_training(recipe: Recipe, run: RunDir, *, overwrite: bool, resume: bool, reporter: Reporter,
                 use_cache: bool = True, on_evaluation: Callable[[dict], bool] | None = None) -> dict:
    """Train as the recipe says and write the run directory; returns the summary dict.

    `recipe` and `run` come from `runs.rundir.locate_run` (the saved recipe when resuming).
    on_evaluation(record): each validation / task-evaluation record; True stops training after that
    step, the run finishing as usual (a sweep prunes a trial this way, workflows/sweep.py)."""
    started = time.perf_counter()
    task = load_task(recipe)
    check_watch(recipe.train, recipe.eval.every)
    if recipe.log.tensorboard:
        summary_writer_class()  # fail now, not after loading the model, when tensorboard is missing
    with distributed.session(recipe.train.distributed, recipe.device) as dist:  # one process: no process group
        check_distributed(recipe, task, dist)
        if dist.world > 1:
            reporter.info(distributed.describe(dist, recipe.train.batch_size, recipe.train.grad_accum))
        loaded = load_for_training(recipe, task.num_labels)
        if recipe.train.gradient_checkpointing:
            enable_gradient_checkpointing(loaded.model)
        loaded.model = dist.prepare(loaded.model)  # ddp: trainable weights from rank 0; fsdp: sharded
        report_model(recipe, task, loaded, reporter)
        with dist.main_first():  # rank 0 tokenises into the on-disk cache; the other ranks then read it
            train_data, valid_data, data_counts = prepare_data(recipe, task, loaded.tokenizer, use_cache=use_cache)
        report_data(data_counts, recipe, task, loaded, reporter)
        # Rank 0 creates (or reopens) the run directory and reads the checkpoint; the others wait for it.
        snapshot = dist.broadcast_object(
            open_run(run, recipe, overwrite=overwrite, resume=resume, reporter=reporter, world=dist.world)
            if dist.main else None
        )
        step = snapshot["state"]["step"] if snapshot else 0
        tensorboard = TensorBoardLog(run.path / TENSORBOARD_DIR, step) if recipe.log.tensorboard and dist.main else None
        result = train_with_progress(recipe, task, loaded, run, train_data, valid_data, snapshot, tensorboard,
                                     reporter, dist, on_evaluation)
        with dist.full_trainable(loaded.model):  # fsdp: the trainable weights gathered whole on every rank
            if dist.main:
                save_trained(loaded, recipe, task, run.adapter)
        dist.barrier()
        evaluation = evaluate_at_end(run, recipe, task, loaded, reporter, dist) if recipe.eval.at_end else None
    if not dist.main:
        return {}  # rank 0 writes the rest
    if tensorboard is not None:
        tensorboard.log_eval(evaluation["metrics"] if evaluation else {}, result.state.step)
        tensorboard.close()
    if recipe.log.plot:
        plot_loss(run, recipe, task, result)
    examples = show_examples(recipe, task, loaded, reporter)
    summary = write_summary(run, recipe, task, loaded, result, data_counts, evaluation, examples, started)
    reporter.info(done_line(summary, result, run, recipe))
    return summary


# ---------------------------------------------------------------------------------------------- the steps


def warn(message: str) -> None:
    """One line on stderr, even with --quiet: it changes what the run continues from."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def report_model(recipe: Recipe, task: Task, loaded: Loaded, reporter: Reporter) -> None:
    counts = parameter_summary(loaded.report)
    device = next(loaded.model.parameters()).device
    precision = resolve_precision(recipe.precision, device)
    if recipe.precision == "bf16" and device.type == "cpu" and not has_native_bf16(device):
        warn("precision: bf16 on a CPU without native bf16 (avx512_bf16 / amx_bf16): bf16 matmuls are emulated, "
             "many times slower than fp32; precision: auto picks fp32 here")
    quantized = f", base quantized to {recipe.quantize}" if recipe.quantize != "none" else ""
    reporter.info(
        f"{recipe.name}: {recipe.model} on {task.name}; trainable {counts['trainable_params']:,} of "
        f"{counts['total_params']:,} parameters ({counts['trainable_percent']:.3f}%), "
        f"{counts['adapted_layers']} LoRA layers; precision {precision}{quantized}"
    )


def report_data(counts: dict, recipe: Recipe, task: Task, loaded: Loaded, reporter: Reporter) -> None:
    reporter.info(
        f"data: {counts['train_examples']} train / {counts['valid_examples']} validation examples "
        f"({counts['train_truncated']} truncated, {counts['train_skipped']} skipped as too long); "
        f"batching {describe_batching(recipe.train.batching, task.kind, loaded.model)}"
    )
    if counts.get("data_cache"):
        reporter.info(counts["data_cache"])


def check_distributed(recipe: Recipe, task: Task, dist: Dist) -> None:
    """What several fsdp ranks cannot do yet, refused before the model loads: generating text (task
    evaluation, held-out examples) needs every rank's forward passes in step; sharding packed 4 / 8-bit
    weights."""
    if not dist.sharded:
        return
    if recipe.quantize != "none":
        raise RecipeError(f"quantize: {recipe.quantize} cannot be sharded by train.distributed fsdp; "
                          "use train.distributed: ddp (each rank holds the quantized base) or quantize: none")
    keys = [k for k, on in (("eval.every", recipe.eval.every), ("eval.at_end", recipe.eval.at_end),
                            ("eval.show_examples", recipe.eval.show_examples)) if on]
    if keys:
        raise RecipeError(f"train.distributed: fsdp runs no task evaluation yet; set {', '.join(keys)} off "
                          "(the validation loss is still computed) and evaluate the adapter with lorafit eval")


def open_run(run: RunDir, recipe: Recipe, *, overwrite: bool, resume: bool, reporter: Reporter,
             world: int = 1) -> dict | None:
    """Create (or reopen) the run directory and write the recipe; on resume, the newest readable
    checkpoint (None: start from step 0) with metrics.jsonl cut back to it. A checkpoint written by
    another number of processes is refused: the global batch, hence the data order, would differ."""
    if not resume:
        run.prepare(overwrite=overwrite)
    run.write_recipe(dump_recipe(recipe))
    if not resume:
        return None
    found = run.latest_checkpoint(on_skip=warn)
    snapshot = found[1] if found else None
    if found is None:
        reporter.info(f"note: {run.path} has no readable checkpoint; starting from step 0")
        if run.metrics.exists():
            run.metrics.unlink()
    else:
        written_by = snapshot.get("world_size", 1)
        if written_by != world:
            raise RunDirError(f"{found[0]}: checkpoint was written by {written_by} process(es); resume it with "
                              f"--nproc {written_by} (this run has {world})")
        reporter.info(f"resuming from {found[0]} (step {snapshot['state']['step']})")
        run.truncate_metrics(after_step=snapshot["state"]["step"])
    return snapshot


def train_with_progress(recipe: Recipe, task: Task, loaded: Loaded, run: RunDir, train_data: Sequence, valid_data: Sequence,
                        snapshot: dict | None, tensorboard: TensorBoardLog | None, reporter: Reporter,
                        dist: Dist = Dist(), on_evaluation: Callable[[dict], bool] | None = None) -> FitResult:
    """`fit` with the run's outputs attached: progress bar, metrics.jsonl, TensorBoard, checkpoints
    every train.save_every steps and on Ctrl-C / SIGTERM, task metrics every eval.every steps.
    Several ranks: every rank takes the snapshot (a collective), rank 0 writes it, all wait for it."""
    total = total_optimizer_steps(len(train_data), recipe.train, dist.world)
    done_before = snapshot["state"]["step"] if snapshot else 0
    recipe_text = dump_recipe(recipe)
    last: dict = {}  # the latest training record: the bar's status (epoch, loss, lr, tok/s)

    def on_log(record: dict) -> None:
        if not dist.main:
            return
        run.append_metrics(record)
        progress.log(format_train_record(record, total))
        if "loss" in record:
            last.update(record)
        if tensorboard is not None:
            tensorboard.log(record)

    def save(snapshot_fn) -> None:
        snapshot = snapshot_fn()  # every rank: it gathers the ranks' RNG states (and fsdp's shards)
        if dist.main:
            run.save_checkpoint(snapshot, recipe_text, recipe.train.keep_checkpoints)
        dist.barrier()

    def on_step(state, snapshot_fn) -> None:
        progress.advance(1, status=format_train_status(last))
        if recipe.train.save_every and state.step % recipe.train.save_every == 0:
            save(snapshot_fn)

    def on_interrupt(snapshot_fn) -> None:
        save(snapshot_fn)
        reporter.info(f"interrupted: checkpoint written; continue with: lorafit train --resume {run.path}")

    def on_task_eval(state) -> dict:
        metrics = evaluate_split(recipe, task, loaded, reporter, dist=dist)["metrics"]
        return {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, int | float)}

    with sigterm_as_interrupt(), warnings.catch_warnings(), reporter.progress("train", total, plain_ticks=False) as progress:
        warnings.simplefilter("ignore", UserWarning)
        progress.advance(done_before)
        result = fit(
            loaded.model, train_data, valid_data, recipe.train, seed=recipe.seed, precision=recipe.precision,
            loss_fn=loss_function(task), pad_id=loaded.tokenizer.pad_token_id, on_log=on_log, on_step=on_step,
            on_task_eval=on_task_eval, task_eval_every=recipe.eval.every, on_interrupt=on_interrupt, resume=snapshot,
            dist=dist, on_evaluation=on_evaluation,
        )
    if result.stopped == "early stopping":
        reporter.info(f"early stopping at step {result.state.step}: {recipe.train.best_metric} did not improve in "
                      f"{recipe.train.early_stopping_patience} evaluation(s)")
    if recipe.train.keep_best and result.best:
        reporter.info(f"keeping the best evaluation: step {result.best['step']}, {recipe.train.best_metric} "
                      f"{result.best['value']:.4f}")
    return result


def evaluate_split(recipe: Recipe, task: Task, loaded: Loaded, reporter: Reporter, limit: int | None = None,
                   dist: Dist = Dist()) -> dict:
    """Task metrics on recipe.eval.split (its first eval.limit inputs) for the model as it is now.
    Several ranks: each predicts its share of the batches one process would make, the predictions are
    gathered, and every rank scores them (no rank waits on another's scoring)."""
    items = eval_items(task, task_data_dir(task, recipe.data_dir), recipe.eval.split, recipe.data, limit or recipe.eval.limit)
    with reporter.progress("generate" if task.kind == "generation" else "classify", len(items)) as progress:
        evaluated = evaluate(loaded.model, loaded.tokenizer, task, items, recipe.eval, recipe.data.max_length,
                             on_batch=progress.advance, shard=(dist.rank, dist.world), gather=dist.gather_objects)
    return {"task": task.name, "split": recipe.eval.split, "num_examples": len(items),
            "settings": decoding_settings(recipe.eval), **evaluated}


def evaluate_at_end(run: RunDir, recipe: Recipe, task: Task, loaded: Loaded, reporter: Reporter,
                    dist: Dist = Dist()) -> dict:
    """The task's metrics at the end of training, printed and written to eval.json (by rank 0)."""
    result = evaluate_split(recipe, task, loaded, reporter, dist=dist)
    if dist.main:
        print_metrics(reporter, result)
        run.write_json(EVAL_FILE, result)
    return result


def plot_loss(run: RunDir, recipe: Recipe, task: Task, result: FitResult) -> None:
    method = f"LoRA rank {recipe.lora.rank}" if recipe.train.method == "lora" else f"{recipe.train.method} fine-tune"
    plot_runs({recipe.name: result.history}, run.plot, title=f"{recipe.name}: {recipe.model} on {task.name}, {method}")


def show_examples(recipe: Recipe, task: Task, loaded: Loaded, reporter: Reporter) -> list[dict]:
    """Generate for a few held-out inputs with the adapter off (base) and on, and print both."""
    count = recipe.eval.show_examples
    if count <= 0 or task.kind != "generation" or loaded.spec is None:
        return []
    items = eval_items(task, task_data_dir(task, recipe.data_dir), recipe.eval.split, recipe.data, count)
    prompts = eval_prompts(items, loaded.tokenizer)  # chat items rendered with the model's template
    settings = plain_decoding(items, recipe.eval)
    with lora_disabled(loaded.model):
        base = generate(loaded.model, loaded.tokenizer, prompts, settings)
    adapted = generate(loaded.model, loaded.tokenizer, prompts, settings)
    examples = []
    reporter.info("\nheld-out inputs, base model vs. with the trained adapter:")
    for item, b, a in zip(items, base, adapted, strict=True):
        reporter.info("\ninput:     " + " | ".join(line.strip() for line in item.prompt.strip().splitlines()))
        reporter.info(f"base:      {b}")
        reporter.info(f"lorafit:   {a}")
        reporter.info(f"reference: {item.references[0]}")
        examples.append({"prompt": item.prompt, "base": b, "adapted": a, "reference": item.references[0]})
    return examples


def write_summary(run: RunDir, recipe: Recipe, task: Task, loaded: Loaded, result: FitResult, data_counts: dict,
                  evaluation: dict | None, examples: list[dict], started: float) -> dict:
    """summary.json: the run's final numbers, what it trained, on what machine."""
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
        "best": result.best,  # train.best_metric's best evaluation; best.kept: the adapter holds its weights
        "stopped": result.stopped,  # "early stopping" / "pruned" before train.max_steps, else null
        **parameter_summary(loaded.report),
        **data_counts,
        "metrics": evaluation["metrics"] if evaluation else None,
        "examples": examples,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "seconds": round(time.perf_counter() - started, 1),
        "lorafit_version": __version__,
        "machine": machine_info(next(loaded.model.parameters()).device),
    }
    run.write_json(SUMMARY_FILE, summary)
    return summary


def done_line(summary: dict, result: FitResult, run: RunDir, recipe: Recipe) -> str:
    valid = "n/a" if result.valid_loss is None else f"{result.valid_loss:.4f}"
    first = summary["initial_valid_loss"]
    start = "" if first is None else f" (from {first:.4f})"
    line = (f"\ndone in {summary['seconds']:.0f}s: {result.state.step} steps, validation loss {valid}{start}; "
            f"adapter in {run.adapter}")
    if uses_base_weight(recipe.lora.init) and recipe.train.method == "lora":
        # pissa / olora trained against the residual base; the saved adapter applies to the original one.
        line += (f"\n(lora.init {recipe.lora.init}: saved converted to apply to the original base weights, "
                 f"rank {2 * recipe.lora.rank} = [trained; initial] factors, as PEFT's conversion)")
    return line
