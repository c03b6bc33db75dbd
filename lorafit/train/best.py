"""Early stopping and keeping the best evaluation (train.best_metric, early_stopping_patience, keep_best).

The loop hands every evaluation record (a validation loss, or task metrics) to a `BestTracker`. It
knows the best value of the watched metric so far and its step, and how many evaluations in a row
brought no strict improvement (as HF's EarlyStoppingCallback, threshold 0): patience P stops training
after the P-th such evaluation. With keep_best it holds a copy of the trainable weights of the best
evaluation (LoRA A/B and the head: ~0.1-1% of the model), which goes into checkpoints so a resumed
run keeps it, and is put back into the model when training ends (as HF's load_best_model_at_end).

The step-0 validation (the base model's loss, before any update) is never a candidate: an adapter
of zeros is not a result of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lorafit.errors import RecipeError
from lorafit.recipe.schema import TrainConfig
from lorafit.train.distributed import full_value, load_value

VALID_LOSS = "valid_loss"


def metric_direction(metric: str) -> str:
    """'minimize' for losses (names ending in loss), 'maximize' for every task metric (accuracy, bleu, ...)."""
    return "minimize" if metric.endswith("loss") else "maximize"


def record_key(metric: str) -> str:
    """The key of `metric` in metrics records: valid_loss as it is, a task metric with its eval_ prefix."""
    return metric if metric == VALID_LOSS or metric.startswith("eval_") else f"eval_{metric}"


def check_watch(config: TrainConfig, task_eval_every: int, key: str = "train.best_metric") -> None:
    """Refuse, before anything loads, a watched metric that would never be evaluated mid-run."""
    watching = config.early_stopping_patience > 0 or config.keep_best
    if not watching:
        return
    if record_key(config.best_metric) != VALID_LOSS and task_eval_every <= 0:
        raise RecipeError(f"{key}: {config.best_metric!r} is a task metric, evaluated during training only "
                          "with eval.every > 0; set eval.every or watch valid_loss")
    if config.early_stopping_patience > 0 and record_key(config.best_metric) == VALID_LOSS and config.eval_every <= 0:
        raise RecipeError("train.early_stopping_patience: needs train.eval_every > 0 (otherwise the validation "
                          "loss is computed only at the end)")


class BestTracker:
    """The best value of one metric over a run's evaluations, and whether patience has run out."""

    def __init__(self, metric: str, *, patience: int = 0, keep: bool = False) -> None:
        self.metric, self.key = metric, record_key(metric)
        self.minimize = metric_direction(self.key) == "minimize"
        self.patience, self.keep = patience, keep
        self.value: float | None = None
        self.step: int | None = None
        self.since_best = 0  # evaluations in a row without a strict improvement
        self.weights: dict | None = None  # trainable weights at `step` (keep only)
        self.stopped: str | None = None  # "early stopping" or "pruned": training ends after this step

    @classmethod
    def from_config(cls, config: TrainConfig) -> BestTracker:
        return cls(config.best_metric, patience=config.early_stopping_patience, keep=config.keep_best)

    def evaluated(self, record: dict, model: nn.Module, on_evaluation: Callable[[dict], bool] | None = None) -> dict:
        """Take one evaluation record (returned as it is): a new best (its weights copied with keep),
        patience spent, or the caller's `on_evaluation(record)` returning True all end training after
        this step. Every rank sees the same all-reduced numbers, so all ranks decide alike."""
        self.observe(record, lambda: trainable_weights(model))
        if self.exhausted:
            self.stopped = "early stopping"
        if on_evaluation is not None and on_evaluation(record):
            self.stopped = "pruned"
        return record

    def restore_into(self, model: nn.Module, step: int) -> None:
        """keep: put the best evaluation's trainable weights back into `model` (unless `step` was the best)."""
        if not self.keep or self.weights is None or self.step == step:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.weights.items():
                load_value(params[name], value)

    def observe(self, record: dict, weights: Callable[[], dict]) -> bool:
        """Take one evaluation record; True when it is the new best. `weights()` copies the trainable
        weights (called only for a new best with keep)."""
        if record.get("step", 0) == 0:
            return False
        if self.key not in record:
            is_task_eval = any(k.startswith("eval_") for k in record)
            if is_task_eval and self.key.startswith("eval_"):
                known = ", ".join(sorted(k[5:] for k in record if k.startswith("eval_"))) or "none"
                raise RecipeError(f"train.best_metric: the task evaluation has no metric {self.metric!r} "
                                  f"(it gives: {known})")
            return False
        value = record[self.key]
        better = value is not None and math.isfinite(value) and (
            self.value is None or (value < self.value if self.minimize else value > self.value))
        if not better:
            self.since_best += 1
            return False
        self.value, self.step, self.since_best = float(value), int(record["step"]), 0
        if self.keep:
            self.weights = weights()
        return True

    @property
    def exhausted(self) -> bool:
        """Patience ran out: stop training after this step."""
        return self.patience > 0 and self.since_best >= self.patience

    def summary(self) -> dict | None:
        """{metric, direction, value, step, kept} for summary.json; None before any evaluation."""
        if self.value is None:
            return None
        return {"metric": self.metric, "direction": "minimize" if self.minimize else "maximize",
                "value": self.value, "step": self.step, "kept": self.keep}

    def state(self) -> dict:
        """What a checkpoint holds, so a resumed run keeps the best so far and its patience count."""
        return {"value": self.value, "step": self.step, "since_best": self.since_best, "weights": self.weights}

    def load(self, state: dict | None) -> None:
        if state:
            self.value, self.step = state["value"], state["step"]
            self.since_best, self.weights = state["since_best"], state["weights"]


def trainable_weights(model: nn.Module) -> dict:
    """A copy of every trainable parameter (whole, also under fsdp), by name."""
    return {n: full_value(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}
