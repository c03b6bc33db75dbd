"""`lorafit train`, `lorafit data`, `lorafit inspect`: a recipe, what it trains on, and training it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lorafit.commands.app import JsonOpt, QuietOpt, app, cli_command
from lorafit.console import Reporter


@app.command()
@cli_command
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (with --resume: or a run directory).")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a recipe key: --set train.lr=1e-4")] = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default: recipe output_dir or runs/NAME).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in the output directory.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run (RECIPE's, or the run directory given) from its newest readable checkpoint.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Train with N processes on this machine (torch.distributed; docs/distributed.md).")] = 1,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Tokenise the data afresh; read and write no data cache.")] = False,
) -> None:
    """Train a LoRA adapter as RECIPE says; writes a run directory (recipe, adapter, metrics, plot).

    On a terminal a progress bar shows step/total, epoch, loss, learning rate, tokens/s and ETA;
    otherwise (CI, a pipe) a plain line is printed every train.log_every steps.

    \b
    Examples:
      lorafit train recipes/quickstart.yaml
      lorafit train recipes/sst2-minilm.yaml --set train.lr=5e-4 --set lora.rank=4 -o runs/sst2-r4
      lorafit train recipes/e2e-smollm2.yaml --resume
      lorafit train --resume runs/e2e-r4
      lorafit train recipes/quickstart.yaml --overwrite --json > summary.json
      lorafit train recipes/e2e-smollm2.yaml --nproc 2       two processes, one global batch
      torchrun --nproc_per_node 2 -m lorafit train recipes/e2e-smollm2.yaml    the same

    Ctrl-C or SIGTERM writes a checkpoint and exits 130; --resume continues it (docs/trust.md).
    """
    from lorafit.runs.rundir import locate_run

    # A bad recipe or run directory fails in a blink, before torch and transformers load. Under torchrun
    # only rank 0 checks the directory: it alone creates it, and another rank could look after it did.
    rank = int(os.environ.get("RANK", "0"))
    loaded_recipe, run, note = locate_run(recipe, set_, output, resume=resume, overwrite=overwrite, check=rank == 0)
    if nproc > 1 and "RANK" not in os.environ:
        from lorafit.train.distributed import launch

        argv = ["train", str(recipe), *[a for s in set_ for a in ("--set", s)], *(["-o", str(output)] if output else []),
                *(["--overwrite"] if overwrite else []), *(["--resume"] if resume else []),
                *(["--quiet"] if quiet else []), *(["--json"] if json_out else [])]
        code = launch(nproc, argv)
        if code:
            raise typer.Exit(code)
        return
    from lorafit.workflows.train import run_training

    reporter = Reporter(quiet or rank != 0, json_out and rank == 0)
    if note:
        reporter.info(note)
    summary = run_training(loaded_recipe, run, overwrite=overwrite, resume=resume, reporter=reporter,
                           use_cache=not no_cache and loaded_recipe.data.cache)
    reporter.summary(summary)


@app.command()
@cli_command
def data(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a recipe key.")] = [],  # noqa: B006
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the token-length histogram PNG here (default: lengths-NAME.png beside the data cache; the path is printed).")] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="No PNG.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Tokenise afresh; read and write no data cache.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show what the model will train on: examples per split, token lengths, truncation, the loss mask.

    Tokenises as `lorafit train` does (and fills the same cache, so training starts at once);
    loads the tokenizer only, not the model. The first training example is printed with the
    tokens outside the loss dimmed.

    \b
    Examples:
      lorafit data recipes/e2e-chat-smollm2.yaml
      lorafit data my.yaml --set data.max_length=256 --plot lengths.png
    """
    from lorafit.recipe import load_recipe
    from lorafit.workflows.data import show_data

    parsed = load_recipe(recipe, set_)
    reporter = Reporter(False, json_out)
    reporter.summary(show_data(parsed, reporter, use_cache=not no_cache and parsed.data.cache, plot=plot, draw=not no_plot))


@app.command()
@cli_command
def inspect(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a recipe key.")] = [],  # noqa: B006
    json_out: JsonOpt = False,
) -> None:
    """Dry run: the memory the run will need (from the config, before loading), then load the base and
    show which modules each target matches and the parameter counts.

    Fails (exit 2) when a target matches nothing.

    \b
    Examples:
      lorafit inspect recipes/e2e-smollm2.yaml
      lorafit inspect recipes/quickstart.yaml --set lora.targets=all-linear
    """
    from lorafit.models.loader import load_for_training
    from lorafit.recipe import load_recipe
    from lorafit.train.estimate import describe
    from lorafit.train.setup import load_task, memory_estimate, parameter_summary

    reporter = Reporter(False, json_out)
    parsed = load_recipe(recipe, set_)
    task = load_task(parsed)
    estimate = memory_estimate(parsed)
    for line in describe(estimate) if estimate else ["memory estimate: only for Llama-style decoders trained with LoRA"]:
        reporter.info(line)
    prepared = load_for_training(parsed, task.num_labels)
    counts = parameter_summary(prepared.report)
    reporter.info(f"recipe {recipe}: model {parsed.model} ({prepared.base.path_or_id}), task {task.name} ({task.kind})")
    lora = parsed.lora
    # Per-layer shape when it is not the same everywhere (rank/alpha patterns) or not plain LoRA.
    detailed = lora.rank_pattern or lora.alpha_pattern or lora.variant != "lora" or lora.init not in ("kaiming", "gaussian")
    layers = {name: prepared.model.get_submodule(name) for name in prepared.report.adapted}
    for target, names in prepared.report.matched_by_target.items():
        reporter.info(f"target {target!r} matches {len(names)} module(s):")
        for name in names:
            layer = layers.get(name)
            shape = f"  (rank {layer.rank}, alpha {layer.alpha:g}, {lora.variant}, init {lora.init})" if detailed and layer else ""
            reporter.info(f"  {name}{shape}")
    for name in prepared.report.saved_modules:
        reporter.info(f"trained in full: {name}")
    reporter.info(
        f"trainable parameters: {counts['trainable_params']:,} of {counts['total_params']:,} "
        f"({counts['trainable_percent']:.4f}%)"
    )
    memory = None if estimate is None else {**{k: getattr(estimate, k) for k in (
        "weights", "trainable", "activations", "activations_checkpointed", "runtime", "loading")},
        "peak": estimate.peak}
    reporter.summary({"recipe": str(recipe), **counts, "matched": prepared.report.matched_by_target,
                      "saved_modules": prepared.report.saved_modules,
                      "layers": {n: {"rank": m.rank, "alpha": m.alpha, "variant": lora.variant} for n, m in layers.items()},
                      "memory_bytes": memory})
