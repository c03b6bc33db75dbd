"""`lorafit generate` and `lorafit serve`: many adapters on one base, from a file or over HTTP."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from lorafit.commands.app import JsonOpt, QuietOpt, app, cli_command
from lorafit.console import Reporter


def _precision_choice(value: str) -> str:
    if value not in ("fp32", "bf16", "auto"):
        raise typer.BadParameter(f"{value!r} is not one of fp32, bf16, auto")
    return value


@app.command()
@cli_command
def generate(
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: alias, local dir or HF id.")],
    input_file: Annotated[Path, typer.Option("--input", "-i", help="requests.jsonl: one {\"prompt\", \"adapter\", ...} object per line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="results.jsonl, in input order.")],
    adapter: Annotated[list[str], typer.Option("--adapter", "-a", help="NAME=DIR (an adapter or run directory); repeat for more adapters.")] = [],  # noqa: B006
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Default for rows without max_new_tokens.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Default for rows without temperature (0: greedy).")] = 0.0,
    stop: Annotated[list[str], typer.Option("--stop", help="Default stop string for rows without stop (repeatable, up to 4).")] = [],  # noqa: B006
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    max_rank: Annotated[int, typer.Option("--max-rank", min=1, help="Refuse adapters of higher rank.")] = 64,
    precision: Annotated[str, typer.Option("--precision", callback=_precision_choice, help="fp32, bf16, or auto: bf16 where the CPU/GPU multiplies bf16 natively (AVX512-BF16, AMX), else fp32.")] = "auto",
    pack_weights: Annotated[bool, typer.Option("--pack-weights/--no-pack-weights", help="Reorder the base's frozen weights once for oneDNN (CPU; faster; fp32 results differ from plain matmuls in the last bits).")] = True,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate for many prompts, each with its own adapter (or none), in mixed batches on one base.

    Each input line: {"prompt": ...} or {"messages": [{"role", "content"}, ...]} (the chat template),
    "adapter": NAME or null, optional "max_new_tokens", "temperature", "top_p", "seed", "stop", "id";
    greedy unless a temperature is given. Results come back in input order with the adapter used and
    token counts (docs/adapters.md). --adapter takes an adapter or a run directory.

    \b
    Examples:
      lorafit generate --model smollm2-135m --adapter sql=runs/wikisql/adapter --input requests.jsonl --output results.jsonl
      lorafit generate -m smollm2-135m -a e2e=runs/e2e/adapter -a sql=runs/sql/adapter -i in.jsonl -o out.jsonl --json
    """
    from lorafit.workflows.generate import parse_adapter_args, run_generate

    adapters = parse_adapter_args(adapter)
    reporter = Reporter(quiet, json_out)
    with contextlib.ExitStack() as stack:
        bar = {}

        def on_start(total: int) -> None:
            bar["handle"] = stack.enter_context(reporter.progress("generate", total))

        result = run_generate(
            model, adapters, input_file, output, max_new_tokens=max_new_tokens, temperature=temperature,
            stop=tuple(stop), batch_size=batch_size,
            max_rank=max_rank, precision=precision, pack_weights=pack_weights, on_start=on_start, progress=lambda n: bar["handle"].advance(n),
        )
    reporter.info(f"{result['requests']} completions ({result['completion_tokens']} tokens, "
                  f"{result['tokens_per_s']} tokens/s, {result['precision']}) -> {result['output']}")
    reporter.summary(result)


@app.command()
@cli_command
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: alias, local directory or HF id.")],
    adapter: Annotated[list[str], typer.Option("--adapter", "-a", help="NAME=DIR: serve the adapter (or run directory) DIR as model NAME (repeatable).")] = [],  # noqa: B006
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
    precision: Annotated[str, typer.Option("--precision", callback=_precision_choice, help="fp32, bf16, or auto: bf16 where the CPU/GPU multiplies bf16 natively (AVX512-BF16, AMX), else fp32.")] = "auto",
    pack_weights: Annotated[bool, typer.Option("--pack-weights/--no-pack-weights", help="Reorder the base's frozen weights once for oneDNN (CPU; faster; fp32 results differ from plain matmuls in the last bits).")] = True,
    max_adapters: Annotated[int, typer.Option("--max-adapters", min=1, help="Most adapters offered at once (loading more over HTTP: 400).")] = 64,
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", min=1, help="Most tokens of prompt + max_tokens per request (default: the model's context).")] = None,
    max_request_bytes: Annotated[int, typer.Option("--max-request-bytes", min=1, help="Largest request body; beyond it: 413.")] = 1 << 20,
    request_timeout: Annotated[float, typer.Option("--request-timeout", min=0.001, help="Seconds a request may take, waiting included; beyond: 504 (or an error event on a stream).")] = 600.0,
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

    opts = ServeOptions(model=model, adapters=parse_adapter_args(adapter), name=name, host=host, port=port,
                        max_batch=max_batch, max_queue=max_queue, max_rank=max_rank, api_key=api_key,
                        adapter_root=adapter_root, allow_adapter_loading=allow_adapter_loading, routes=list(route),
                        route_seed=route_seed, precision=precision, pack_weights=pack_weights,
                        max_adapters=max_adapters, max_model_len=max_model_len, max_request_bytes=max_request_bytes,
                        request_timeout=request_timeout)
    run_serve(opts, info=lambda line: typer.echo(line, err=True))
