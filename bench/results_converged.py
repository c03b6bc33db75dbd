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
- E2E: the whole training set (42,061 rows), 2 epochs for LoRA, 1 for full fine-tuning, the paper's
  settings (lr 2e-4, batch 8, dropout 0.1, warm-up 500, weight decay 0.01; lorafit has no label
  smoothing); beam 10, length penalty 0.9, no repeated 4-grams. Checkpoints every 500 steps.

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
EPOCHS = {"mrpc": 10, "rte": 10, "stsb": 10, "cola": 8, "sst2": 3}  # chosen to reach a plateau; curves show it
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


def converged_rows(experiment, out: Path) -> list:
    """The converged rows as `experiment(...)` (results.Experiment) objects; the seed reruns appear once
    their method's sweep has finished (they need its best learning rate)."""
    rows = []
    for task in GLUE_TASKS:
        scale = glue_scale(task)
        rows.append(experiment(f"cg-{task}-head", "converged-glue", "head only", f"{task}-minilm",
                               (*scale, *s("train.method=head", "train.lr=2e-3")), extra={"task": task}))
        for method in ("lora", "full"):
            for lr in LRS[method]:
                rows.append(experiment(sweep_id(task, method, lr), "converged-glue", f"{method} lr {lr}",
                                       f"{task}-minilm", (*scale, *s(f"train.method={method}", f"train.lr={lr}")),
                                       extra={"task": task, "method": method, "lr": lr, "seed": 0}))
            best = best_lr(out, task, method)
            if best is not None:
                for seed in SEEDS:
                    rows.append(experiment(seed_id(task, method, seed), "converged-glue", f"{method} lr {best} seed {seed}",
                                           f"{task}-minilm", (*scale, *s(f"train.method={method}", f"train.lr={best}")),
                                           extra={"task": task, "method": method, "lr": best, "seed": seed}))
    wikisql = s("train.epochs=6", "train.eval_every=125", "eval.every=125", "train.save_every=250")
    for rid, variant, extra in (("cw-lora-qv", "LoRA r=4 q,v", ()), ("cw-lora-all", "LoRA r=4 all linear",
                                s("lora.targets=all-linear")), ("cw-full", "full fine-tuning", s("train.method=full", "train.lr=5e-5"))):
        rows.append(experiment(rid, "converged-wikisql", variant, "wikisql-smollm2", (*wikisql, *extra)))
    e2e = s("data.max_train_examples=null", "train.lr=2e-4", "train.warmup_steps=500", "train.weight_decay=0.01",
            "train.save_every=500", "train.eval_every=1000", "data.max_valid_examples=500", "eval.beam_size=10",
            "eval.length_penalty=0.9", "eval.no_repeat_ngram_size=4", "eval.batch_size=8")
    rows.append(experiment("ce-lora-qv", "converged-e2e", "LoRA r=4 q,v (paper)", "e2e-smollm2", (*e2e, *s("train.epochs=2"))))
    rows.append(experiment("ce-lora-all", "converged-e2e", "LoRA r=4 all linear", "e2e-smollm2",
                           (*e2e, *s("train.epochs=2", "lora.targets=all-linear"))))
    rows.append(experiment("ce-full", "converged-e2e", "full fine-tuning", "e2e-smollm2",
                           (*e2e, *s("train.epochs=1", "train.method=full", "train.lr=5e-5"))))
    return rows


def result(out: Path, rid: str) -> dict | None:
    path = out / rid / "result.json"
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


def curve(out: Path, rid: str, metric: str) -> list[tuple[int, float]]:
    """(examples seen, dev metric) after each task evaluation of a run (metrics.jsonl's eval_* records)."""
    path = out / rid / "run" / "metrics.jsonl"
    if not path.exists():
        return []
    points = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if f"eval_{metric}" in record:
            points.append((record["step"] * BATCH, record[f"eval_{metric}"]))
    return points


def plot_curves(out: Path, path: Path) -> Path | None:
    """Dev metric vs examples seen, LoRA and full fine-tuning (best lr, seed 0) on one panel per task."""
    import matplotlib.pyplot as plt

    from lorafit.runs.plots import save_figure  # also selects the headless Agg backend

    panels = [(t, {m: curve(out, sweep_id(t, m, best_lr(out, t, m)), MAIN[t]) for m in ("lora", "full")
                   if best_lr(out, t, m)}) for t in GLUE_TASKS]
    panels = [(t, c) for t, c in panels if any(c.values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (task, curves) in zip(axes[0], panels, strict=True):
        for method, points in curves.items():
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        ax.set_title(f"{task} dev {MAIN[task]}")
        ax.set_xlabel("examples seen")
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
