"""`lorafit eval`, `lorafit merge`, `lorafit analyze`: what a trained adapter does, merged, and learned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorafit.commands.app import JsonOpt, QuietOpt, app, cli_command
from lorafit.console import Reporter


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


@app.command()
@cli_command
def analyze(
    target: Annotated[str, typer.Argument(help="Adapter directory or run directory.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (alias, path or HF id): adds the amplification factor ||ΔW||_F / ||Uᵀ W V||_F.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory for analysis.json, PNGs and the truncated adapter.")] = None,
    compare: Annotated[str | None, typer.Option("--compare", help="A second adapter or run: subspace similarity phi per shared layer.")] = None,
    truncate_rank: Annotated[int | None, typer.Option("--truncate-rank", min=1, help="Write the best rank-K adapter to OUTPUT/adapter-rK (needs -o).")] = None,
    side: Annotated[str, typer.Option("--side", help="phi on A's right-singular vectors (input, as the paper) or B's left (output).")] = "input",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """What an adapter learned (LoRA paper, section 7): spectrum and effective rank of every ΔW, norms
    by target and depth, advice on the rank; optionally amplification, similarity and truncation.

    \b
    Examples:
      lorafit analyze runs/sst2                              tables: by target, by depth, advice
      lorafit analyze runs/e2e-r64 --compare runs/e2e-r8 -o analysis/   + phi heatmaps (Fig. 3)
      lorafit analyze runs/e2e-r4 --model smollm2-135m       + amplification factor (Table 7)
      lorafit analyze runs/sst2 --truncate-rank 2 -o cut/    rank-2 adapter in cut/adapter-r2
      lorafit eval cut/adapter-r2 --task glue/sst2           what the cut costs
    """
    from lorafit.analysis.report import report_tables
    from lorafit.workflows.analyze import run_analyze

    reporter = Reporter(quiet, json_out)
    result = run_analyze(target, model=model, output_dir=output, compare=compare, truncate_rank=truncate_rank, side=side)
    for title, columns, rows in report_tables(result):
        reporter.table(title, columns, rows)
    for line in result["advice"]["lines"]:
        reporter.info(line)
    for path in result.get("files", []):
        reporter.info(f"wrote {path}")
    reporter.summary(result)
