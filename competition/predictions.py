"""The prediction files a fold writes (oof.csv, holdout.csv, test.csv, test-<name>.csv), read back: the contract
between training and everything that uses its predictions (blend, predict, pseudo-labels).

Long format: one row per clip and TTA view (id, view, [label,] one column per class)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.config import EXPERIMENTS_DIR
from competition.errors import UserError
from competition.task import SINGLE, Task


@dataclass
class Probs:
    """Probabilities (clips, classes) for a list of clips and, where known, their labels (class indices, or for
    multi-label contests a (clips, classes) 0/1 matrix)."""

    ids: np.ndarray
    y: np.ndarray | None
    p: np.ndarray


@dataclass
class ViewPreds:
    """One model's predictions on one set of clips, one array per TTA view; the first view is the plain one."""

    ids: np.ndarray
    y: np.ndarray | None
    views: dict[str, np.ndarray]

    def take(self, tta: bool) -> Probs:
        views = list(self.views.values())
        return Probs(self.ids, self.y, np.mean(views, axis=0) if tta else views[0])


def read_preds(path: Path, classes: list[str], views: list[str] | None, task: Task = SINGLE) -> ViewPreds:
    """A long-format prediction file (id, view, [label,] one column per class) as one array per view (`views`, or
    those in the file, in its order), with the labels encoded for `task`."""
    try:
        frame = pd.read_csv(path, dtype={"id": str, "view": str, "label": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read predictions ({str(exc).splitlines()[0]})") from None
    lacking = [column for column in ["id", *classes] if column not in frame.columns]
    if lacking:
        raise UserError(f"{path}: lacks the columns {', '.join(lacking)} that DONE promises; retrain the fold "
                        "with overwrite=true")
    if "view" not in frame.columns:  # written before test-time views existed: one, plain, view
        frame["view"] = (views or ["plain"])[0]
    views = views or list(dict.fromkeys(frame["view"]))
    values = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)  # half of float64 on big tests
    bad = ~(np.isfinite(values) & (values >= 0)).all(1)
    if bad.any():
        row = frame.iloc[int(bad.argmax())]
        raise UserError(f"{path}: {bad.sum()} rows hold NaN, infinite or negative probabilities (e.g. clip "
                        f"{row['id']}, view {row['view']}); retrain the fold with overwrite=true")
    first = (frame["view"] == views[0]).to_numpy()
    ids = frame["id"].to_numpy()[first]
    if len(set(ids)) < len(ids):
        raise UserError(f"{path}: clips appear more than once in view {views[0]}; retrain the fold with overwrite=true")
    arrays = {}
    for view in views:
        rows = (frame["view"] == view).to_numpy()
        index = pd.Index(frame["id"].to_numpy()[rows])
        position = index.get_indexer(ids) if index.is_unique else np.array([-1])
        if rows.sum() != len(ids) or (position < 0).any():
            raise UserError(f"{path}: view {view} does not cover the clips of view {views[0]} once each; retrain the "
                            "fold with overwrite=true")
        arrays[view] = values[rows][position]
    y = None
    if "label" in frame.columns:
        labels = frame["label"][first]
        unknown = sorted(set(task.classes(labels)) - set(classes))
        if unknown:
            raise UserError(f"{path}: label {unknown[0]!r} is not one of the classes in DONE")
        y = task.encode(labels, classes)
    return ViewPreds(ids, y, arrays)


def test_record(experiment: str, name: str) -> Path:
    """Where predict records the test set it predicted under `name` for an experiment: its source, clips, content."""
    return EXPERIMENTS_DIR / experiment / f"test-{name}.json"


def recorded_source(experiment: str, name: str) -> dict:
    """Where predict read the test set it named `name` for `experiment` (path and source keys), from its record."""
    path = test_record(experiment, name)
    try:
        return dict(json.loads(path.read_text())["source"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} is missing or unreadable; predict that set with python -m competition.predict "
                        f"exps={experiment} test=<folder> name={name}") from None
