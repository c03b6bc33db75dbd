"""GLUE dev-set metrics, with the definitions of the GLUE benchmark (scikit-learn / scipy).

    score_classification("mrpc", predictions, labels) -> {"f1": ..., "accuracy": ...}

| task                          | metrics                          | main metric    |
|-------------------------------|----------------------------------|----------------|
| cola                          | matthews_corr                    | matthews_corr  |
| sst2, qnli, rte, wnli, mnli   | accuracy                         | accuracy       |
| mrpc, qqp                     | f1 (positive class 1), accuracy  | f1             |
| stsb                          | pearson, spearman                | pearson        |

Scores are on a 0-1 scale (correlations in [-1, 1]), never percentages.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from lorafit.errors import DataError

METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_corr",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
# The number each task is usually reported and selected by (the first of its metrics).
MAIN_METRIC: dict[str, str] = {task: names[0] for task, names in METRICS.items()}
REGRESSION_TASKS = frozenset({"stsb"})


def score_classification(task_name: str, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """GLUE metrics of `predictions` against gold `labels` for one task (see the table above).

    Classification predictions and labels are class ids (for f1, 1 is the positive class);
    for stsb they are floats. Raises ValueError for an unknown task, DataError for empty or
    mismatched inputs.
    """
    if task_name not in METRICS:
        raise ValueError(f"unknown GLUE task {task_name!r}; choose one of: {', '.join(sorted(METRICS))}")
    if len(predictions) != len(labels):
        raise DataError(f"{task_name}: {len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise DataError(f"{task_name}: no examples to score")

    if task_name in REGRESSION_TASKS:
        return _correlations([float(p) for p in predictions], [float(y) for y in labels])

    # Imported here: scikit-learn takes about a second to import.
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, labels = list(predictions), list(labels)
    scores: dict[str, float] = {}
    for name in METRICS[task_name]:
        if name == "accuracy":
            scores[name] = float(accuracy_score(labels, predictions))
        elif name == "f1":
            # zero_division=0: no predicted and no gold positives is F1 0, not a warning.
            scores[name] = float(
                f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0)
            )
        elif name == "matthews_corr":
            scores[name] = float(matthews_corrcoef(labels, predictions))
    return scores


def _correlations(predictions: list[float], labels: list[float]) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    if len(labels) < 2:
        return {"pearson": math.nan, "spearman": math.nan}
    # A constant input has no correlation: scipy warns and returns nan; we return nan quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson = float(pearsonr(predictions, labels)[0])
        spearman = float(spearmanr(predictions, labels)[0])
    return {"pearson": pearson, "spearman": spearman}
