"""What kind of answer a contest wants (`data.task`): one class per clip, or any number of them.

The task travels with the data: readers, folds, the loss, the probabilities, the metrics, the combiners and the
answer file each ask it once, here, instead of branching on it where they work.

- `single`: one class per clip. Labels are class indices, targets one-hot, the output a softmax, its rows sum to one.
- `multilabel`: any number of classes per clip, none included (Freesound tagging, BirdCLEF windows). Labels are a
  (clips, classes) matrix of 0/1 (soft labels: probabilities), the output one sigmoid per class, the loss binary
  cross-entropy (focal with train.focal_gamma > 0). In tables a clip's labels are one string, its classes sorted and
  joined by the contest's `data.train.label_separator`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from omegaconf import DictConfig

if TYPE_CHECKING:  # torch is imported where a model is trained or run: data, folds and answers do without it
    import torch


@dataclass(frozen=True)
class Task:
    name: str
    separator: str  # between a clip's labels in a table; "" for single-label contests

    @property
    def multilabel(self) -> bool:
        return self.name == "multilabel"

    @property
    def loss_metric(self) -> str:
        """The metric the training loss is reported as (validation loss)."""
        return "bce" if self.multilabel else "log_loss"

    @property
    def reported(self) -> str:
        """The metric every fold reports beside train.metric, so that any two folds can be compared."""
        return "lwlrap" if self.multilabel else "accuracy"

    def split(self, label: str) -> list[str]:
        """A table's label string as its classes (a single-label clip's one; a multi-label clip may have none)."""
        if not self.multilabel:
            return [label]
        parts = label.split(self.separator) if self.separator.strip() else label.split()
        return sorted({part.strip() for part in parts if part.strip()})

    def join(self, classes: list[str]) -> str:
        return self.separator.join(sorted(set(classes)))

    def explode(self, table: pd.DataFrame) -> pd.DataFrame:
        """One row per (row of `table`, class in its label): what counting clips per class counts."""
        if not self.multilabel:
            return table
        return table.assign(label=table["label"].map(self.split)).explode("label").dropna(subset=["label"])

    def classes(self, labels: pd.Series) -> list[str]:
        return sorted({c for label in labels for c in self.split(label)})

    def encode(self, labels: pd.Series, classes: list[str]) -> np.ndarray:
        """Class indices (clips,), or for multilabel a (clips, classes) 0/1 matrix; -1 / KeyError for unknown."""
        index = {c: i for i, c in enumerate(classes)}
        if not self.multilabel:
            return labels.map(index).fillna(-1).to_numpy(int)
        y = np.zeros((len(labels), len(classes)), np.float32)
        for row, label in enumerate(labels):
            y[row, [index[c] for c in self.split(label)]] = 1.0
        return y

    def decode(self, y: np.ndarray, classes: list[str]) -> list[str]:
        names = np.asarray(classes)
        if not self.multilabel:
            return list(names[y])
        return [self.join(list(names[row >= 0.5])) for row in y]

    def targets(self, y: np.ndarray, n_classes: int, smoothing: float) -> torch.Tensor:
        """Training targets: one-hot with `smoothing` of the mass spread over all classes; for multilabel each class's
        0/1 moved `smoothing / 2` towards 0.5. Soft targets (pseudo-labels, a single-label (clips, classes) array)
        are smoothed the same way."""
        import torch
        import torch.nn.functional as F

        y = torch.from_numpy(np.asarray(y))
        if not self.multilabel:
            dense = y.float() if y.ndim == 2 else F.one_hot(y.long(), n_classes).float()
            return dense * (1.0 - smoothing) + smoothing / n_classes
        return y.float() * (1.0 - smoothing) + smoothing / 2

    def losses(self, logits: torch.Tensor, targets: torch.Tensor, focal_gamma: float = 0.0) -> torch.Tensor:
        """One loss per sample: cross-entropy against the target distribution, or the binary cross-entropy summed
        over the classes (mean-reduced BCE is tiny with hundreds of classes), focal when `focal_gamma` > 0: each
        class's term scaled by (1 - p_t)^gamma, so the many easy negatives stop drowning the few positives."""
        import torch.nn.functional as F

        logits = logits.float()
        if not self.multilabel:
            return -(targets * logits.log_softmax(-1)).sum(-1)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if focal_gamma > 0:
            p = logits.sigmoid()
            p_true = p * targets + (1 - p) * (1 - targets)
            bce = bce * (1 - p_true).pow(focal_gamma)
        return bce.sum(-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if self.multilabel else logits.float().softmax(-1)

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """Pooled or combined scores as probabilities: rows summing to one for single-label, each in [0, 1] for
        multilabel (where rows summing to one would say that a clip holds one class)."""
        if self.multilabel:
            return np.clip(scores, 0.0, 1.0)
        return scores / scores.sum(-1, keepdims=True)

    def answer(self, probs: np.ndarray, classes: list[str], threshold: float) -> list[list[str]]:
        """Each clip's answer: the most probable class, or every class at `threshold` or above (perhaps none)."""
        if not self.multilabel:
            return [[classes[i]] for i in probs.argmax(1)]
        return [[c for c, hit in zip(classes, row) if hit] for row in probs >= threshold]

    def sure(self, probs: np.ndarray, threshold: float) -> np.ndarray:
        """The clips whose labels a pseudo-label round may take: the most likely class at `threshold` or above, or for
        multilabel every class that sure, present (p >= threshold) or absent (p <= 1 - threshold), since a class
        taken as absent is a label too."""
        if not self.multilabel:
            return probs.max(1) >= threshold
        return np.maximum(probs, 1.0 - probs).min(1) >= threshold

    def hard(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities as labels: the most likely class, or for multilabel every class at 0.5 or above."""
        return (probs >= 0.5).astype(np.float32) if self.multilabel else probs.argmax(1)

    def one_hot(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Labels as a (clips, classes) matrix, whatever the task."""
        return y.astype(np.float32) if self.multilabel else np.eye(n_classes, dtype=np.float32)[y]


def task_of(cfg: DictConfig) -> Task:
    """The config's task; data.task is validated by the config schema (single | multilabel)."""
    if cfg.data.task == "multilabel":
        return Task("multilabel", cfg.data.train.label_separator)
    return SINGLE


SINGLE = Task("single", "")
