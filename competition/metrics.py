"""Scores on class probabilities, by name, so training, early stopping and blending agree on one definition."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn import metrics


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[np.ndarray, np.ndarray], float]  # (true class indices, probabilities (n, classes))
    greater_is_better: bool = True

    def better(self, new: float, old: float | None) -> bool:
        return old is None or (new > old if self.greater_is_better else new < old)


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Binary ROC AUC, or the macro one-vs-rest mean over the classes present in `y`: a class without clips has no
    AUC, and letting it make the whole score NaN would blind early stopping. NaN only with fewer than two classes."""
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return metrics.roc_auc_score(y, p[:, 1])
    return float(np.mean([metrics.roc_auc_score(y == c, p[:, c]) for c in present]))


METRICS = {
    "accuracy": Metric("accuracy", lambda y, p: metrics.accuracy_score(y, p.argmax(1))),
    "balanced_accuracy": Metric("balanced_accuracy", lambda y, p: metrics.balanced_accuracy_score(y, p.argmax(1))),
    "macro_f1": Metric("macro_f1", lambda y, p: metrics.f1_score(y, p.argmax(1), average="macro")),
    "log_loss": Metric("log_loss", lambda y, p: metrics.log_loss(y, p, labels=np.arange(p.shape[1])), False),
    "roc_auc": Metric("roc_auc", _roc_auc),
}
