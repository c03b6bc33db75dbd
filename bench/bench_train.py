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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LORAFIT_DATA", str(benchlib.REPO.parent / "shared" / "data"))
# oneDNN's primitive cache: lorafit's fit() sets 64 unless the user chose a size (lorafit/fast/memory.py);
# importing lorafit sets nothing, so PEFT + Trainer's side runs with the user's setting or oneDNN's
# default (1024), as a PEFT user would. A variant can give lorafit's side another size.
ONEDNN_CACHE, DNNL_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"


def onednn_cache_setting() -> str | None:
    """The primitive cache size this process's oneDNN reads (recorded with each side's result)."""
    return os.environ.get(ONEDNN_CACHE, os.environ.get(DNNL_CACHE))

# steps: timed steps + warm-up; examples = steps * batch_size, so each example is seen once.
TASKS = {
    "e2e": {"recipe": "e2e-smollm2", "label": "E2E / SmolLM2-135M", "steps": 40, "quick_steps": 6, "eval": 200},
    "sst2": {"recipe": "sst2-minilm", "label": "SST-2 / MiniLM-L6", "steps": 200, "quick_steps": 12, "eval": 872},
}
WARMUP = 5  # untimed first steps
WINDOW = 20  # final training loss: mean of the last WINDOW steps


def recipe_for(spec: dict):
    from lorafit.recipe.parse import parse_recipe
    from lorafit.recipe.shipped import recipe_text

    name = TASKS[spec["task"]]["recipe"]
    steps = spec["steps"]
    overrides = [
        f"data.max_train_examples={spec['examples']}",
        "data.max_valid_examples=0",
        f"train.max_steps={steps}",
        f"train.warmup_steps={max(1, steps // 10)}",
        f"train.batching={spec.get('batching', 'auto')}",
        f"precision={spec['precision']}",
        f"seed={spec.get('seed', 0)}",
        "train.log_every=1",
        "train.eval_every=0",
        "train.save_every=0",
        "eval.at_end=false",
        "log.plot=false",
    ]
    return parse_recipe(recipe_text(name), name, overrides)


def heldout_examples(recipe, task, tokenizer, limit: int):
    from lorafit.data.batches import subsample
    from lorafit.tasks import task_data_dir
    from lorafit.train.setup import encode

    examples = task.load_train(task_data_dir(task, recipe.data_dir), recipe.eval.split, recipe.data)
    examples = subsample(examples, limit, recipe.seed)
    return encode(task, examples, tokenizer, recipe.data.max_length)[0]


def heldout_metrics(model, encoded, kind: str, pad_id: int) -> dict:
    """Loss of the final weights on held-out examples: the same function for both sides (fp32, eval)."""
    import torch
    import torch.nn.functional as F

    from lorafit.data.batches import count_target_tokens, length_sorted_batches
    from lorafit.train.loss import causal_lm_loss

    model.eval()
    get_base = getattr(model, "get_base_model", None)  # PEFT: the transformers model with LoRA layers inside
    lm = get_base() if callable(get_base) else model
    total, count, correct = 0.0, 0, 0
    with torch.no_grad():
        for _, batch in length_sorted_batches(encoded, 8, pad_id):
            if kind == "generation":
                total += causal_lm_loss(lm, batch).item()  # == full-logits loss (tests/test_data_and_loss.py)
                count += count_target_tokens(batch)
            else:
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
                total += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
                count += batch["labels"].shape[0]
    out = {"heldout_loss": total / max(count, 1)}
    if kind != "generation":
        out["heldout_accuracy"] = correct / max(count, 1)
    return out


def summarize(spec: dict, times: list[float], stats: list[dict], losses: list[float], fm: dict, final_loss: float,
              rss: list[float]) -> dict:
    """Throughput over the steps after the warm-up ones; stats[i] is the batch of step i, rss[i] the
    process's resident memory (MB) after step i."""
    w, steps = spec["warmup"], spec["steps"]
    timed = stats[w:steps]
    seconds = times[steps - 1] - times[w - 1]
    real = sum(s["real"] for s in timed)
    padded = sum(s["padded"] for s in timed)
    targets = sum(s["targets"] for s in timed)
    head_tokens = targets if spec["kind"] == "generation" else 0
    flops = sum(
        benchlib.step_flops(fm, s["real"], s["sum_len_sq"], s["targets"] if head_tokens else 0) for s in timed
    )
    return {
        "timed_steps": steps - w,
        "seconds": seconds,
        "s_per_step": seconds / (steps - w),
        "real_tokens": real,
        "padded_tokens": padded,
        "target_tokens": targets,
        "sum_len_sq": sum(s["sum_len_sq"] for s in timed),
        "useful_flops": flops,
        "pad_share": 1 - real / padded,
        "real_tokens_per_s": real / seconds,
        "useful_gflops": flops / seconds / 1e9,
        "final_train_loss": final_loss,
        "losses": losses,
        "examples_seen": sum(s["rows"] for s in stats[:steps]),
        # resident memory after each step: how it grows once the first steps have allocated the working set
        "rss_trace_mb": [round(x, 1) for x in rss[:steps]],
        "rss_growth_mb": rss[steps - 1] - rss[w - 1],
    }


def task_batch_size(task_name: str) -> int:
    """The shipped recipe's batch size for a bench task (examples per run = steps x this)."""
    return recipe_for({"task": task_name, "steps": 1, "examples": 1, "precision": "fp32"}).train.batch_size


def fast_options(spec: dict):
    """The experiment knobs of a variant spec as lorafit's FastOptions (defaults: what `lorafit train` runs)."""
    from dataclasses import replace

    from lorafit.fast.options import FastOptions

    fast = FastOptions()
    if spec.get("bucket_window"):  # experiment: how many batches each length-sorting window spans
        fast = replace(fast, bucket_window_batches=spec["bucket_window"])
    if "trim_every" in spec or "trim_min_seconds" in spec:  # experiment: when fit() calls malloc_trim
        # trim_every alone means exactly every N steps (0: never), whatever the steps take
        fast = replace(fast, trim_every_steps=spec.get("trim_every", fast.trim_every_steps),
                       trim_min_seconds=spec.get("trim_min_seconds", 0))
    if spec.get("torch_attention_dropout"):  # experiment: attention dropout by torch's SDPA (bernoulli_ mask)
        fast = replace(fast, attention_dropout=False)
    if spec.get("pad_multiple"):  # experiment: batch widths rounded up to a multiple (fewer distinct shapes)
        fast = replace(fast, pad_to_multiple=spec["pad_multiple"])
    return fast


def child_lorafit(spec: dict) -> dict:
    import time as _t

    import torch

    from lorafit.models.loader import load_for_training
    from lorafit.train.loop import fit
    from lorafit.train.setup import load_task, loss_function, prepare_data

    t0 = _t.perf_counter()
    fast = fast_options(spec)
    recipe = recipe_for(spec)
    task = load_task(recipe)
    prepared = load_for_training(recipe, task.num_labels)
    train, _, _ = prepare_data(recipe, task, prepared.tokenizer)
    pad_id = prepared.tokenizer.pad_token_id
    heldout = heldout_examples(recipe, task, prepared.tokenizer, spec["eval"])
    setup_s = _t.perf_counter() - t0
    inner = loss_function(task)
    if spec.get("head") == "hf":  # ablation: the usual head, transformers' own loss over full (B, T, V) logits
        from lorafit.data.batches import count_target_tokens

        def inner(model, batch):
            return model(**batch).loss * count_target_tokens(batch)
    scale = None
    if spec.get("norm_epoch_mean"):  # experiment: divide by the mean target tokens per batch, not this step's
        from lorafit.data.batches import count_target_tokens

        batches = -(-len(train) // recipe.train.batch_size)
        mean_targets = sum(sum(1 for t in e.labels[1:] if t != -100) for e in train) / batches

        def scale(batch):
            return count_target_tokens(batch) / mean_targets
    stats, times, losses, rss = [], [], [], []

    def on_step(state, snapshot):
        times.append(_t.perf_counter())
        rss.append(benchlib.current_rss_mb())

    def loss_fn(model, batch):
        if model.training:
            stats.append(benchlib.batch_stats(batch))
            if scale is not None:
                return inner(model, batch) * scale(batch)
        return inner(model, batch)

    def on_log(record):
        if "loss" in record:
            losses.append(record["loss"])

    fit(prepared.model, train, [], recipe.train, seed=recipe.seed, precision=recipe.precision, loss_fn=loss_fn,
        pad_id=pad_id, fast=fast, on_log=on_log, on_step=on_step)
    train_rss = benchlib.peak_rss_mb()
    fm = benchlib.flop_model(prepared.model)
    final = statistics.fmean(losses[-spec["window"]:])
    out = summarize(spec, times, stats, losses, fm, final, rss)
    t1 = _t.perf_counter()
    out.update(heldout_metrics(prepared.model, heldout, task.kind, pad_id))
    out.update(setup_s=setup_s, eval_s=_t.perf_counter() - t1, peak_rss_mb=train_rss, flop_model=fm,
               torch_threads=torch.get_num_threads(), onednn_primitive_cache=onednn_cache_setting())
    return out


def child_peft(spec: dict) -> dict:
    import time as _t

    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from lorafit.models import load_tokenizer, resolve_model
    from lorafit.train.setup import load_task, prepare_data

    hf_logging.set_verbosity_error()
    t0 = _t.perf_counter()
    recipe = recipe_for(spec)
    task = load_task(recipe)
    ref = resolve_model(recipe.model)
    tokenizer = load_tokenizer(ref)  # the same tokenizer and pad token as lorafit
    train, _, _ = prepare_data(recipe, task, tokenizer)
    heldout = heldout_examples(recipe, task, tokenizer, spec["eval"])
    torch.manual_seed(recipe.seed)
    lora = recipe.lora
    generation = task.kind == "generation"
    if generation:
        model = AutoModelForCausalLM.from_pretrained(ref.path_or_id, dtype=torch.float32)
        rows = {"input_ids": [list(e.input_ids) for e in train], "labels": [list(e.labels) for e in train]}
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding="longest")
        task_type = TaskType.CAUSAL_LM
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            ref.path_or_id, num_labels=task.num_labels, dtype=torch.float32
        )
        rows = {"input_ids": [list(e.input_ids) for e in train], "labels": [e.target for e in train]}
        if train[0].token_type_ids is not None:
            rows["token_type_ids"] = [list(e.token_type_ids) for e in train]
        collator = DataCollatorWithPadding(tokenizer, padding="longest")
        task_type = TaskType.SEQ_CLS
    model.config.pad_token_id = tokenizer.pad_token_id
    rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
    dataset = Dataset.from_dict(rows)
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets),
        modules_to_save=list(lora.modules_to_save) or None, bias=lora.bias, use_rslora=lora.rslora,
        task_type=task_type,
    )
    model = get_peft_model(model, config)
    stats, times, losses, rss = [], [], [], []

    class Recording:
        """The collator, counting real tokens of every batch it builds (in training order)."""

        def __call__(self, features):
            batch = collator(features)
            stats.append(benchlib.batch_stats(batch))
            return batch

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(_t.perf_counter())
            rss.append(benchlib.current_rss_mb())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    t = recipe.train
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=t.batch_size, max_steps=t.max_steps,
            learning_rate=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
            lr_scheduler_type=t.schedule, max_grad_norm=t.max_grad_norm or 0.0, seed=recipe.seed,
            logging_steps=spec["window"], save_strategy="no", report_to="none", use_cpu=True,
            bf16=spec["precision"] == "bf16", disable_tqdm=True, dataloader_num_workers=0,
        )
        setup_s = _t.perf_counter() - t0
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=Recording(),
                          callbacks=[Clock()])
        trainer.train()
    train_rss = benchlib.peak_rss_mb()
    fm = benchlib.flop_model(model)
    out = summarize(spec, times, stats, losses, fm, losses[-1], rss)
    t1 = _t.perf_counter()
    out.update(heldout_metrics(model, heldout, task.kind, tokenizer.pad_token_id))
    out.update(setup_s=setup_s, eval_s=_t.perf_counter() - t1, peak_rss_mb=train_rss, flop_model=fm,
               optim=str(args.optim), torch_threads=torch.get_num_threads(), onednn_primitive_cache=onednn_cache_setting())
    return out


def run_child(spec: dict) -> dict:
    """One side in a fresh interpreter; returns its result dict (or the error)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--child-out", path]
    env = dict(os.environ)
    if spec.get("malloc_mmap_threshold"):  # experiment: glibc reads this at start-up; pins the mmap threshold
        env["MALLOC_MMAP_THRESHOLD_"] = str(spec["malloc_mmap_threshold"])
    if spec["side"] == "lorafit" and spec.get("onednn_primitive_cache"):  # experiment: another cache size for lorafit's side
        env[ONEDNN_CACHE] = str(spec["onednn_primitive_cache"])
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-3000:]
            return {"error": f"exit {proc.returncode}", "stderr_tail": tail}
        result = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    result["wall_s"] = time.perf_counter() - began
    return result


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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        result = child_lorafit(spec) if spec["side"] == "lorafit" else child_peft(spec)
        Path(args.child_out).write_text(json.dumps(result))
        return

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
