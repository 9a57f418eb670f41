"""The multi-label metrics against scikit-learn and against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, label_ranking_average_precision_score, roc_auc_score

from competition.metrics import METRICS, TASKS


def random_multilabel(seed: int, clips: int = 40, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((clips, classes)) < 0.3).astype(float), rng.random((clips, classes))


@pytest.mark.parametrize("seed", range(4))
def test_lwlrap_is_lrap_when_every_clip_has_one_label(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.eye(6)[rng.integers(0, 6, 50)]
    p = rng.random((50, 6))
    assert METRICS["lwlrap"].score(y, p) == pytest.approx(label_ranking_average_precision_score(y, p))


def test_lwlrap_weighs_every_positive_pair_the_same() -> None:
    y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], float)
    p = np.array([[0.9, 0.8, 0.3, 0.1], [0.2, 0.4, 0.6, 0.1], [0.1, 0.7, 0.6, 0.5]])
    # Precision of each positive pair: positives among the labels ranked at or above it, over its rank.
    #   clip 0: class 0 rank 1 -> 1/1, class 2 rank 3 -> 2/3                       clip LRAP 5/6
    #   clip 1: class 1 rank 2 -> 1/2                                              clip LRAP 1/2
    #   clip 2: class 1 rank 1 -> 1/1, class 2 rank 2 -> 2/2, class 0 rank 4 -> 3/4  clip LRAP 11/12
    # lwlrap = (1 + 2/3 + 1/2 + 1 + 1 + 3/4) / 6 = 59/72; plain LRAP = (5/6 + 1/2 + 11/12) / 3 = 54/72.
    assert METRICS["lwlrap"].score(y, p) == pytest.approx(59 / 72)
    assert label_ranking_average_precision_score(y, p) == pytest.approx(54 / 72)
    # A clip without a positive carries no pair and changes nothing; soft labels count from 0.5.
    assert METRICS["lwlrap"].score(np.vstack([y * 0.8, np.zeros(4)]), np.vstack([p, np.ones(4)])) == \
        pytest.approx(59 / 72)


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_roc_auc_is_the_macro_mean_over_classes_with_both_kinds(seed: int) -> None:
    y, p = random_multilabel(seed)
    y[:2] = [[1] * 5, [0] * 5]  # every class has a positive and a negative
    auc = METRICS["roc_auc"].score(y, p)
    assert auc == pytest.approx(roc_auc_score(y, p, average="macro"))
    y[:, 1] = 0  # no positive: skipped
    y[:, 3] = 1  # no negative: skipped
    kept = [0, 2, 4]
    assert METRICS["roc_auc"].score(y, p) == pytest.approx(roc_auc_score(y[:, kept], p[:, kept], average="macro"))
    assert math.isnan(METRICS["roc_auc"].score(np.zeros((6, 3)), p[:6, :3]))


def test_cmap_on_a_worked_example() -> None:
    y = np.array([[1, 0], [0, 1], [0, 1]], float)
    p = np.array([[0.2, 0.5], [0.8, 0.6], [0.1, 0.4]])
    # Five padding rows, truth 1 and prediction 1, rank above every real clip in both classes.
    #   class 0, 6 positives, ranked: 5 pads (+), 0.8 (-), 0.2 (+), 0.1 (-)
    #     AP = sum of precision at each positive, over 6 = (5*1 + 6/7) / 6 = 41/42
    #   class 1, 7 positives, ranked: 5 pads (+), 0.6 (+), 0.5 (-), 0.4 (+)
    #     AP = (6*1 + 7/8) / 7 = 55/56
    # cmap = (41/42 + 55/56) / 2 = 47/48   (unpadded it would be (1/2 + 5/6) / 2 = 2/3)
    assert METRICS["cmap"].score(y, p) == pytest.approx(47 / 48)


def test_cmap_counts_a_class_without_positives_as_perfect() -> None:
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]], float)
    for third in ([0.0, 0.0, 0.0], [0.99, 0.9, 0.95]):  # whatever is predicted for the class no clip has
        p = np.array([[0.2, 0.5, third[0]], [0.8, 0.6, third[1]], [0.1, 0.4, third[2]]])
        assert METRICS["cmap"].score(y, p) == pytest.approx((41 / 42 + 55 / 56 + 1) / 3)


@pytest.mark.parametrize("seed", range(3))
def test_macro_f1_threshold_is_sklearn_f1_on_predictions_at_half(seed: int) -> None:
    y, p = random_multilabel(seed)
    expected = f1_score(y.astype(int), (p >= 0.5).astype(int), average="macro", zero_division=0)
    assert METRICS["macro_f1_threshold"].score(y, p) == pytest.approx(expected)
    # By hand: class 0 has TP 1, FP 1, FN 0 -> F1 2/3; class 1 has TP 1 (0.5 is positive) -> 1; mean 5/6.
    assert METRICS["macro_f1_threshold"].score(np.array([[1, 1], [0, 0]], float),
                                               np.array([[0.9, 0.5], [0.7, 0.1]])) == pytest.approx(5 / 6)


def test_bce_by_hand() -> None:
    y = np.array([[1, 0], [0.5, 1]])
    p = np.array([[0.8, 0.0], [0.5, 1.0]])
    # -(log 0.8 + log(1 - 1e-15) + log 0.5 + log(1 - 1e-15)) / 4, the clipped zero and one costing ~1e-15 each
    assert METRICS["bce"].score(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.5)) / 4)
    assert math.isfinite(METRICS["bce"].score(np.array([[1.0]]), np.array([[0.0]])))
    assert not METRICS["bce"].greater_is_better


def test_every_metric_declares_its_tasks_and_the_multilabel_ones_score_random_data() -> None:
    y, p = random_multilabel(7)
    multilabel = [name for name, metric in METRICS.items() if "multilabel" in metric.tasks]
    assert set(multilabel) == {"roc_auc", "lwlrap", "cmap", "macro_f1_threshold", "bce"}
    for name, metric in METRICS.items():
        assert metric.name == name and metric.tasks and set(metric.tasks) <= set(TASKS)
        if name in multilabel:
            score = metric.score(y, p)
            assert isinstance(score, float) and math.isfinite(score), name
