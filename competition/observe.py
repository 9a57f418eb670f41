"""The training loop's announcements: a fold tells its observers what happens, without knowing who listens.

The tuner's observer reports each epoch to Optuna (and may stop the fold: pruned), a tracker's mirrors the fold to a
dashboard. Kept apart from competition.train so that what only listens (tracking, blend's mirror) needs no torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class FoldObserver:
    """Told about a fold as it trains, without the training loop knowing who listens: the tuner's observer reports each
    epoch to Optuna and may stop the fold by raising (pruned), a tracker mirrors rows to a dashboard. Override what
    you need; an exception raised here stops the fold like any other (an interrupted fold stays resumable)."""

    def started(self) -> None:
        """Once the fold's training begins (its lock taken, its inputs checked), before its first timed epoch; a fold
        that is refused (finished, stale, busy) never starts."""

    def inputs(self, x: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> None:
        """The first training batch of each epoch as the model sees it: augmented features, (soft) targets."""

    def epoch(self, row: dict) -> None:
        """After each epoch: epoch, train_loss, lr, seconds, val_loss, val_<metric>, val_accuracy."""

    def finished(self, summary: dict) -> None:
        """Once the fold is published: its DONE summary."""
