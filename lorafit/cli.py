"""The `lorafit` command line. Each command body is a few lines that call the library in data-flow order.

Exit codes (for CI): 0 ok, 1 unexpected error, 2 bad input (recipe, data, adapter, paths),
3 training diverged (non-finite loss), 130 interrupted (a checkpoint was written first).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from lorafit import __version__
from lorafit.console import Reporter
from lorafit.errors import EXIT_INTERRUPTED, EXIT_OTHER, LorafitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def cli_command(fn):
    """Run a command body: user errors become one line on stderr and their exit code, never a traceback.

    A worker of a multi-process run (torchrun sets RANK) shows an error once for the job: a user error
    (the same on every rank) on rank 0 only; an unexpected one on the rank it happened on, with its
    rank; the error a rank gets because another rank went away, not at all (LORAFIT_DEBUG shows all)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        debug = bool(os.environ.get("LORAFIT_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except LorafitError as e:
            if rank == 0 or debug:
                typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if rank == 0:
                typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except typer.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only on request
            if debug:
                traceback.print_exc()
            if "RANK" in os.environ and not debug and _peer_failure(e):
                raise typer.Exit(EXIT_OTHER) from None
            message = str(e).splitlines()[0] if str(e) else ""
            where = f"rank {rank}: " if rank else ""
            typer.echo(f"error: {where}unexpected {type(e).__name__}: {message} (LORAFIT_DEBUG=1 shows the traceback)",
                       err=True)
            raise typer.Exit(EXIT_OTHER) from None

    return wrapper


def _peer_failure(error: Exception) -> bool:
    from lorafit.train.distributed import is_peer_failure

    return is_peer_failure(error)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lorafit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fine-tune language models with LoRA from YAML recipes.

    \b
    Examples:
      lorafit recipes                                  the shipped recipes, one line each
      lorafit train recipes/quickstart.yaml            a first run: a few minutes on a laptop CPU
      lorafit report runs/quickstart                   its settings, final numbers and loss curve
      lorafit COMMAND --help                           each command's options and examples
    """


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout at the end (for scripts).")]


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
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the token-length histogram PNG here (default: data-NAME-lengths.png).")] = None,
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
    png = None if no_plot else (plot or Path(f"data-{parsed.name}-lengths.png"))
    reporter = Reporter(False, json_out)
    reporter.summary(show_data(parsed, reporter, use_cache=not no_cache and parsed.data.cache, plot=png))


@app.command()
@cli_command
def inspect(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a recipe key.")] = [],  # noqa: B006
    json_out: JsonOpt = False,
) -> None:
    """Dry run: load the base, show which modules each target matches and the parameter counts.

    Fails (exit 2) when a target matches nothing.

    \b
    Examples:
      lorafit inspect recipes/e2e-smollm2.yaml
      lorafit inspect recipes/quickstart.yaml --set lora.targets=all-linear
    """
    from lorafit.models.loader import load_for_training
    from lorafit.recipe import load_recipe
    from lorafit.train.setup import load_task, parameter_summary

    reporter = Reporter(False, json_out)
    parsed = load_recipe(recipe, set_)
    task = load_task(parsed)
    prepared = load_for_training(parsed, task.num_labels)
    counts = parameter_summary(prepared.report)
    reporter.info(f"recipe {recipe}: model {parsed.model} ({prepared.base.path_or_id}), task {task.name} ({task.kind})")
    for target, names in prepared.report.matched_by_target.items():
        reporter.info(f"target {target!r} matches {len(names)} module(s):")
        for name in names:
            reporter.info(f"  {name}")
    for name in prepared.report.saved_modules:
        reporter.info(f"trained in full: {name}")
    reporter.info(
        f"trainable parameters: {counts['trainable_params']:,} of {counts['total_params']:,} "
        f"({counts['trainable_percent']:.4f}%)"
    )
    reporter.summary({"recipe": str(recipe), **counts, "matched": prepared.report.matched_by_target,
                      "saved_modules": prepared.report.saved_modules})


@app.command()
@cli_command
def merge(
    adapter: Annotated[str, typer.Argument(help="Adapter directory or run directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the merged model.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip reloading the merged model and comparing its logits with the adapter's.")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Merge an adapter into its base: writes a plain Hugging Face model directory (safetensors).

    The result loads with AutoModelForCausalLM / AutoModelForSequenceClassification.from_pretrained,
    no lorafit needed. Before it is written, the saved model is reloaded that way and its logits on a
    few probe inputs compared with the unmerged adapter's; a mismatch writes nothing (exit 2).
    lorafit_merge.json in the output records the check.

    \b
    Examples:
      lorafit merge runs/quickstart -o merged/quickstart
      lorafit merge runs/quickstart/adapter -o merged/quickstart --overwrite
    """
    from lorafit.workflows.merge import merge_adapter

    reporter = Reporter(quiet, json_out)
    result = merge_adapter(adapter, output, overwrite=overwrite, verify=not no_verify)
    reporter.info(f"merged {result['layers']} LoRA layers of {adapter} into {output}")
    check = result["verification"]
    if check["verified"]:
        reporter.info(f"verified: reloaded merged model matches the adapter on {check['probes']} probes "
                      f"(max |logit diff| {check['max_abs_diff']:.3g} <= {check['tolerance']:.3g}, {check['dtype']})")
    else:
        reporter.info("not verified (--no-verify)")
    reporter.summary(result)


@app.command("eval")
@cli_command
def eval_(
    target: Annotated[str | None, typer.Argument(help="Run dir, adapter dir, merged model dir, or base model (zero-shot).")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task name (default: the run's task).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate (default: the recipe's eval.split, dev).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N inputs.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write metrics, settings and predictions here (JSON).")] = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", help="Score this outputs file (one line per input) instead of a model.")] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Data directory (default: recipe data_dir or $LORAFIT_DATA).")] = None,
    beam_size: Annotated[int | None, typer.Option("--beam-size", min=1)] = None,
    length_penalty: Annotated[float | None, typer.Option("--length-penalty")] = None,
    no_repeat_ngram_size: Annotated[int | None, typer.Option("--no-repeat-ngram-size", min=0)] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    chat_template: Annotated[bool | None, typer.Option("--chat-template/--no-chat-template", help="Wrap prompts in the model's chat template (zero-shot instruct models).")] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate a model or an outputs file on a task split; prints a table and writes JSON.

    \b
    Examples:
      lorafit eval runs/e2e-smollm2 --limit 50
      lorafit eval smollm2-135m --task e2e --limit 30 -o zero-shot.json
      lorafit eval --task e2e --predictions my-system-outputs.txt
    """
    from lorafit.workflows.evaluate import EvalRequest, run_eval

    request = EvalRequest(
        target=target, task=task, split=split, limit=limit, output=output, predictions=predictions,
        data_dir=data_dir, beam_size=beam_size, length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens, batch_size=batch_size,
        chat_template=chat_template,
    )
    reporter = Reporter(quiet, json_out)
    result = run_eval(request, reporter)
    reporter.summary({k: v for k, v in result.items() if k != "predictions"})


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


@app.command()
@cli_command
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: alias, local directory or HF id.")],
    adapter: Annotated[list[str], typer.Option("--adapter", "-a", help="NAME=DIR: serve the adapter in DIR as model NAME (repeatable).")] = [],  # noqa: B006
    host: Annotated[str, typer.Option("--host", help="Address to bind; the default is reachable from this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most requests decoded together (1 turns batching off).")] = 32,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Most requests waiting for a place in the batch; beyond it: 503.")] = 256,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="LORAFIT_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 (or set LORAFIT_API_KEY, which `ps` does not show).")] = None,
    adapter_root: Annotated[Path | None, typer.Option("--adapter-root", help="The only directory adapters may be loaded from over HTTP.")] = None,
    allow_adapter_loading: Annotated[bool, typer.Option("--allow-adapter-loading", help="Enable /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --adapter-root).")] = False,
    route: Annotated[list[str], typer.Option("--route", help="NAME=A:90,B:10: model NAME sends requests to adapter A or B by weight (repeatable).")] = [],  # noqa: B006
    route_seed: Annotated[int, typer.Option("--route-seed", help="Seed of the routes' RNG (requests without a `user`).")] = 0,
    name: Annotated[str | None, typer.Option("--name", help="The base model's name for clients (default: --model as given).")] = None,
    max_rank: Annotated[int, typer.Option("--max-rank", min=1, help="Largest adapter rank accepted.")] = 64,
) -> None:
    """Serve a base model and LoRA adapters over an OpenAI-compatible HTTP API (continuous batching).

    Endpoints: /v1/models, /v1/completions, /v1/chat/completions (stream: true for SSE),
    /v1/load_lora_adapter, /v1/unload_lora_adapter, /v1/routes, /health. Clients pick an adapter
    with `model`: the adapter's name (or the base's, or a route's). See docs/serving.md.

    \b
    Examples:
      lorafit serve --model smollm2-135m --adapter sql=runs/wikisql/adapter --adapter e2e=runs/e2e/adapter
      lorafit serve -m smollm2-135m -a v1=runs/a/adapter -a v2=runs/b/adapter --route chat=v1:90,v2:10
      lorafit serve -m smollm2-135m --allow-adapter-loading --adapter-root runs   # key in LORAFIT_API_KEY

    \b
    Then, for instance:
      curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
           -d '{"model": "sql", "prompt": "question: ...", "max_tokens": 32, "temperature": 0}'
    """
    from lorafit.workflows.generate import parse_adapter_args
    from lorafit.workflows.serve import ServeOptions, run_serve

    run_serve(ServeOptions(model, parse_adapter_args(adapter), name, host, port, max_batch, max_queue, max_rank, api_key,
                           adapter_root, allow_adapter_loading, list(route), route_seed),
              info=lambda line: typer.echo(line, err=True))


def main() -> None:
    """Console-script entry point: where lorafit starts work, so process-wide settings go here, not
    in `import lorafit` (fast/memory.py: oneDNN reads its cache size once, before its first matmul)."""
    from lorafit.fast.memory import limit_onednn_primitive_cache

    limit_onednn_primitive_cache()
    app()

