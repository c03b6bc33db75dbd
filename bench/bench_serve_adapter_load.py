"""Do running streams stall while adapters load? Inter-token gaps of `lorafit serve` streams while 8
adapters are loaded over HTTP, for this tree and (optionally) an older one, in one run.

Base SmolLM2-135M (`smollm2-135m`, fp32). --streams streaming greedy completions of --new-tokens each
run on the base; once every stream has its first token, --adapters adapters (rank --rank on every
linear layer of every block: q/k/v/o/gate/up/down, random non-zero B) are loaded one after another
through /v1/load_lora_adapter. A gap is the time between two consecutive text chunks of one stream
(the tiny-loop overhead of SSE included). Reported: gap p50 / p99 / max over the gaps that ended while
loads were running, the same for the gaps before the first load (the reference), and the loads' time.

    python bench/bench_serve_adapter_load.py --threads 1 [--before-source /tmp/before]
    python bench/bench_serve_adapter_load.py --threads 1 --split-only   # only the in-process split below

First, in-process, the split the server relies on: for each adapter, the time of
`AdapterHost.read_adapter` (read + check: a worker thread now, the decode thread before) and of
`install_adapter` (what still runs between two steps).

(`git archive COMMIT lorafit | tar -x -C /tmp/before` makes an older tree.) Prints machine, CPU
flags, versions and the command; writes bench/out/bench_serve_adapter_load.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
from bench_serve import free_port, pct, start_server  # noqa: E402
from benchlib import OUT_DIR, busy_processes, command_line, load_average, machine, versions  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_adapters(work: Path, count: int, rank: int) -> Path:
    from bench_multi_adapter import write_adapter

    from lorafit.models import load_base, resolve_model

    base, _ = load_base(resolve_model("smollm2-135m"))
    root = work / "adapters"
    for i in range(count):
        write_adapter(base, root / f"load{i}", rank, TARGETS, seed=100 + i, task_type="CAUSAL_LM")
    return root


def read_install_split(root: Path, count: int, threads: int) -> list[dict]:
    """Per adapter: ms to read + check it, ms to install it (in this process, nothing else running)."""
    import torch

    from lorafit.adapters.host import AdapterHost

    torch.set_num_threads(threads)
    host = AdapterHost.load("smollm2-135m", task="generate", precision="fp32")
    rows = []
    for i in range(count):
        start = time.perf_counter()
        parts = host.read_adapter(f"load{i}", root / f"load{i}")
        read = time.perf_counter() - start
        host.install_adapter(f"load{i}", parts, root / f"load{i}")
        rows.append({"adapter": f"load{i}", "read_ms": round(read * 1000), "install_ms": round(
            (time.perf_counter() - start - read) * 1000)})
    return rows


async def stream(client, url, prompt, new_tokens, chunk_times, started):
    body = {"model": "smollm2-135m", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True}
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk_times.append(time.perf_counter())
                if len(chunk_times) == 1:
                    started.release()


async def measure(url: str, count: int, streams: int, new_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        await client.post(url + "/v1/completions", json={"model": "smollm2-135m", "prompt": "warm", "max_tokens": 4})
        times = [[] for _ in range(streams)]
        started = asyncio.Semaphore(0)
        tasks = [asyncio.create_task(stream(client, url, f"Stream {i} tells a long story about", new_tokens, times[i],
                                            started)) for i in range(streams)]
        for _ in range(streams):
            await started.acquire()
        await asyncio.sleep(1.0)  # a reference window of steady decoding
        load_start = time.perf_counter()
        for i in range(count):
            r = await client.post(url + "/v1/load_lora_adapter", json={"lora_name": f"load{i}", "lora_path": f"load{i}"})
            r.raise_for_status()
        load_end = time.perf_counter()
        await asyncio.gather(*tasks)
    during, before = [], []
    for t in times:
        for a, b in zip(t, t[1:], strict=False):
            if load_start <= b <= load_end:
                during.append(b - a)
            elif b < load_start:
                before.append(b - a)
    ms = lambda values, q: round(pct(values, q) * 1000, 1) if values else None  # noqa: E731
    return {"loads_s": round(load_end - load_start, 2), "gaps_during_loads": len(during),
            "gap_p50_ms": ms(during, 50), "gap_p99_ms": ms(during, 99), "gap_max_ms": ms(during, 100),
            "ref_gaps": len(before), "ref_gap_p50_ms": ms(before, 50), "ref_gap_p99_ms": ms(before, 99),
            "complete_streams": sum(len(t) > 0 for t in times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="runs per tree, alternating")
    parser.add_argument("--before-source", type=Path, help="an older lorafit tree to compare with")
    parser.add_argument("--split-only", action="store_true", help="only the in-process read/install split")
    args = parser.parse_args()
    info = {"machine": machine(), "versions": versions(), "command": command_line(), "load_average": load_average(),
            "busy_processes": len(busy_processes())}
    print(json.dumps(info, indent=1))
    work = Path(tempfile.mkdtemp(prefix="bench_load_"))
    root = write_adapters(work, args.adapters, args.rank)
    split = read_install_split(root, args.adapters, args.threads)
    for row in split:
        print(json.dumps(row), flush=True)
    if args.split_only:
        OUT_DIR.mkdir(exist_ok=True)
        (OUT_DIR / "bench_serve_adapter_load.json").write_text(json.dumps(info | {"split": split}, indent=1))
        return
    trees = ([("before", args.before_source.resolve())] if args.before_source else []) + [("this tree", HERE.parent)]
    rows = []
    for repeat in range(args.repeats):
        for label, source in trees:
            port = free_port()
            cmd = [sys.executable, "-m", "lorafit", "serve", "--model", "smollm2-135m", "--precision", "fp32",
                   "--allow-adapter-loading", "--adapter-root", str(root), "--port", str(port)]
            proc = start_server(cmd, port, args.threads, work / f"{label}-{repeat}.log", source=source)
            try:
                row = {"tree": label, "repeat": repeat} | asyncio.run(
                    measure(f"http://127.0.0.1:{port}", args.adapters, args.streams, args.new_tokens))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            rows.append(row)
            print(json.dumps(row), flush=True)
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "bench_serve_adapter_load.json").write_text(json.dumps(info | {"split": split, "rows": rows, "args": vars(args)},
                                                                          indent=1, default=str))


if __name__ == "__main__":
    main()
