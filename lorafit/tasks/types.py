"""The shapes every task module produces, so training and eval never look inside a task.

A task is a small frozen `Task` record of functions, not a class hierarchy:
- generation tasks (e2e, wikisql, text with a completion field) train on `GenerationExample`
  (the loss covers `completion` tokens only) and evaluate on `EvalItem` (one per distinct input,
  with all its references);
- classification / regression tasks (glue/*, text with a label field) train and evaluate on
  `ClassificationExample`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lorafit.recipe.schema import DataConfig

TaskKind = Literal["generation", "classification", "regression"]


@dataclass(frozen=True)
class GenerationExample:
    """One training pair: the model sees `prompt + completion`, loss only on `completion`."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class EvalItem:
    """One evaluation input for a generation task: a prompt and every reference for it.

    `meta` carries what a metric needs beyond the text (e.g. WikiSQL's table columns).
    """

    prompt: str
    references: tuple[str, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ClassificationExample:
    """A sentence (or sentence pair) and its label: an int class id, or a float for regression."""

    text: str
    text_pair: str | None
    label: int | float


@dataclass(frozen=True)
class Task:
    """A task: what kind it is, how to load each split, and how to score predictions.

    - `load_train(data_dir, split, options)` -> list of GenerationExample or ClassificationExample
      (for training and validation loss; for E2E one example per (MR, reference) row).
    - `load_eval(data_dir, split, options)` -> list of EvalItem (generation) or
      ClassificationExample (classification); for E2E one item per distinct MR, in order of
      first appearance, with all its references.
    - `score(predictions, items)` -> dict of metric name -> value (None when a metric is
      unavailable, with the reason under "<name>_unavailable"). Predictions are strings for
      generation and labels (int or float) for classification / regression.
    """

    name: str
    kind: TaskKind
    num_labels: int  # 0 for generation, 1 for regression
    splits: tuple[str, ...]
    load_train: Callable[[Path, str, DataConfig], list]
    load_eval: Callable[[Path, str, DataConfig], list]
    score: Callable[[Sequence, Sequence], dict]
    main_metric: str
    eval_only: bool = False  # e.g. glue/qnli: no train split in our data
    needs_data_dir: bool = True  # False for tasks that bring their own data (quickstart)
    # True when a data directory is used if there is one but the task can do without: data.source
    # "org/name" is a file under the data directory if one is there, else a Hub dataset.
    data_dir_optional: bool = False
