"""docs/sweeps.md: SST-2 on MiniLM-L6, LoRA rank 1,2,4,8,16 x 3 learning rates, the full grid against
the same grid with median pruning: the best setting each finds and the compute each used.

Both sweeps are real `lorafit sweep` processes on the shipped recipe (recipes/sst2-minilm.yaml) with
--set items that shrink it to CPU-bench size (fewer training examples and steps, shorter sequences,
a smaller validation set: the defaults below; say which in the doc). Compute is counted two ways:
optimizer steps over all trials (deterministic), and the CPU seconds of the sweep process and its
children (getrusage: what a contended machine's wall clock hides).

    .venv/bin/python bench/sweep_sst2.py                    # ~10 min at 1 thread on a 2-core box
    .venv/bin/python bench/sweep_sst2.py --steps 300 --train-examples 4800 --valid 872   # larger
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import OUT_DIR, REPO, command_line, load_average, machine, versions  # noqa: E402


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sweep(out: Path, args: argparse.Namespace, prune: str) -> dict:
    """One `lorafit sweep` process; its sweep.json plus the CPU seconds and wall seconds it took."""
    if out.exists():
        shutil.rmtree(out)
    command = [
        sys.executable, "-m", "lorafit", "sweep", str(REPO / "recipes" / "sst2-minilm.yaml"), "-o", str(out),
        "--grid", f"lora.rank={args.ranks}", "--grid", f"train.lr={args.lrs}", "--prune", prune,
        "--prune-startup", str(args.prune_startup), "--quiet",
        "--set", f"data.max_train_examples={args.train_examples}", "--set", f"data.max_valid_examples={args.valid}",
        "--set", f"data.max_length={args.max_length}", "--set", f"train.max_steps={args.steps}",
        "--set", f"train.batch_size={args.batch_size}", "--set", f"train.eval_every={args.eval_every}",
        "--set", f"train.warmup_steps={args.steps // 10}", "--set", "train.log_every=1000",
        "--set", "eval.at_end=false", "--set", "log.plot=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cpu0, wall0 = cpu_seconds_of_children(), time.perf_counter()
    subprocess.run(command, check=True, env=env)
    data = json.loads((out / "sweep.json").read_text())
    data["cpu_seconds"] = round(cpu_seconds_of_children() - cpu0, 1)
    data["wall_seconds"] = round(time.perf_counter() - wall0, 1)
    data["command"] = " ".join(command[1:])
    return data


def describe(name: str, data: dict) -> str:
    best = data["best"]
    states = ", ".join(f"{n} {s}" for s, n in data["compute"]["by_state"].items())
    return (f"{name:7s} best rank={best['params']['lora.rank']} lr={best['params']['train.lr']:g} "
            f"valid_loss {best['objective']:.4f} | {data['compute']['steps']} steps, {data['cpu_seconds']:.0f} CPU s, "
            f"{data['wall_seconds']:.0f} wall s | {states}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2,4,8,16")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--train-examples", type=int, default=480)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--valid", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--prune", default="median")
    parser.add_argument("--prune-startup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "sweep_sst2")
    args = parser.parse_args()

    print(f"command: {command_line()}")
    print(f"machine: {json.dumps(machine())}")
    print(f"versions: {json.dumps(versions())}")
    print(f"load average at start: {load_average():.2f} (1 torch thread per process; other jobs share the machine)")
    full = run_sweep(args.out / "full", args, "none")
    pruned = run_sweep(args.out / f"pruned-{args.prune}", args, args.prune)
    print(describe("full", full))
    print(describe(args.prune, pruned))
    saved_steps = 1 - pruned["compute"]["steps"] / full["compute"]["steps"]
    saved_cpu = 1 - pruned["cpu_seconds"] / full["cpu_seconds"]
    same = full["best"]["params"] == pruned["best"]["params"]
    gap = pruned["best"]["objective"] - full["best"]["objective"]
    print(f"pruning saved {saved_steps:.0%} of the optimizer steps and {saved_cpu:.0%} of the CPU seconds; "
          f"best setting {'the same' if same else 'different'} (valid_loss {gap:+.4f} vs the full grid)")
    print(f"load average at end: {load_average():.2f}")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(), "versions": versions(),
              "full": full, "pruned": pruned, "saved_steps": saved_steps, "saved_cpu": saved_cpu, "same_best": same}
    (args.out / "sweep_sst2.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out / 'sweep_sst2.json'}")


if __name__ == "__main__":
    main()
