"""`lorafit sweep`: search recipe keys (rank, alpha, lr, targets, ...) with many training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorafit.commands.app import JsonOpt, QuietOpt, app, cli_command
from lorafit.console import Reporter
from lorafit.errors import RecipeError


@app.command()
@cli_command
def sweep(
    recipe: Annotated[str | None, typer.Argument(help="Recipe YAML file (or `show`, then the sweep directory).", show_default=False)] = None,
    shown: Annotated[Path | None, typer.Argument(help="With `show`: the sweep directory.", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Sweep directory: study.db, trials/, sweep.json, best.yaml.")] = None,
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,...: every combination of the given values (repeatable).")] = [],  # noqa: B006
    space: Annotated[Path | None, typer.Option("--space", help="SPACE.yaml: ranges per recipe key (int, float, log, choice).")] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Trials drawn from --space (default 10).")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="random or tpe (--space).")] = "tpe",
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Fix a recipe key for every trial: --set train.max_steps=200")] = [],  # noqa: B006
    objective: Annotated[str, typer.Option("--objective", help="valid_loss (minimised), or a task metric evaluated with eval.every (accuracy, bleu, ...: maximised).")] = "valid_loss",
    prune: Annotated[str, typer.Option("--prune", help="none, median or halving: stop hopeless trials on their intermediate values.")] = "none",
    prune_startup: Annotated[int, typer.Option("--prune-startup", min=0, help="Trials that finish before any pruning.")] = 3,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Trials at once, each a process with cores // J threads.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep in -o DIR (RECIPE may be left out).")] = False,
    worker: Annotated[int | None, typer.Option("--worker", hidden=True, help="Run trial K of the sweep in -o DIR.")] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train many variants of RECIPE and keep the best: a grid or an optuna search over recipe keys.

    Each trial is an ordinary run directory (DIR/trials/NNN-<params>/: eval, merge, report and analyze
    work on it); the study is DIR/study.db (SQLite). At the end: a table sorted by the objective,
    DIR/sweep.json, DIR/best.yaml (ready for lorafit train), PNGs, and analyze's rank advice on the best
    adapter. Ctrl-C or SIGTERM stops it resumably: the same command (or --resume -o DIR) runs no finished
    trial again and continues an interrupted one from its checkpoint (docs/sweeps.md).

    \b
    Examples:
      lorafit sweep recipes/sst2-minilm.yaml -o sweeps/sst2 --grid lora.rank=1,2,4,8,16 --grid train.lr=3e-4,1e-3,3e-3 --set train.eval_every=50 --prune median
      lorafit sweep recipes/e2e-smollm2.yaml -o sweeps/e2e --space space.yaml --trials 12 --sampler tpe
      lorafit sweep --resume -o sweeps/sst2
      lorafit sweep show sweeps/sst2
    """
    from lorafit.workflows.sweep import load_sweep, plan_sweep, run_sweep, run_trial, show_sweep

    reporter = Reporter(quiet, json_out)
    if recipe == "show":
        if shown is None:
            raise RecipeError("sweep show: give the sweep directory, e.g. lorafit sweep show sweeps/sst2")
        reporter.summary(show_sweep(shown, reporter))
        return
    if shown is not None:
        raise RecipeError(f"sweep: one RECIPE, got a second argument {str(shown)!r}")
    if output is None:
        raise RecipeError("--output: give the sweep directory, e.g. -o sweeps/NAME")
    if worker is not None:
        run_trial(load_sweep(output), worker)
        return
    if recipe is None and not resume:
        raise RecipeError("sweep: give a RECIPE (or --resume -o DIR to continue a sweep)")
    for option, value, choices in (("--sampler", sampler, ("random", "tpe")), ("--prune", prune, ("none", "median", "halving"))):
        if value not in choices:
            raise RecipeError(f"{option}: must be one of {', '.join(choices)}, got {value!r}")
    planned = plan_sweep(Path(recipe) if recipe else None, set_, output, grid=grid, space=space, trials=trials,
                         sampler=sampler, objective=objective, prune=prune, prune_startup=prune_startup, resume=resume)
    reporter.summary(run_sweep(planned, reporter, jobs=jobs))
