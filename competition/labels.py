"""Pseudo-labels: clips without labels (the test set, or a set competition.predict named) labelled by other
experiments' fold models, trained on beside the labelled clips (the config's `pseudo` section).

Fold k of a pseudo-labelled experiment takes its labels from the sources' fold k models alone. Those models trained on
the other folds' clips and never saw fold k's validation clips, so nothing learnt from those clips reaches the model
scored on them, and its OOF score stays an honest estimate. Labels from a blend of all folds would leak: the other
folds' models trained on fold k's validation clips, and their labels on the unlabelled clips carry what they learnt
there (the voices, the recording conditions, even mistakes in fold k's labels) into the model validated on fold k. The
pseudo-labelled clips join the training clips only, never a validation fold or the holdout.

A fold records the SHA-256 of the prediction files that labelled it, so it goes stale when they change (a source
fold retrained), and only that fold.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from competition.config import EXPERIMENTS_DIR
from competition.errors import UserError
from competition.foldrun import DONE, read_record
from competition.predictions import read_preds
from competition.task import Task


@dataclass
class FoldLabels:
    """The unlabelled clips one fold trains on, with the sources' probabilities for them."""

    ids: np.ndarray  # the clips sure enough (Task.sure: pseudo.threshold)
    probs: np.ndarray  # (clips, classes): the sources' mean probabilities, in the experiment's class order
    offered: int  # clips labelled, before the threshold
    digest: str  # SHA-256 over the prediction files they come from


def labelling_folds(fold: int) -> list[int]:
    """The source folds whose models label fold `fold`'s clips: fold `fold` alone (see the module docstring)."""
    return [fold]


def predictions_file(cfg: DictConfig) -> str:
    """The file of each source fold that holds its predictions on the clips to label."""
    return f"test-{cfg.pseudo.test}.csv" if cfg.pseudo.test else "test.csv"


def fold_labels(cfg: DictConfig, task: Task, classes: list[str], fold: int, fold_file: str) -> FoldLabels:
    """Fold `fold`'s pseudo-labels: each source's fold models' probabilities (their TTA views averaged), averaged over
    the sources, the clips not sure to pseudo.threshold left out (Task.sure). The sources must have been trained on
    this experiment's fold file (its SHA-256 `fold_file`): on other folds their fold k would have trained on this fold
    k's clips."""
    digest, parts = hashlib.sha256(), []
    for source in cfg.pseudo.source:
        for k in labelling_folds(fold):
            fold_dir = EXPERIMENTS_DIR / source / f"fold_{k}"
            try:
                done = json.loads((fold_dir / DONE).read_text())
            except (OSError, json.JSONDecodeError):
                raise UserError(f"pseudo.source: {source} fold {k} is not finished ({fold_dir / DONE} is missing or "
                                f"unreadable); train it with python -m competition.run exp={source} fold=all") from None
            made_from = read_record(fold_dir)
            if made_from is None or made_from.fold_file != fold_file:
                raise UserError(f"pseudo.source: {source} fold {k} was not trained on this experiment's fold file "
                                f"(folds/{cfg.data.name}.csv), so its models may have seen this fold's validation "
                                "clips; label with experiments trained on the same folds")
            if sorted(done.get("classes", [])) != sorted(classes):
                raise UserError(f"pseudo.source: {source} fold {k} has other classes than this experiment's; label "
                                "with experiments of the same contest")
            path = fold_dir / predictions_file(cfg)
            if not path.is_file():
                how = (f"predict them with python -m competition.predict exps={source} test=<folder> "
                       f"name={cfg.pseudo.test}") if cfg.pseudo.test else "set data.test and retrain it"
                raise UserError(f"pseudo.source: {path} is missing, so {source} fold {k} has no predictions to label "
                                f"with; {how}")
            digest.update(f"{source}/fold_{k}/{path.name}\0".encode() + path.read_bytes())
            parts.append(read_preds(path, classes, list(done.get("tta_views", [])) or None).take(True))
    ids = parts[0].ids
    probs = np.zeros((len(ids), len(classes)))
    for part in parts:
        position = pd.Index(part.ids).get_indexer(ids)
        if len(part.ids) != len(ids) or (position < 0).any():
            raise UserError(f"pseudo.source: {', '.join(cfg.pseudo.source)} predicted different clips in their "
                            f"{predictions_file(cfg)}; predict the same set with each")
        probs += part.p[position] / len(parts)
    keep = task.sure(probs, cfg.pseudo.threshold)
    return FoldLabels(ids[keep], probs[keep], len(ids), digest.hexdigest())
