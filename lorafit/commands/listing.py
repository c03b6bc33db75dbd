"""`lorafit models`, `lorafit recipes`, `lorafit report`: what is installed, shipped, and was run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lorafit.commands.app import JsonOpt, app, cli_command
from lorafit.console import Reporter


@app.command()
@cli_command
def models(json_out: JsonOpt = False) -> None:
    """List the built-in model aliases, whether each is installed, and where its checkpoint is.

    \b
    Examples:
      lorafit models
      lorafit models --json
    """
    from lorafit.models.aliases import list_aliases  # not via models/__init__: that imports torch

    reporter = Reporter(False, json_out)
    rows = list_aliases()
    reporter.table(
        "built-in models",
        ["alias", "installed", "package", "checkpoint", "description"],
        [[r["alias"], "yes" if r["installed"] else "no", r.get("package", ""), r.get("checkpoint", ""), r.get("description", "")]
         for r in rows],
    )
    reporter.summary({"models": rows})


recipes_app = typer.Typer(no_args_is_help=False)
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback(invoke_without_command=True)
@cli_command
def recipes_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the shipped recipes with one line each, or print one with `show`.

    \b
    Examples:
      lorafit recipes
      lorafit recipes show quickstart > my-recipe.yaml
    """
    if ctx.invoked_subcommand is not None:
        return
    from lorafit.recipe.shipped import shipped_recipes

    reporter = Reporter(False, json_out)
    rows = shipped_recipes()
    reporter.table("shipped recipes", ["name", "description"], [[r["name"], r["description"]] for r in rows])
    reporter.summary({"recipes": rows})


@recipes_app.command("show")
@cli_command
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name, as `lorafit recipes` lists it.")],
    json_out: JsonOpt = False,
) -> None:
    """Print a shipped recipe (redirect it into a file to start your own).

    \b
    Examples:
      lorafit recipes show quickstart
      lorafit recipes show sst2-minilm > my-sst2.yaml && lorafit train my-sst2.yaml
    """
    from lorafit.recipe.shipped import recipe_text

    text = recipe_text(name)
    if json_out:
        Reporter(False, True).summary({"name": name.removesuffix(".yaml"), "text": text})
    else:
        sys.stdout.write(text)


@app.command()
@cli_command
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (as `lorafit train` writes them).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG comparing the runs' loss curves.")] = Path("report.png"),
    json_out: JsonOpt = False,
) -> None:
    """Compare runs: settings and final metrics side by side, and a PNG of their loss curves.

    Reads each run's recipe.yaml, metrics.jsonl, summary.json and eval.json; works on a run that is
    still going or was stopped (with what it has so far).

    \b
    Examples:
      lorafit report runs/quickstart
      lorafit report runs/sst2-r4 runs/sst2-r8 runs/sst2-r16 -o sst2-ranks.png
      lorafit report runs/* --json
    """
    from lorafit.runs.plots import plot_runs
    from lorafit.runs.report import comparison_table, read_run, report_data, run_labels

    reporter = Reporter(False, json_out)
    records = [read_run(path) for path in runs]
    columns, rows = comparison_table(records)
    reporter.table(f"{len(records)} run" + ("s" if len(records) > 1 else ""), columns, rows)
    labels = run_labels(records)
    plot_runs({label: r.history for label, r in zip(labels, records, strict=True)}, output,
              title="loss: " + ", ".join(labels) if len(labels) <= 3 else f"loss of {len(labels)} runs")
    reporter.info(f"wrote {output}")
    reporter.summary({"runs": report_data(records), "plot": str(output)})
