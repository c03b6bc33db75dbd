"""fp32 vs bf16 autocast in lorafit on longer runs: speed and what bf16 does to the loss.

    .venv/bin/python bench/bench_precision.py          # ~30 minutes on 2 cores
    .venv/bin/python bench/bench_precision.py --quick

The shipped E2E and SST-2 recipes (shortened: E2E 250 steps = 2,000 examples, SST-2 1,000 steps =
32,000 examples), once in fp32 and once in bf16, each in its own subprocess. Batch order, LoRA init and
dropout draws depend only on the seed, so both precisions train on the very same batches and the
per-step training losses can be compared pair by pair. Reported: real tokens/s, the final training
loss (mean of the last 20 steps), the held-out loss of the final weights (fp32, eval mode; E2E: 200
dev examples, SST-2: the 872 dev sentences, with accuracy) and the mean per-step loss difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import sides  # noqa: E402

RUNS = {"e2e": {"steps": 250, "batch": 8, "eval": 200}, "sst2": {"steps": 1000, "batch": 32, "eval": 872}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", default="e2e,sst2")
    parser.add_argument("--max-wait", type=float, default=900)
    args = parser.parse_args()
    info = benchlib.header("lorafit: fp32 vs bf16 autocast on longer runs")
    out = {"info": info, "runs": {}}
    for task in args.tasks.split(","):
        cfg = RUNS[task]
        steps = 10 if args.quick else cfg["steps"]
        spec = {
            "task": task, "side": "lorafit", "steps": steps, "warmup": 2 if args.quick else 5,
            "window": 5 if args.quick else 20, "examples": steps * cfg["batch"], "eval": 32 if args.quick else cfg["eval"],
            "kind": "generation" if task == "e2e" else "classification",
        }
        print(f"\n## {sides.TASKS[task]['label']}: {steps} steps, {steps * cfg['batch']} examples", flush=True)
        runs = {}
        for precision in ("fp32", "bf16"):
            benchlib.wait_quiet(args.max_wait)
            with benchlib.Contention() as contention:
                r = sides.run_child({**spec, "precision": precision})
            if "error" in r:
                print(f"  {precision}: ERROR {r['error']}\n{r['stderr_tail']}")
                continue
            r["others_cpu_share"] = contention.share
            runs[precision] = r
            acc = f", held-out accuracy {r['heldout_accuracy']:.4f}" if "heldout_accuracy" in r else ""
            flag = f"  CONTENDED ({100 * contention.share:.0f}% CPU used by others)" if contention.share > 0.03 else ""
            print(f"  {precision}: {r['real_tokens_per_s']:.0f} real tokens/s, {r['s_per_step']:.3f} s/step, "
                  f"final train loss {r['final_train_loss']:.4f}, held-out loss {r['heldout_loss']:.4f}{acc}, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB{flag}", flush=True)
        if len(runs) == 2:
            a, b = runs["fp32"]["losses"], runs["bf16"]["losses"]
            diffs = [y - x for x, y in zip(a, b, strict=True)]
            summary = {
                "speed_bf16_over_fp32": runs["bf16"]["real_tokens_per_s"] / runs["fp32"]["real_tokens_per_s"],
                "heldout_loss_diff": runs["bf16"]["heldout_loss"] - runs["fp32"]["heldout_loss"],
                "train_loss_diff": runs["bf16"]["final_train_loss"] - runs["fp32"]["final_train_loss"],
                "mean_step_loss_diff": statistics.fmean(diffs),
                "mean_abs_step_loss_diff": statistics.fmean(abs(d) for d in diffs),
            }
            if "heldout_accuracy" in runs["fp32"]:
                summary["heldout_accuracy_diff"] = runs["bf16"]["heldout_accuracy"] - runs["fp32"]["heldout_accuracy"]
            runs["summary"] = summary
            print("  bf16 vs fp32: " + ", ".join(f"{k} {v:+.4f}" for k, v in summary.items()))
        out["runs"][task] = runs
    benchlib.write_json("bench_precision-quick" if args.quick else "bench_precision", out)


if __name__ == "__main__":
    main()
