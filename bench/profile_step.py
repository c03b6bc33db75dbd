"""Where a lorafit training step's time goes, and the best share of the matmul peak it could reach.

    .venv/bin/python bench/profile_step.py                       # E2E and SST-2, fp32 and bf16: ~6 minutes
    .venv/bin/python bench/profile_step.py --tasks e2e --precisions bf16

Trains the task's shipped recipe exactly as bench_train's lorafit side does (same data, `batching:
auto`), first `--warmup` steps untimed, then `--timed` steps timed without the profiler, then
`--profiled` steps under torch.profiler. Each op's own (self) time is put in one category:

  matmul     mm, addmm, bmm, ... (the frozen layers, LoRA's thin matmuls, the output head)
  attention  the SDPA kernels (flash / math) and their backward
  random     dropout masks' draws (random_, bernoulli_, ...)
  other ops  everything else torch ran: elementwise work, norms, softmax, copies, the optimizer
  no op      time inside no op: Python, module calls, the autograd engine's bookkeeping

and from the FLOP count of bench_train (`benchlib.step_flops`, real tokens only) and the matmul peak
measured at the start:

  achieved  useful FLOPs / step seconds / peak                  (the timed, unprofiled steps)
  ceiling   (FLOPs / peak) / (FLOPs / peak + rest seconds)      rest = step seconds - matmul and attention
                                                                seconds, everything but the counted work

The ceiling is the share the step would reach if every counted FLOP (matmuls and attention) ran at the
measured peak while the rest took the time it takes now: no matmul kernel can lift the step above it,
only less non-matmul work can. The profiler slows the small ops it records, so only the large ops' time
is taken from the profiled steps (matmul and attention seconds per counted FLOP, which the profiler
barely changes); the rest is the unprofiled step time minus that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import sides  # noqa: E402  (the harness; sets HF_HUB_OFFLINE and the data directory, like every bench)

CATEGORIES = ("matmul", "attention", "random", "other ops", "no op")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addbmm",
              "aten::_mkldnn_matmul", "aten::mkldnn_linear"}
RANDOM_OPS = {"aten::random_", "aten::bernoulli_", "aten::uniform_", "aten::normal_", "aten::native_dropout"}
COUNTED = ("matmul", "attention")  # the work benchlib.step_flops counts


def category(op_name: str) -> str:
    """The category of a profiler event by its name (an aten op, or a Python/record_function range)."""
    if op_name in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in op_name or "flash_attention" in op_name:
        return "attention"
    if op_name in RANDOM_OPS:
        return "random"
    if op_name.startswith("aten::"):
        return "other ops"
    return "no op"  # a range, not an op: autograd::engine::evaluate_function: ..., Optimizer.step..., HeadCrossEntropy


def profile_task(task_name: str, precision: str, warmup: int, timed: int, profiled: int) -> dict:
    """Train warmup + timed + profiled steps; the seconds of the timed steps and per-category op seconds
    of the profiled ones, with each group's batch statistics."""
    from torch.profiler import ProfilerActivity, profile

    from lorafit.data.batches import resolve_batching
    from lorafit.models.loader import load_for_training
    from lorafit.train.loop import fit
    from lorafit.train.setup import load_task, loss_function, prepare_data

    steps = warmup + timed + profiled
    spec = {"task": task_name, "steps": steps, "examples": steps * sides.task_batch_size(task_name),
            "precision": precision}
    recipe = sides.recipe_for(spec)
    task = load_task(recipe)
    prepared = load_for_training(recipe, task.num_labels)
    train, _, _ = prepare_data(recipe, task, prepared.tokenizer)
    inner = loss_function(task)
    stats: list[dict] = []
    clock: list[float] = []
    profiler = profile(activities=[ProfilerActivity.CPU])

    def loss_fn(model, batch):
        if model.training:
            stats.append(benchlib.batch_stats(batch))
        return inner(model, batch)

    def on_step(state, snapshot):
        clock.append(time.perf_counter())
        if len(clock) == warmup + timed:
            profiler.start()  # profiles the steps after the timed ones

    fit(prepared.model, train, [], recipe.train, seed=recipe.seed, precision=recipe.precision, loss_fn=loss_fn,
        pad_id=prepared.tokenizer.pad_token_id, on_step=on_step)
    profiler.stop()

    fm = benchlib.flop_model(prepared.model)
    generation = task.kind == "generation"

    def flops(group: list[dict]) -> float:
        return sum(benchlib.step_flops(fm, s["real"], s["sum_len_sq"], s["targets"] if generation else 0) for s in group)

    by_category = dict.fromkeys(CATEGORIES, 0.0)
    by_op: dict[str, float] = {}
    for event in profiler.key_averages():
        kind = category(event.key)
        if kind != "no op":  # ranges' self time is part of the wall time not spent in ops, counted below
            by_category[kind] += event.self_cpu_time_total / 1e6
            by_op[event.key] = event.self_cpu_time_total / 1e6
    profiled_seconds = clock[steps - 1] - clock[warmup + timed - 1]
    by_category["no op"] = profiled_seconds - sum(by_category.values())
    return {
        "timed_seconds": clock[warmup + timed - 1] - clock[warmup - 1],
        "timed_flops": flops(stats[warmup : warmup + timed]),
        "timed_real_tokens": sum(s["real"] for s in stats[warmup : warmup + timed]),
        "profiled_flops": flops(stats[warmup + timed : steps]),
        "profiled_seconds": profiled_seconds,
        "by_category_s": by_category,
        "top_other_ops_s": dict(sorted(((k, v) for k, v in by_op.items() if category(k) == "other ops"),
                                       key=lambda kv: -kv[1])[:8]),
        "timed": timed,
        "profiled": profiled,
        "batching": resolve_batching(recipe.train.batching, task.kind),
    }


def analyse(run: dict, peak_gflops: float) -> dict:
    """achieved and ceiling shares of the peak (module docstring), and the categories' shares."""
    peak = peak_gflops * 1e9
    step_s = run["timed_seconds"] / run["timed"]
    flops = run["timed_flops"] / run["timed"]
    counted_s_per_flop = sum(run["by_category_s"][c] for c in COUNTED) / run["profiled_flops"]
    counted_s = counted_s_per_flop * flops  # the timed steps' matmul + attention seconds, estimated
    rest_s = step_s - counted_s
    ideal_s = flops / peak  # the counted FLOPs at the peak
    return {
        "step_s": step_s,
        "useful_gflops": flops / step_s / 1e9,
        "achieved": flops / step_s / peak,
        "counted_work_efficiency": ideal_s / counted_s,  # how fast the matmuls + attention themselves ran
        "rest_s": rest_s,
        "ceiling": ideal_s / (ideal_s + rest_s),
        "shares": {c: s / run["profiled_seconds"] for c, s in run["by_category_s"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="e2e,sst2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timed", type=int, help="timed steps (default: 12 for E2E, 60 for SST-2)")
    parser.add_argument("--profiled", type=int, help="profiled steps (default: 6 for E2E, 30 for SST-2)")
    parser.add_argument("--max-wait", type=float, default=900, help="seconds to wait for a quiet machine before each run")
    args = parser.parse_args()

    info = benchlib.header("lorafit training step: where the time goes")
    peak = benchlib.matmul_peak()
    print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v['peak_gflops']:.0f}" for k, v in peak.items()))
    print("counted FLOPs: benchlib.step_flops (real tokens; matmuls and attention); ceiling: if those ran at the peak\n")
    results: dict = {"info": info, "matmul_peak": peak, "runs": {}}
    print(f"{'run':12s} {'batching':8s} {'s/step':>7s} {'GFLOP/s':>8s} {'achieved':>8s} {'ceiling':>8s} {'mm+attn eff':>11s}   "
          + "  ".join(f"{c:>9s}" for c in CATEGORIES) + "   (share of profiled time)")
    for task_name in args.tasks.split(","):
        timed = args.timed or (12 if task_name == "e2e" else 60)
        profiled = args.profiled or (6 if task_name == "e2e" else 30)
        for precision in args.precisions.split(","):
            benchlib.wait_quiet(args.max_wait)
            with benchlib.Contention() as contention:
                run = profile_task(task_name, precision, args.warmup, timed, profiled)
            run["others_cpu_share"] = contention.share
            run.update(analyse(run, peak[precision]["peak_gflops"]))
            results["runs"][f"{task_name}/{precision}"] = run
            print(f"{task_name + '/' + precision:12s} {run['batching']:8s} {run['step_s']:7.3f} {run['useful_gflops']:8.0f} "
                  f"{run['achieved']:8.0%} {run['ceiling']:8.0%} {run['counted_work_efficiency']:11.0%}   "
                  + "  ".join(f"{run['shares'][c]:9.1%}" for c in CATEGORIES)
                  + f"   (others' CPU {contention.share:.0%})", flush=True)
            top = ", ".join(f"{k.removeprefix('aten::')} {1e3 * v / profiled:.1f}" for k, v in run["top_other_ops_s"].items())
            print(f"{'':12s} largest other ops, ms/step: {top}", flush=True)
    results["median_others_cpu_share"] = statistics.median(r["others_cpu_share"] for r in results["runs"].values())
    benchlib.write_json("profile_step", results)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
