"""The converged-budget rows of docs/results.md (issue: does LoRA match full fine-tuning when both are
trained to the end?). Same machinery as bench/results.py (one `lorafit train` per row, results in
results/out/<id>/result.json); this module only says which rows, and how long ones continue:

    .venv/bin/python bench/results.py run --tables converged-glue,converged-wikisql,converged-e2e --hours 2
    .venv/bin/python bench/results.py report

- GLUE on MiniLM-L6 (SST-2 on all 67,349 sentences, MRPC, CoLA, RTE, STS-B): LoRA r=8 q,v and full
  fine-tuning, each swept over 3 learning rates (seed 0) for the epochs below; the best learning rate
  (by the task's main dev metric) is rerun with seeds 1 and 2, reported as median and range. Head only
  is the floor. Task metrics are logged once per epoch (eval.every), so each run is a learning curve.
- WikiSQL subset: the 1,000 training questions for 6 epochs, LoRA q,v vs all-linear vs full.
- E2E: the whole training set (42,061 rows), the paper's settings (lr 2e-4, batch 8, dropout 0.1,
  warm-up 500, weight decay 0.01; lorafit has no label smoothing): LoRA one epoch (a two-epoch run only
  if the dev loss still fell by more than 1% over the first epoch's last fifth), full fine-tuning one
  epoch at the lr of a 3-value sweep on 4,000 rows; greedy decoding for every row, and beam 10 (length
  penalty 0.9, no repeated 4-grams) for the best LoRA row and full fine-tuning. Checkpoints every 500 steps.

Order (see converged_rows): MRPC, STS-B, RTE, WikiSQL, E2E, CoLA, SST-2; one row at a time with all the
threads the process has (`--jobs 1`); each finished row is copied to results/rows/<id>.json (committed,
with its learning curve) and the generation rows' LoRA adapters to results/adapters/<id>/.

Every long training writes checkpoints (train.save_every); `results.py run --hours H` stops each
training at the deadline with SIGTERM (lorafit writes a checkpoint and exits 130) and the next `run`
continues it with `lorafit train --resume`, so no invocation needs more than H hours.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

GLUE_TASKS = ("mrpc", "rte", "stsb", "cola", "sst2")
TRAIN_SIZE = {"mrpc": 3668, "rte": 2490, "stsb": 5749, "cola": 8551, "sst2": 67349}
EPOCHS = {"mrpc": 5, "rte": 5, "stsb": 5, "cola": 5, "sst2": 3}  # past the plateau: MRPC LoRA at 10 epochs peaked by epoch 2 (row cg-mrpc-lora-lr5e-4-10ep)
BATCH = 16  # the shipped GLUE recipes' batch size
LRS = {"lora": ("5e-4", "1e-3", "2e-3"), "full": ("2e-5", "5e-5", "1e-4")}
SEEDS = (1, 2)  # reruns of the best learning rate (seed 0 is the sweep row)
MAIN = {"mrpc": "f1", "rte": "accuracy", "stsb": "pearson", "cola": "matthews_corr", "sst2": "accuracy"}


def s(*pairs: str) -> tuple[str, ...]:
    return tuple(x for p in pairs for x in ("--set", p))


def glue_scale(task: str) -> tuple[str, ...]:
    """All training data, the task's epochs, task metrics once per epoch, a checkpoint every 500 steps."""
    steps_per_epoch = -(-TRAIN_SIZE[task] // BATCH)
    return s("data.max_train_examples=null", f"train.epochs={EPOCHS[task]}", f"eval.every={steps_per_epoch}",
             f"train.eval_every={steps_per_epoch}", "train.save_every=500", "eval.limit=null")


def sweep_id(task: str, method: str, lr: str) -> str:
    return f"cg-{task}-{method}-lr{lr}"


def seed_id(task: str, method: str, seed: int) -> str:
    return f"cg-{task}-{method}-best-s{seed}"


def glue_rows(experiment, out: Path, task: str) -> list:
    """One GLUE task: both methods' learning-rate sweeps, then the seed reruns of each method's best lr
    (listed once its sweep has finished), then head only (the floor)."""
    scale = glue_scale(task)
    rows = []
    for method in ("lora", "full"):
        for lr in LRS[method]:
            rows.append(experiment(sweep_id(task, method, lr), "converged-glue", f"{method} lr {lr}",
                                   f"{task}-minilm", (*scale, *s(f"train.method={method}", f"train.lr={lr}")),
                                   extra={"task": task, "method": method, "lr": lr, "seed": 0}))
    for method in ("lora", "full"):
        best = best_lr(out, task, method)
        if best is not None:
            for seed in SEEDS:
                rows.append(experiment(seed_id(task, method, seed), "converged-glue", f"{method} lr {best} seed {seed}",
                                       f"{task}-minilm", (*scale, *s(f"train.method={method}", f"train.lr={best}")),
                                       extra={"task": task, "method": method, "lr": best, "seed": seed}))
    rows.append(experiment(f"cg-{task}-head", "converged-glue", "head only", f"{task}-minilm",
                           (*scale, *s("train.method=head", "train.lr=2e-3")), extra={"task": task}))
    return rows


def wikisql_rows(experiment) -> list:
    """WikiSQL subset, 6 epochs of the 1,000 training questions: LoRA q,v vs all-linear vs full."""
    wikisql = s("train.epochs=6", "train.eval_every=125", "eval.every=125", "train.save_every=250")
    return [experiment(rid, "converged-wikisql", variant, "wikisql-smollm2", (*wikisql, *extra), extra=keep)
            for rid, variant, extra, keep in (
                ("cw-lora-qv", "LoRA r=4 q,v", (), {"keep_adapter": True}),
                ("cw-full", "full fine-tuning", s("train.method=full", "train.lr=5e-5"), {}),
                ("cw-lora-all", "LoRA r=4 all linear", s("lora.targets=all-linear"), {"keep_adapter": True}))]


E2E_STEPS_PER_EPOCH = -(-42061 // 8)
# The paper's settings (lr 2e-4, batch 8, dropout 0.1, warm-up 500, weight decay 0.01; lorafit has no label
# smoothing); validation loss on 500 dev examples ten times an epoch (the "last fifth" rule reads it);
# the end-of-run evaluation greedy over all 547 dev MRs; beam search is a separate row (BEAM).
E2E = s("data.max_train_examples=null", "train.lr=2e-4", "train.warmup_steps=500", "train.weight_decay=0.01",
        "train.save_every=500", f"train.eval_every={-(-E2E_STEPS_PER_EPOCH // 10)}", "data.max_valid_examples=500",
        "eval.beam_size=1", "eval.batch_size=32")
BEAM = ("--beam-size", "10", "--length-penalty", "0.9", "--no-repeat-ngram-size", "4", "--batch-size", "8")
FULL_SWEEP_LRS = ("2e-5", "5e-5", "1e-4")
# Full fine-tuning's lr sweep: 4,000 training rows (500 steps), the same 500 dev examples for the loss.
FULL_SWEEP = s("data.max_train_examples=4000", "train.epochs=1", "train.method=full", "train.warmup_steps=50",
               "train.eval_every=100", "eval.limit=50")


def still_falling(out: Path, rid: str, threshold: float = 0.01) -> bool | None:
    """Did the dev loss fall by more than `threshold` (relative) over the last fifth of the run? None
    until the run has finished."""
    row = result(out, rid)
    points = [(r["step"], r["valid_loss"]) for r in (row or {}).get("curve", []) if "valid_loss" in r]
    if row is None or len(points) < 2:
        return None
    last_step = points[-1][0]
    earlier = [v for step, v in points if step <= 0.8 * last_step]
    return bool(earlier) and (earlier[-1] - points[-1][1]) / earlier[-1] > threshold


def best_full_e2e_lr(out: Path) -> str | None:
    """The full fine-tuning lr with the lowest final dev loss in the subset sweep, once all have run."""
    losses = {}
    for lr in FULL_SWEEP_LRS:
        row = result(out, f"ce-full-sweep-lr{lr}")
        if row is None:
            return None
        losses[lr] = row["summary"].get("final_valid_loss") or float("inf")
    return min(losses, key=losses.get)


def e2e_rows(experiment, out: Path) -> list:
    """E2E on SmolLM2-135M over all 42,061 training rows: LoRA r=4 q,v one epoch (a second, as a
    two-epoch run, only if the dev loss still fell by more than 1% over the first's last fifth); full
    fine-tuning one epoch at the lr its subset sweep picks; beam 10 for the best LoRA row and the full
    fine-tuning row; LoRA all-linear last, if time allows."""
    rows = [experiment("ce-lora-qv", "converged-e2e", "LoRA r=4 q,v (paper), 1 epoch", "e2e-smollm2",
                       (*E2E, *s("train.epochs=1")), extra={"keep_adapter": True})]
    rows += [experiment(f"ce-full-sweep-lr{lr}", "converged-e2e", f"full FT lr sweep {lr} (4,000 rows)", "e2e-smollm2",
                        (*E2E, *FULL_SWEEP, *s(f"train.lr={lr}")), extra={"lr": lr}) for lr in FULL_SWEEP_LRS]
    lora = "ce-lora-qv"
    if still_falling(out, "ce-lora-qv"):
        lora = "ce-lora-qv-2ep"
        rows.append(experiment(lora, "converged-e2e", "LoRA r=4 q,v (paper), 2 epochs", "e2e-smollm2",
                               (*E2E, *s("train.epochs=2")), extra={"keep_adapter": True}))
    full_lr = best_full_e2e_lr(out)
    if full_lr is not None:
        rows.append(experiment("ce-full", "converged-e2e", f"full fine-tuning, 1 epoch, lr {full_lr}", "e2e-smollm2",
                               (*E2E, *s("train.epochs=1", "train.method=full", f"train.lr={full_lr}")),
                               extra={"lr": full_lr}))
    for rid in (lora, "ce-full"):
        if result(out, rid) is not None and (out / rid / "run").is_dir():
            rows.append(experiment(f"{rid}-beam10", "converged-e2e", f"{rid}, beam 10", None,
                                   zero_shot=(str(out / rid / "run"), "e2e"), eval_args=BEAM, extra={"of": rid}))
    rows.append(experiment("ce-lora-all", "converged-e2e", "LoRA r=4 all linear, 1 epoch", "e2e-smollm2",
                           (*E2E, *s("train.epochs=1", "lora.targets=all-linear")), extra={"keep_adapter": True}))
    return rows


def converged_rows(experiment, out: Path) -> list:
    """The converged rows as `experiment(...)` (results.Experiment) objects, in the order they run: the
    small GLUE tasks first (they answer soonest), each task's rows complete before the next task; rows
    that need finished ones (seed reruns, the second E2E epoch, beam search) appear once they can run."""
    rows = []
    for task in ("mrpc", "stsb", "rte"):
        rows += glue_rows(experiment, out, task)
    rows += wikisql_rows(experiment)
    rows += e2e_rows(experiment, out)
    for task in ("cola", "sst2"):
        rows += glue_rows(experiment, out, task)
    return rows


def result(out: Path, rid: str) -> dict | None:
    """A finished row: its committed record (results/rows/<id>.json, with the learning curve) or, before
    it is kept, results/out/<id>/result.json."""
    kept = out.parent / "rows" / f"{rid}.json"
    path = kept if kept.exists() else out / rid / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def best_lr(out: Path, task: str, method: str) -> str | None:
    """The sweep's learning rate with the best main dev metric, once all three sweep rows are done."""
    scores = {}
    for lr in LRS[method]:
        r = result(out, sweep_id(task, method, lr))
        if r is None:
            return None
        scores[lr] = r["eval"]["metrics"].get(MAIN[task]) or float("-inf")
    return max(scores, key=scores.get)


def seed_summary(out: Path, task: str, method: str) -> dict | None:
    """Median and range of the main metric over seed 0 (the sweep row at the best lr) and the reruns."""
    best = best_lr(out, task, method)
    if best is None:
        return None
    runs = [result(out, sweep_id(task, method, best))] + [result(out, seed_id(task, method, s)) for s in SEEDS]
    values = [r["eval"]["metrics"].get(MAIN[task]) for r in runs if r is not None]
    return {"lr": best, "seeds": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values), "sweep": {lr: (result(out, sweep_id(task, method, lr)) or {}).get("eval", {})
                                          .get("metrics", {}).get(MAIN[task]) for lr in LRS[method]}}
