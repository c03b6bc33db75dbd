"""Task evaluation: predictions from a model (or a file), then the task's metrics.

Generation tasks generate one output per EvalItem (for E2E one per distinct MR) and score it against
all references; classification tasks take the argmax of the logits (regression: the single logit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lorafit.data.batches import encode_classification, length_sorted_batches
from lorafit.errors import DataError
from lorafit.eval.generate import generate
from lorafit.recipe.schema import DataConfig, EvalConfig
from lorafit.tasks.types import Task


@torch.no_grad()
def classify(
    model: nn.Module, tokenizer, items: Sequence, max_length: int, batch_size: int,
    on_batch: Callable[[int], None] = lambda n: None, shard: tuple[int, int] = (0, 1),
) -> list:
    """Predicted labels (int) or scores (float, regression) for ClassificationExamples, in order;
    `shard` (rank, ranks): only batches i with i % ranks == rank, the others' predictions None."""
    model.eval()
    device = next(model.parameters()).device
    encoded, _ = encode_classification(items, tokenizer, max_length)
    predictions: list = [None] * len(encoded)
    for i, (rows, batch) in enumerate(length_sorted_batches(encoded, batch_size, tokenizer.pad_token_id or 0)):
        if i % shard[1] != shard[0]:
            continue
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()  # (B, C)
        values = logits.squeeze(-1).tolist() if logits.shape[-1] == 1 else logits.argmax(-1).tolist()
        for row, value in zip(rows, values, strict=True):
            predictions[row] = value
        on_batch(len(rows))
    return predictions


def predict(
    model: nn.Module, tokenizer, task: Task, items: Sequence, settings: EvalConfig, max_length: int,
    on_batch: Callable[[int], None] = lambda n: None, shard: tuple[int, int] = (0, 1),
    gather: Callable[[list], list[list]] = lambda mine: [mine],
) -> list:
    """Predictions of `model` for the task's eval items. Several ranks: `shard` (rank, ranks) says
    which batches this rank predicts, `gather` collects every rank's list, and each item takes the
    prediction of the rank that made it."""
    if task.kind == "generation":
        from lorafit.data.chat import eval_prompts, plain_decoding

        mine = generate(model, tokenizer, eval_prompts(items, tokenizer), plain_decoding(items, settings),
                        on_batch=on_batch, shard=shard)
    else:
        mine = classify(model, tokenizer, items, max_length, settings.batch_size, on_batch=on_batch, shard=shard)
    if shard[1] == 1:
        return mine
    ranks = gather(mine)
    return [next(p[i] for p in ranks if p[i] is not None) for i in range(len(items))]


def eval_items(task: Task, data_dir: Path | None, split: str, options: DataConfig, limit: int | None) -> list:
    """The split's first `limit` (None: all) eval inputs; a split the task does not have is a DataError."""
    if split not in task.splits:
        raise DataError(f"task {task.name} has no split {split!r}; valid splits: {', '.join(task.splits)}")
    items = task.load_eval(data_dir, split, options)
    return items[:limit] if limit else items


def evaluate(
    model: nn.Module, tokenizer, task: Task, items: Sequence, settings: EvalConfig, max_length: int,
    on_batch: Callable[[int], None] = lambda n: None, shard: tuple[int, int] = (0, 1),
    gather: Callable[[list], list[list]] = lambda mine: [mine],
) -> dict:
    """Predictions of a loaded model on `items` and the task's metrics: {"predictions", "metrics",
    "seconds"} (seconds: predicting only); `shard`, `gather`: see `predict`."""
    started = time.perf_counter()
    predictions = predict(model, tokenizer, task, items, settings, max_length, on_batch=on_batch, shard=shard,
                          gather=gather)
    seconds = time.perf_counter() - started
    return {"predictions": predictions, "metrics": score(task, predictions, items)["metrics"], "seconds": round(seconds, 2)}


def read_predictions(path: Path, task: Task, expected: int) -> list:
    """One prediction per line, in the split's order (E2E: one per distinct MR, first-appearance order)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: predictions file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte {e.start})") from None
    if len(lines) != expected:
        raise DataError(f"{path}: has {len(lines)} lines, the split has {expected} inputs (one line each)")
    if task.kind == "generation":
        return [line.strip() for line in lines]
    try:
        return [float(x) if task.kind == "regression" else int(x) for x in lines]
    except ValueError as e:
        raise DataError(f"{path}: labels must be numbers, one per line ({e})") from None


def score(task: Task, predictions: Sequence, items: Sequence) -> dict:
    """The task's metrics for `predictions`, timed."""
    started = time.perf_counter()
    metrics = task.score(predictions, items)
    return {"metrics": metrics, "scoring_s": round(time.perf_counter() - started, 2)}
