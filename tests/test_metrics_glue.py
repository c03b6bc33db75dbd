"""GLUE metrics against values worked out by hand."""

import math

import pytest

from lorafit.errors import DataError
from lorafit.eval.metrics.glue import MAIN_METRIC, METRICS, score_classification

# A 2x2 confusion matrix: TP=3 (0, 4, 6), FP=1 (1), FN=1 (5), TN=3 (2, 3, 7).
PREDS = [1, 1, 0, 0, 1, 0, 1, 0]
LABELS = [1, 0, 0, 0, 1, 1, 1, 0]


def test_mrpc_f1_and_accuracy_by_hand():
    # F1 = 2TP / (2TP + FP + FN) = 6/8; accuracy = (TP + TN) / 8 = 6/8
    assert score_classification("mrpc", PREDS, LABELS) == {"f1": 0.75, "accuracy": 0.75}


def test_cola_matthews_by_hand():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 0.5
    assert score_classification("cola", PREDS, LABELS) == {"matthews_corr": pytest.approx(0.5)}
    # Unbalanced: TP=2, FP=1, FN=0, TN=1 -> (2 - 0) / sqrt(3 * 2 * 2 * 1) = 2 / sqrt(12)
    score = score_classification("cola", [1, 1, 1, 0], [1, 1, 0, 0])["matthews_corr"]
    assert score == pytest.approx(2 / math.sqrt(12))


@pytest.mark.parametrize("task", ["sst2", "rte", "wnli", "qnli", "mnli"])
def test_accuracy_tasks(task):
    assert score_classification(task, PREDS, LABELS) == {"accuracy": 0.75}


def test_stsb_pearson_and_spearman_by_hand():
    # x = 1,2,3; y = 1,2,4: deviations (-1,0,1) and (-4/3,-1/3,5/3); sum of products 3,
    # sums of squares 2 and 42/9 -> r = 3 / sqrt(2 * 42/9) = 9 / sqrt(84). Same ranks -> rho = 1.
    scores = score_classification("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert scores == {"pearson": pytest.approx(9 / math.sqrt(84)), "spearman": pytest.approx(1.0)}
    # Ranks (1,2,3) vs (3,1,2): sum d^2 = 4+1+1 = 6 -> rho = 1 - 6*6 / (3*(9-1)) = -0.5
    assert score_classification("stsb", [0.1, 0.2, 0.3], [4.5, 1.0, 2.5])["spearman"] == pytest.approx(-0.5)


def test_constant_regression_predictions_give_nan_not_a_crash():
    scores = score_classification("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 4.0])
    assert math.isnan(scores["pearson"]) and math.isnan(scores["spearman"])


def test_main_metric_is_one_of_the_task_metrics():
    assert MAIN_METRIC["sst2"] == "accuracy"
    assert MAIN_METRIC["mrpc"] == "f1"
    assert MAIN_METRIC["cola"] == "matthews_corr"
    assert MAIN_METRIC["stsb"] == "pearson"
    for task, main in MAIN_METRIC.items():
        assert main in METRICS[task]
        assert set(score_classification(task, [1, 0], [1, 0])) == set(METRICS[task])


def test_bad_inputs():
    with pytest.raises(ValueError, match="sst2"):  # the message lists the valid tasks
        score_classification("sst-2", [1], [1])
    with pytest.raises(DataError):
        score_classification("sst2", [1, 0], [1])
    with pytest.raises(DataError):
        score_classification("sst2", [], [])
