"""The harness of the training benchmarks: the two sides, each trained in its own subprocess.

    run_child(spec) -> {"tokens_per_s", "final_loss", "heldout_loss", "peak_rss_mb", ...}

spec: {"side": "lorafit" | "peft", "task": "e2e" | "sst2", "precision", "steps", "examples", "seed",
plus experiment knobs (fast_options: FastOptions fields for lorafit's side)}. Both sides train on the
same N examples (lorafit's seeded subsample, tokenized once by lorafit's encoder) with the shipped
recipe's LoRA config and optimizer settings; `heldout_metrics` scores both with one function.
Experiments that use it: bench_train.py (lorafit vs PEFT + Trainer, variants), bench_precision.py,
profile_step.py.
"""

from __future__ import annotations

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
    cmd = [sys.executable, __file__, json.dumps(spec), path]
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




if __name__ == "__main__":  # a child: python bench/sides.py SPEC_JSON OUT_PATH
    child_spec = json.loads(sys.argv[1])
    child_result = child_lorafit(child_spec) if child_spec["side"] == "lorafit" else child_peft(child_spec)
    Path(sys.argv[2]).write_text(json.dumps(child_result))
