"""Multi-process training on one CPU machine: 1 process x T threads vs P processes x T/P threads.

    .venv/bin/python bench/bench_distributed.py                      # 2 cores: 1 x 2 threads vs 2 x 1 thread
    .venv/bin/python bench/bench_distributed.py --sides 1x16 2x8 4x4 --steps 30
    .venv/bin/python bench/bench_distributed.py --sides 1x1          # one more row: 1 process, 1 thread

Each side is a real `lorafit train` of the shipped e2e-smollm2 recipe (SmolLM2-135M, LoRA r=4 on q/v,
packed rows) on the same global batch: 1 process with batch B, or P processes with batch B/P each
(torch.distributed.run, gloo). Eval, checkpoints and the plot are off; validation runs only at step 0
and at the end and is not timed. Throughput: real input tokens over wall time between the end of step
`--warmup` and the last step, from each run's metrics.jsonl (rank 0 logs the global count).

Bytes all-reduced per optimizer step: what `Dist.sum_gradients` sends (every trainable parameter's fp32
gradient, one flat buffer in 64 MB buckets) plus the token count and step numbers (5 numbers),
for LoRA and for full fine-tuning of the same model, counted from the loaded model. Results: stdout
and bench/out/bench_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_side(steps: int, batch: int, nproc: int, threads: int, workdir: Path, precision: str) -> dict:  # noqa: PLR0913
    """One `lorafit train` of e2e-smollm2 with `nproc` processes of `threads` threads each."""
    run = workdir / f"run-{nproc}x{threads}"
    args = [sys.executable, "-m", "lorafit", "train", str(REPO / "lorafit/recipes/e2e-smollm2.yaml"), "-o", str(run),
            "--overwrite", "-q", "--set", f"train.max_steps={steps}", "--set", f"train.batch_size={batch // nproc}",
            "--set", "train.log_every=1", "--set", "train.eval_every=0", "--set", "train.warmup_steps=2",
            "--set", "eval.at_end=false", "--set", "log.plot=false", "--set", f"precision={precision}",
            "--set", "data.max_valid_examples=8"]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LORAFIT_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    began = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    return {"processes": nproc, "threads_each": threads, "batch_per_rank": batch // nproc, "steps": len(train),
            "records": train, "wall_s": round(time.perf_counter() - began, 1)}


def throughput(side: dict, warmup: int) -> float:
    a, b = side["records"][warmup - 1], side["records"][-1]
    return (b["tokens_seen"] - a["tokens_seen"]) / (b["elapsed_s"] - a["elapsed_s"])


def all_reduced_bytes() -> dict:
    """Per optimizer step, by what sum_gradients and the loop's numbers send (fp32 gradients)."""
    sys.path.insert(0, str(REPO))
    from lorafit.models.loader import load_for_training
    from lorafit.recipe import load_recipe

    out = {}
    for method in ("lora", "full"):
        recipe = load_recipe(REPO / "lorafit/recipes/e2e-smollm2.yaml", [f"train.method={method}"])
        model = load_for_training(recipe, 0).model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        out[method] = {"trainable_params": trainable, "bytes": 4 * trainable + 4 * len(
            [p for p in model.parameters() if p.requires_grad]) + 8 + 4 * 8}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=8, help="global batch (examples per optimizer step)")
    parser.add_argument("--sides", nargs="+", default=["1x2", "2x1"], help="PROCESSESxTHREADS each; the first is the baseline")
    parser.add_argument("--precision", default="fp32")
    opts = parser.parse_args()
    sides = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in opts.sides:
            nproc, threads = map(int, spec.split("x"))
            side = run_side(opts.steps, opts.batch, nproc, threads, Path(tmp), opts.precision)
            if "error" not in side:
                side["tokens_per_s"] = round(throughput(side, opts.warmup), 1)
                side["final_loss"] = side["records"][-1]["loss"]
                del side["records"]
            sides.append(side)
            print(json.dumps(side), flush=True)
    reduced = all_reduced_bytes()
    base = sides[0].get("tokens_per_s")
    print(f"\nE2E, SmolLM2-135M, LoRA r=4 q/v, global batch {opts.batch}, {opts.steps} steps "
          f"(timed after {opts.warmup}), precision {opts.precision}, {platform.processor() or platform.machine()}")
    print("| processes x threads | batch per rank | tokens/s | vs 1 process | loss at the last step |")
    print("|---|---|---|---|---|")
    for s in sides:
        if "error" in s:
            print(f"| {s.get('processes', '?')} | error: {s['error']} | | | |")
            continue
        ratio = s["tokens_per_s"] / base if base else float("nan")
        print(f"| {s['processes']} x {s['threads_each']} | {s['batch_per_rank']} | {s['tokens_per_s']:.0f} | "
              f"{ratio:.2f} | {s['final_loss']:.4f} |")
    print("\n| fine-tuning | trainable parameters | bytes all-reduced per optimizer step |")
    print("|---|---|---|")
    for method, r in reduced.items():
        print(f"| {method} | {r['trainable_params']:,} | {r['bytes']:,} ({r['bytes'] / 2**20:.1f} MiB) |")
    out = REPO / "bench/out"
    out.mkdir(exist_ok=True)
    (out / f"bench_distributed-{'-'.join(opts.sides)}.json").write_text(json.dumps({"sides": sides, "all_reduced": reduced,
                                                            "options": vars(opts)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
