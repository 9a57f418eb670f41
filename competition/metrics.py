"""Scores on class probabilities, by name, so training, early stopping and blending agree on one definition.

A single-label contest scores `y`, class indices (clips,), against `p`, rows of probabilities that sum to one
(clips, classes). A multi-label contest scores `y`, a float 0/1 array (clips, classes) whose soft values count as
positive from 0.5 where a metric ranks or thresholds, against `p`, independent per-class probabilities (sigmoids)
of the same shape. `Metric.tasks` says which of the two a metric accepts."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np

TASKS = ("single", "multilabel")


def _sklearn() -> ModuleType:
    """sklearn.metrics, imported at the first score: a second of imports that a mistyped command line need not wait
    for (configs name metrics, and are checked before any work starts)."""
    from sklearn import metrics

    return metrics


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[np.ndarray, np.ndarray], float]  # (truth, probabilities (clips, classes)): see the module doc
    greater_is_better: bool = True
    tasks: tuple[str, ...] = ("single",)  # among TASKS: the contests whose `y` and `p` the score understands
    per_clip: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # a score that is the mean of one value
    # per clip: those values, so that a bootstrap resamples them instead of rescoring every resample

    def better(self, new: float, old: float | None) -> bool:
        return old is None or (new > old if self.greater_is_better else new < old)


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Binary ROC AUC, or the macro mean of per-class (one-vs-rest) AUCs over the classes that have both positive and
    negative clips: a class without one of them has no AUC, and letting it make the whole score NaN would blind early
    stopping. NaN only when no class qualifies. Multi-label when `y` is 2-D."""
    if y.ndim == 2:
        positive = y >= 0.5
        counts = positive.sum(0)
        scored = np.flatnonzero((counts > 0) & (counts < len(y)))
        if len(scored) == 0:
            return float("nan")
        return float(np.mean([_sklearn().roc_auc_score(positive[:, c], p[:, c]) for c in scored]))
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(_sklearn().roc_auc_score(y, p[:, 1]))
    return float(np.mean([_sklearn().roc_auc_score(y == c, p[:, c]) for c in present]))


def _lwlrap(y: np.ndarray, p: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (Freesound Audio Tagging 2019): for each positive (clip, label)
    pair, the share of positive labels among the clip's labels scored at least as high; averaged with every pair
    weighing the same, so a clip with many labels counts more than plain LRAP's one vote per clip. That is sklearn's
    LRAP weighted by each clip's number of positives; clips without a positive carry no pair and are left out.
    Computed here in numpy, a block of clips at a time (sklearn's loops over clips: 25 ms on 90 clips, and a paired
    bootstrap scores thousands of resamples)."""
    positive = y >= 0.5
    if not positive.any():
        return float("nan")
    total = 0.0
    block = max(1, 2_000_000 // max(1, p.shape[1]) ** 2)
    for start in range(0, len(p), block):
        scores, hits = p[start:start + block], positive[start:start + block]
        at_least = scores[:, None, :] >= scores[:, :, None]  # [clip, label j, label k]: k scored at least as high as j
        precision = (at_least & hits[:, None, :]).sum(2) / at_least.sum(2)
        total += float((precision * hits).sum())
    return total / int(positive.sum())


def _cmap(y: np.ndarray, p: np.ndarray, padding_factor: int = 5) -> float:
    """Padded class-mean average precision (the BirdCLEF 2021/2022 Kaggle metric): `padding_factor` rows of all ones
    appended to both truth and prediction, then the macro mean of per-class average precision. A class with no
    positive clip would have no average precision; the padding gives every class positives scored at the top, so such
    a class counts as perfect and each real class's score is pulled towards one, as on the leaderboard."""
    pad = np.ones((padding_factor, y.shape[1]))
    truth = np.vstack([y >= 0.5, pad])
    return float(_sklearn().average_precision_score(truth, np.vstack([p, pad]), average="macro"))


def _macro_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Macro F1 over classes of the predictions thresholded at 0.5 (p >= 0.5 is a positive); a class with neither a
    true nor a predicted positive scores 0 rather than a warning."""
    return float(_sklearn().f1_score(y >= 0.5, p >= 0.5, average="macro", zero_division=0))


def _log_loss_per_clip(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each clip's share of sklearn's log loss: minus the log of its true class's probability, rows normalised and
    clipped as sklearn does."""
    q = p / p.sum(1, keepdims=True)
    eps = np.finfo(q.dtype).eps
    return -np.log(np.clip(q[np.arange(len(y)), y], eps, 1 - eps))


def _bce_per_clip(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each clip's binary cross-entropy averaged over its classes, the multi-label log loss: smooth where the ranking
    metrics move in steps, and it takes soft labels as they are. Probabilities are clipped to [1e-15, 1 - 1e-15] so
    one confident mistake costs a large finite amount instead of infinity."""
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q), axis=1)


METRICS = {
    "accuracy": Metric("accuracy", lambda y, p: _sklearn().accuracy_score(y, p.argmax(1))),
    "balanced_accuracy": Metric("balanced_accuracy", lambda y, p: _sklearn().balanced_accuracy_score(y, p.argmax(1))),
    "macro_f1": Metric("macro_f1", lambda y, p: _sklearn().f1_score(y, p.argmax(1), average="macro")),
    "log_loss": Metric("log_loss", lambda y, p: _sklearn().log_loss(y, p, labels=np.arange(p.shape[1])), False,
                       per_clip=_log_loss_per_clip),
    "roc_auc": Metric("roc_auc", _roc_auc, tasks=TASKS),
    "lwlrap": Metric("lwlrap", _lwlrap, tasks=("multilabel",)),
    "cmap": Metric("cmap", _cmap, tasks=("multilabel",)),
    "macro_f1_threshold": Metric("macro_f1_threshold", _macro_f1_threshold, tasks=("multilabel",)),
    "bce": Metric("bce", lambda y, p: float(_bce_per_clip(y, p).mean()), False, tasks=("multilabel",),
                  per_clip=_bce_per_clip),
}
