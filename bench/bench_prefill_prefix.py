"""Prefill of prompts that share a prefix: `DecodeBatch.add` with and without `share_prefixes`.

SmolLM2-135M with 8 adapters (as bench_multi_adapter.py), 64 prompts spread over them (8 per adapter):
bench_multi_adapter.py's pet-listing prompts (an 11-token instruction in common), preceded by a
system prompt of 0, about half, and all --system-tokens tokens. Times one `add` (the prefill of all 64
prompts and their first token) with prefix sharing on and off, alternating, best of --rounds.

    OMP_NUM_THREADS=1 python bench/bench_prefill_prefix.py --threads 1 [--precision fp32]

Prints machine, versions and the command, then the table. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from bench_multi_adapter import prompts, write_bench_adapters  # noqa: E402

from lorafit.adapters.decode import DecodeBatch, Request  # noqa: E402
from lorafit.adapters.host import AdapterHost  # noqa: E402
from lorafit.models import load_base, resolve_model  # noqa: E402

SYSTEM = "You are a helpful assistant that writes short, friendly listings for pets waiting for a home."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--system-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = benchlib.header(f"prefill of 64 prompts over 8 adapters with a shared prefix, {args.precision}")

    base, tok = load_base(resolve_model("smollm2-135m"))
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_bench_adapters(base, Path(tmp), 8)
        host = AdapterHost(base, tok, causal=True, precision=args.precision, pack_weights=True)
        for name, directory in dirs.items():
            host.load_adapter(name, directory)
    names = list(dirs)
    _, slots = host.slots_for([names[i % 8] for i in range(64)], 64)
    system = tok(" ".join([SYSTEM] * (1 + args.system_tokens // 16)))["input_ids"][: args.system_tokens]
    rows = []
    for extra in (0, len(system) // 2, len(system)):
        encoded = [system[:extra] + tok(t)["input_ids"] for t in prompts(64)]
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.rounds):
            for share in (True, False):
                batch = DecodeBatch(host.model, host.routing, [], tok.pad_token_id, share_prefixes=share)
                start = time.perf_counter()
                batch.add([Request(e, int(s), 4) for e, s in zip(encoded, slots.tolist(), strict=True)])
                best[share] = min(best[share], time.perf_counter() - start)
        tokens = sum(map(len, encoded))
        rows.append({"common_prefix_tokens": 11 + extra, "prompt_tokens": tokens, "shared_s": best[True],
                     "unshared_s": best[False]})
    print("\n| common prefix (tokens) | prompt tokens | prefill, shared | prefill, not shared | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['common_prefix_tokens']} | {r['prompt_tokens']} | {r['shared_s']:.2f} s | {r['unshared_s']:.2f} s | "
              f"{r['unshared_s'] / r['shared_s']:.2f}x |")
    benchlib.write_json("bench_prefill_prefix", info | {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
