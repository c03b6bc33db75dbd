"""`lorafit serve` under load, against batching off and a hand-written FastAPI + PEFT server.

Base SmolLM2-135M (`smollm2-135m`) with 8 adapters (ranks 4/8/16/8 on q/k/v/o, random A and random
NON-ZERO B: untrained, so every adapter changes the output and costs its full compute). An async
load generator (httpx) sends --requests streaming completions (greedy, --new-tokens max, stopping
at eos; prompt i on adapter i % 8) with at most C in flight, for each C in --concurrency, to:

    lorafit serve                 continuous batching, --max-batch 32 (base weights oneDNN-packed, the default)
    lorafit serve --no-pack-weights   the same with plain nn.Linear weights (system lorafit-plain)
    lorafit serve --max-batch 1   the same server, batching off
    PEFT baseline                 bench/peft_baseline_server.py: FastAPI + PEFT, set_adapter, one at a time

and reports generated tokens/s (completion tokens from each stream's usage / wall time), time to first
token and latency (p50 / p95). Each server runs alone on 127.0.0.1, after a warm-up request.

    python bench/bench_serve.py --requests 32 --concurrency 16 --new-tokens 32 --threads 2 \
        [--systems lorafit:fp32,lorafit:bf16,lorafit-batch1:fp32,peft:fp32,peft:bf16]

    # this tree against an older one (e.g. `git archive COMMIT | tar -x -C /tmp/before`), in one run:
    python bench/bench_serve.py --systems lorafit-before:fp32,lorafit:fp32 --before-source /tmp/before

Prints machine, CPU flags, versions and the command, then the table; writes bench/out/bench_serve.json.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
from benchlib import OUT_DIR, busy_processes, command_line, load_average, machine, versions  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapters(work: Path, count: int) -> tuple[str, dict[str, Path]]:
    from bench_multi_adapter import write_bench_adapters

    from lorafit.models import load_base, resolve_model

    ref = resolve_model("smollm2-135m")
    base, _ = load_base(ref)
    return ref.path_or_id, write_bench_adapters(base, work, count)


def start_server(cmd: list[str], port: int, threads: int, log: Path, timeout: float = 300,
                 source: Path = HERE.parent) -> subprocess.Popen:
    """Start `cmd` with lorafit imported from `source` (this tree by default) and wait for /health."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(source))
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=source)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {log.read_text()[-1500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} not ready after {timeout}s")


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, new_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens}


async def load(url: str, prompts: list[str], models: list[str], concurrency: int, new_tokens: int) -> dict:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await one(client, url, models[0], prompts[0], 4)  # warm-up

        async def gated(i):
            async with gate:
                return await one(client, url, models[i % len(models)], prompts[i], new_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*[gated(i) for i in range(len(prompts))])
        wall = time.perf_counter() - start
    return {"wall_s": wall, "results": results}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def summarize(system: str, concurrency: int, run: dict) -> dict:
    res = run["results"]
    tokens = sum(r["tokens"] for r in res)
    return {"system": system, "concurrency": concurrency, "requests": len(res), "tokens": tokens,
            "wall_s": round(run["wall_s"], 2), "tokens_per_s": round(tokens / run["wall_s"], 1),
            "ttft_p50_ms": round(pct([r["ttft"] for r in res], 50) * 1000),
            "ttft_p95_ms": round(pct([r["ttft"] for r in res], 95) * 1000),
            "latency_p50_ms": round(pct([r["latency"] for r in res], 50) * 1000),
            "latency_p95_ms": round(pct([r["latency"] for r in res], 95) * 1000)}


def engine_time(before: dict, after: dict) -> dict:
    """lorafit's engine counters over one level (from /health; the warm-up request included): seconds in
    decode steps and in prefills, and the mean rows per step. Empty for a server without them."""
    if "step_s" not in after:
        return {}
    delta = {k: after[k] - before.get(k, 0) for k in ("steps", "step_rows", "step_s", "prefills", "prefill_s")}
    return {"engine_step_s": round(delta["step_s"], 1), "engine_prefill_s": round(delta["prefill_s"], 1),
            "prefills": delta["prefills"], "rows_per_step": round(delta["step_rows"] / max(1, delta["steps"]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", default="16", help="comma-separated client counts, e.g. 1,4,16")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    parser.add_argument("--systems", default="lorafit:fp32,lorafit-batch1:fp32,peft:fp32",
                        help="SYSTEM:PRECISION,...; systems lorafit, lorafit-plain, lorafit-batch1, lorafit-before, peft, "
                             "peft-main; precision fp32 or bf16 (the base weights; adapters stay fp32 in both servers)")
    parser.add_argument("--before-source", type=Path, help="a lorafit source tree for system lorafit-before "
                                                             "(the same `lorafit serve` command, that tree's code)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from bench_multi_adapter import prompts as make_prompts

    info = {"machine": machine(), "versions": versions(), "command": command_line(), "load_average": load_average(),
            "busy_processes": len(busy_processes())}
    print(json.dumps(info, indent=1))
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    model_path, dirs = make_adapters(work, args.adapters)
    texts = make_prompts(args.requests)
    models = list(dirs)
    adapter_args = [a for name, d in dirs.items() for a in ("--adapter", f"{name}={d}")]
    servers = {
        "lorafit": ("lorafit serve (max-batch 32)", [sys.executable, "-m", "lorafit", "serve", "--model", "smollm2-135m",
                                                     "--max-batch", "32", *adapter_args]),
        "lorafit-before": (f"lorafit serve (max-batch 32) from {args.before_source}",
                           [sys.executable, "-m", "lorafit", "serve", "--model", "smollm2-135m", "--max-batch", "32",
                            *adapter_args]),
        "lorafit-plain": ("lorafit serve (max-batch 32, --no-pack-weights)",
                          [sys.executable, "-m", "lorafit", "serve", "--model", "smollm2-135m", "--max-batch", "32",
                           "--no-pack-weights", *adapter_args]),
        "lorafit-batch1": ("lorafit serve --max-batch 1", [sys.executable, "-m", "lorafit", "serve", "--model",
                                                           "smollm2-135m", "--max-batch", "1", *adapter_args]),
        "peft": ("PEFT baseline (one at a time)", [sys.executable, str(HERE / "peft_baseline_server.py"), "--model",
                                                   model_path, *adapter_args]),
        "peft-main": ("PEFT baseline (one at a time, generate on the main thread)",
                      [sys.executable, str(HERE / "peft_baseline_server.py"), "--model", model_path, *adapter_args,
                       "--generate-on", "main"]),
    }
    rows = []
    for spec in args.systems.split(","):
        key, _, precision = spec.partition(":")
        precision = precision or "fp32"
        name, cmd = servers[key]
        system = f"{name}, {precision}"
        cmd = [*cmd, "--dtype" if key.startswith("peft") else "--precision", precision]
        port = free_port()
        source = args.before_source if key == "lorafit-before" else HERE.parent
        if source is None:
            raise SystemExit("system lorafit-before needs --before-source DIR")
        proc = start_server([*cmd, "--port", str(port)], port, args.threads, work / f"{key}-{precision}.log",
                            source=source.resolve())
        try:
            for c in levels:
                before = httpx.get(f"http://127.0.0.1:{port}/health").json()
                row = summarize(system, c, asyncio.run(load(f"http://127.0.0.1:{port}", texts, models, c,
                                                            args.new_tokens)))
                row |= engine_time(before, httpx.get(f"http://127.0.0.1:{port}/health").json())
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    columns = ["system", "concurrency", "requests", "tokens", "wall_s", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms",
               "latency_p50_ms", "latency_p95_ms", "engine_step_s", "engine_prefill_s", "prefills", "rows_per_step"]
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "bench_serve.json").write_text(json.dumps(info | {"rows": rows, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
