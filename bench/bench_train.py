"""Training throughput, memory and loss: lorafit vs PEFT + transformers' Trainer, in one run.

    .venv/bin/python bench/bench_train.py            # the full table (~25 min on 2 cores)
    .venv/bin/python bench/bench_train.py --quick    # a ~3-minute smoke run (numbers not meaningful)
    .venv/bin/python bench/bench_train.py --tasks sst2 --precisions bf16 --steps 1000 --no-ablations
                                                     # a longer paired run: the loss after more examples

For each task (E2E on SmolLM2-135M, SST-2 on MiniLM-L6) and precision (fp32, bf16), each side trains
in its own subprocess (so peak RSS is per side) on the same N examples (lorafit's seeded subsample,
tokenized once by lorafit's encoder so both sides see identical token ids), with the shipped recipe's
LoRA config (rank, alpha, dropout, targets, modules_to_save), lr, weight decay, schedule, clipping,
batch size and seed; steps and warm-up are shortened for the bench and equal on both sides.

- lorafit: `load_for_training` / `prepare_data` / `fit` with the recipe (`batching: auto`: packed E2E rows,
  bucketed SST-2 batches; completion-only head, `precision` autocast).
- PEFT + Trainer: `get_peft_model` + `Trainer` with the collator a user would pick
  (DataCollatorForSeq2Seq(label_pad_token_id=-100) for the causal LM with a masked prompt,
  DataCollatorWithPadding for SST-2), `bf16=True` for bf16, defaults otherwise.

Timed: optimizer steps after the first `warmup` ones (wall clock between step ends). Tokens: real
(non-pad) input tokens = attention_mask sum of the batches those steps trained on. Loss: mean over the
last `window` steps of the per-step loss (per target token on both sides: Trainer's causal-LM loss
averages over non-masked shifted labels), and a held-out loss of the final weights computed by one
function for both sides (fp32, eval mode, full logits), since the two sides see the examples in
different orders. Memory: peak RSS of each side's process, and its resident memory after every step
(`rss_trace_mb`). Experiments (`--bucket-windows`, `--trim-every`, `--variant`) run lorafit again with
one setting changed, every seed. Results go to stdout and bench/out/bench_train-*.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from sides import TASKS, WARMUP, WINDOW, run_child, task_batch_size  # noqa: E402  (the harness: both sides)

# ----------------------------------------------------------------------------------------------- report


def fmt_row(name: str, r: dict, peak: float) -> str:
    if "error" in r:
        return f"  {name:<24} ERROR {r['error']}"
    acc = f"  acc {r['heldout_accuracy']:.3f}" if "heldout_accuracy" in r else ""
    each = r.get("tokens_per_s_each", [])
    spread = f" ({'/'.join(f'{x:.0f}' for x in each)})" if len(each) > 1 else ""
    return (
        f"  {name:<24} {r['real_tokens_per_s']:6.0f} tok/s{spread}  {r['s_per_step']:6.3f} s/step  "
        f"pad {100 * r['pad_share']:4.1f}%  {r['useful_gflops']:6.1f} GFLOP/s ({100 * r['useful_gflops'] / peak:4.1f}% of peak)  "
        f"RSS {r['peak_rss_mb']:6.0f} MB ({r['rss_growth_mb']:+.0f} over the run)  train loss {r['final_train_loss']:.4f}  held-out {r['heldout_loss']:.4f}{acc}"
        + (f"  CONTENDED: others used {100 * r['others_cpu_share']:.0f}% of the CPU" if r.get("others_cpu_share", 0) > 0.03 else "")
    )


def ratios(a: dict, b: dict) -> dict:
    """a relative to b: throughput ratio (higher is better), memory ratio and loss differences."""
    if "error" in a or "error" in b:
        return {}
    return {
        "tokens_per_s": a["real_tokens_per_s"] / b["real_tokens_per_s"],
        "s_per_step": a["s_per_step"] / b["s_per_step"],
        "peak_rss": a["peak_rss_mb"] / b["peak_rss_mb"],
        "train_loss_diff": a["final_train_loss"] - b["final_train_loss"],
        "heldout_loss_diff": a["heldout_loss"] - b["heldout_loss"],
    }


def fmt_ratio(label: str, q: dict) -> str:
    if not q:
        return f"  {label}: n/a"
    return (
        f"  {label}: tokens/s x{q['tokens_per_s']:.2f}, s/step x{q['s_per_step']:.2f}, peak RSS x{q['peak_rss']:.2f}, "
        f"train loss {q['train_loss_diff']:+.4f}, held-out loss {q['heldout_loss_diff']:+.4f}"
    )


def measure(spec: dict, args) -> dict:
    """One child run on a quiet machine; measured again (up to --retries) when others used the CPU."""
    for attempt in range(1 + args.retries):
        benchlib.wait_quiet(args.max_wait)
        with benchlib.Contention() as contention:
            result = run_child(spec)
        result["others_cpu_share"] = contention.share
        result["seed"] = spec.get("seed", 0)
        if contention.share <= 0.03 or "error" in result:
            break
        if attempt < args.retries:
            print(f"  ({spec['side']} seed {spec.get('seed', 0)}: others used {100 * contention.share:.0f}% of the CPU; "
                  "measuring again)", flush=True)
    return result


def combine(runs: list[dict]) -> dict:
    """One side over its repetitions: tokens/s = all timed tokens / all timed seconds, losses averaged
    (each repetition uses another seed: another subsample, LoRA init and order), peak RSS the largest."""
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    seconds = sum(r["seconds"] for r in runs)
    steps = sum(r["timed_steps"] for r in runs)
    out = {
        "repetitions": len(runs),
        "seconds": seconds,
        "s_per_step": seconds / steps,
        "real_tokens_per_s": sum(r["real_tokens"] for r in runs) / seconds,
        "useful_gflops": sum(r["useful_gflops"] * r["seconds"] for r in runs) / seconds,
        "pad_share": 1 - sum(r["real_tokens"] for r in runs) / sum(r["padded_tokens"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "others_cpu_share": max(r["others_cpu_share"] for r in runs),
        "tokens_per_s_each": [r["real_tokens_per_s"] for r in runs],
        "rss_growth_mb": statistics.fmean(r["rss_growth_mb"] for r in runs),
    }
    for key in ("final_train_loss", "heldout_loss", "heldout_accuracy"):
        if key in runs[0]:
            out[key] = statistics.fmean(r[key] for r in runs)
    return out


VARIANT_KEYS = ("batching", "bucket_window", "trim_every", "trim_min_seconds", "pad_multiple", "malloc_mmap_threshold",
                "norm_epoch_mean", "torch_attention_dropout", "onednn_primitive_cache")
BATCHING_MODES = ("bucket", "pad", "pack")


def parse_variant(text: str) -> tuple[str, dict]:
    """`trim50:trim_every=50,batching=bucket` -> ("lorafit-trim50", {"trim_every": 50, "batching": "bucket"})."""
    name, _, settings = text.partition(":")
    extra: dict = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key == "batching" and value in BATCHING_MODES:
            extra[key] = value
        elif key in VARIANT_KEYS and key != "batching" and value.lstrip("-").isdigit():
            extra[key] = int(value)
        else:
            raise SystemExit(f"--variant {text!r}: {item!r} is not batching={'|'.join(BATCHING_MODES)} or KEY=INTEGER "
                             f"with KEY one of {', '.join(VARIANT_KEYS[1:])}")
    return f"lorafit-{name}", extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per run: checks the script, not the speed")
    parser.add_argument("--tasks", default="e2e,sst2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per side and precision, in ABBA order, seeds 0, 1, ... (1 with --quick)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + repeats - 1 (to add seeds to an earlier run)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run instead of the task's default "
                        "(longer paired runs for the loss comparison)")
    parser.add_argument("--bucket-windows", default="",
                        help="also run lorafit with these length-sorting windows (batches per window, comma-separated), "
                        "every seed, to compare the loss against PEFT's")
    parser.add_argument("--trim-every", default="",
                        help="also run lorafit with a malloc_trim exactly every N steps (comma-separated; 0: never), "
                        "every seed, to compare memory growth and speed")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="also run lorafit with these settings, every seed (repeatable); keys: "
                        f"{', '.join(VARIANT_KEYS)}")
    parser.add_argument("--skip-peft", action="store_true",
                        help="lorafit runs only (variant experiments; no lorafit/PEFT ratios)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the lorafit variants (pad batching, usual head)")
    parser.add_argument("--retries", type=int, default=2, help="measure a run again when other processes used the CPU")
    parser.add_argument("--max-wait", type=float, default=900, help="seconds to wait for a quiet machine before each run")
    args = parser.parse_args()

    import torch

    repeats = 1 if args.quick else args.repeats
    info = benchlib.header("lorafit vs PEFT + Trainer: LoRA training")
    print("matmul peak ...", flush=True)
    peak = benchlib.matmul_peak()
    print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v['peak_gflops']:.0f} {v['by_size']}" for k, v in peak.items()))
    results: dict = {"info": info, "matmul_peak": peak, "runs": {}, "sides": {}, "ratios": {}}
    from lorafit.fast.precision import resolve_precision
    from lorafit.recipe.parse import Recipe

    default = Recipe.__dataclass_fields__["precision"].default
    default_precision = resolve_precision(default, torch.device("cpu"))
    results["lorafit_default_precision"] = {"recipe": default, "resolved": default_precision}
    print(f"lorafit's default precision: {default} -> {default_precision} on this machine; Trainer's default: fp32")

    for task_name in args.tasks.split(","):
        cfg = TASKS[task_name]
        steps = cfg["quick_steps"] if args.quick else (args.steps or cfg["steps"])
        warmup = 2 if args.quick else WARMUP
        window = min(WINDOW, steps - warmup) if not args.quick else steps // 2
        batch = task_batch_size(task_name)
        base = {
            "task": task_name, "steps": steps, "warmup": warmup, "window": window, "examples": steps * batch,
            "eval": 32 if args.quick else cfg["eval"],
            "kind": "generation" if task_name == "e2e" else "classification",
        }
        print(f"\n## {cfg['label']}: {steps} steps x batch {batch} ({steps * batch} examples), first {warmup} steps "
              f"untimed, train loss over the last {window} steps; {repeats} run(s) per side (seeds {args.first_seed}..{args.first_seed + repeats - 1})",
              flush=True)
        for precision in args.precisions.split(","):
            key = f"{task_name}/{precision}"
            # ABBA: lorafit, PEFT, PEFT, lorafit, ... so a slow drift of the machine hits both sides alike.
            order = [("lorafit", "peft") if i % 2 == 0 else ("peft", "lorafit") for i in range(repeats)]
            if args.skip_peft:
                order = [("lorafit",)] * repeats
            per_side: dict[str, list] = {"lorafit": [], "peft": []}
            for seed, pair in enumerate(order, start=args.first_seed):
                for side in pair:
                    result = measure({**base, "precision": precision, "side": side, "seed": seed}, args)
                    results["runs"][f"{key}/{side}/seed{seed}"] = result
                    per_side[side].append(result)
                    if "error" in result:
                        print(f"  {side} {precision} seed {seed}: ERROR {result['error']}\n{result['stderr_tail']}")
            variants = ["lorafit"] if args.skip_peft else ["lorafit", "peft"]
            experiments = [(f"lorafit-window{w}", {"bucket_window": int(w)}) for w in filter(None, args.bucket_windows.split(","))]
            experiments += [(f"lorafit-trim{n}", {"trim_every": int(n)}) for n in filter(None, args.trim_every.split(","))]
            experiments += [parse_variant(v) for v in args.variant]
            for name, extra in experiments:
                per_side[name] = []
                for seed in range(args.first_seed, args.first_seed + repeats):
                    result = measure({**base, "precision": precision, "side": "lorafit", "seed": seed, **extra}, args)
                    results["runs"][f"{key}/{name}/seed{seed}"] = result
                    per_side[name].append(result)
                variants.append(name)
            if not args.no_ablations and precision == "fp32":  # where lorafit's speed comes from, seed 0 only
                ablations = {"lorafit-pad": {"batching": "pad"}}
                if task_name == "e2e":
                    ablations["lorafit-pad-hfhead"] = {"batching": "pad", "head": "hf"}
                for name, extra in ablations.items():
                    result = measure({**base, "precision": precision, "side": "lorafit", "seed": 0, **extra}, args)
                    results["runs"][f"{key}/{name}/seed0"] = result
                    per_side[name] = [result]
                    variants.append(name)
            for name in variants:
                results["sides"][f"{key}/{name}"] = combined = combine(per_side[name])
                print(fmt_row(f"{name} {precision}", combined, peak[precision]["peak_gflops"]), flush=True)
            sides = results["sides"]
            if not args.skip_peft:
                q = ratios(sides[f"{key}/lorafit"], sides[f"{key}/peft"])
                results["ratios"][f"{key} lorafit/peft"] = q
                print(fmt_ratio(f"lorafit/PEFT {precision}", q))
            for name in [v for v in variants if v not in ("lorafit", "peft")]:
                q = ratios(sides[f"{key}/lorafit"], sides[f"{key}/{name}"])
                results["ratios"][f"{key} lorafit/{name}"] = q
                print(fmt_ratio(f"lorafit/{name} {precision}", q))
        sides = results["sides"]
        if f"{task_name}/{default_precision}/lorafit" in sides and f"{task_name}/fp32/peft" in sides:
            q = ratios(sides[f"{task_name}/{default_precision}/lorafit"], sides[f"{task_name}/fp32/peft"])
            results["ratios"][f"{task_name} defaults lorafit({default_precision})/peft(fp32)"] = q
            print(fmt_ratio(f"defaults: lorafit ({default_precision}) / Trainer (fp32)", q))

    contended = [k for k, r in results["runs"].items() if r.get("others_cpu_share", 0) > 0.03]
    results["contended_runs"] = contended
    if contended:
        print(f"\nWARNING: other processes used the CPU during {', '.join(contended)}; do not report those timings.")
    benchlib.write_json("bench_train-quick" if args.quick else "bench_train", results)


if __name__ == "__main__":
    main()
