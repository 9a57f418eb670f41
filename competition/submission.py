"""The contest's answer file: rendered in its exact format and checked against the test ids before it is written.

The check parses the rendered text back with the contest's own delimiter and header rule, so an id or label that
would break the format (a delimiter inside it, say) is caught as surely as a missing, duplicate or unknown id.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from competition.data import examples
from competition.errors import UserError
from competition.files import atomic_write_text
from competition.task import SINGLE, Task

SUBMISSIONS_DIR = Path("submissions")


def answer_path(name: str, sub: DictConfig) -> Path:
    return SUBMISSIONS_DIR / f"{name}.{sub.extension.lstrip('.')}"


WINDOW_ID = re.compile(r"(?P<recording>.+)_(?P<end>\d+(?:\.\d+)?)")  # competition.cache.windowed's ids


def smoothed(ids: Sequence[str], probs: np.ndarray, sub: DictConfig) -> np.ndarray:
    """With submission.window and submission.smooth = s: each window's probabilities as (1 - 2s) of its own plus s of
    each neighbouring window of the same recording (a missing neighbour's share stays with the window itself)."""
    if not (sub.window and sub.smooth):
        return probs
    windows = pd.Series([WINDOW_ID.fullmatch(clip) for clip in ids])
    frame = pd.DataFrame({"recording": [m["recording"] if m else clip for m, clip in zip(windows, ids)],
                          "end": [float(m["end"]) if m else 0.0 for m in windows]})
    out = probs.copy()
    for _, group in frame.groupby("recording", sort=False):
        order = group.sort_values("end").index.to_numpy()
        for k, row in enumerate(order):
            neighbours = [order[j] for j in (k - 1, k + 1) if 0 <= j < len(order)]
            out[row] = (1 - sub.smooth * len(neighbours)) * probs[row] + sub.smooth * probs[neighbours].sum(0)
    return out


def answer_cells(probs: np.ndarray, classes: Sequence[str], sub: DictConfig, task: Task) -> list[str]:
    """What follows each clip's id: its label (multilabel: its labels at submission.threshold, joined), or with
    submission.columns=classes its probability of each class."""
    if sub.columns == "classes":
        return [sub.delimiter.join(f"{value:.6g}" for value in row) for row in probs]
    return [sub.label_separator.join(labels) for labels in task.answer(probs, list(classes), sub.threshold)]


def _header(classes: Sequence[str], sub: DictConfig) -> str:
    return sub.delimiter.join([sub.id_column, *(classes if sub.columns == "classes" else [sub.label_column])])


def render_answer(ids: Sequence[str], cells: Sequence[str], classes: Sequence[str], sub: DictConfig) -> str:
    """One line per clip, `<id><id_suffix><delimiter><cells>`, after a header line if the contest has one."""
    lines = [_header(classes, sub)] if sub.header else []
    lines += [f"{clip}{sub.id_suffix}{sub.delimiter}{cell}" for clip, cell in zip(ids, cells)]
    return "\n".join(lines) + "\n"


def _bad_cells(rows: list[list[str]], classes: Sequence[str], sub: DictConfig, task: Task) -> str:
    """What is wrong with the answers after the ids: labels that are not classes, or probabilities that are not."""
    if sub.columns == "classes":
        bad = [value for row in rows for value in row[1:] if not _probability(value)]
        return f"values that are not probabilities ({examples(bad)})" if bad else ""
    separator = sub.label_separator if sub.label_separator.strip() else None  # None: any whitespace
    found = {label for row in rows for label in (row[1].split(separator) if task.multilabel else [row[1]])}
    labels = sorted(found - set(classes))
    return f"labels that are not classes ({examples(labels)})" if labels else ""


def _probability(value: str) -> bool:
    try:
        return 0.0 <= float(value) <= 1.0
    except ValueError:
        return False


def check_answer(text: str, test_ids: Sequence[str], classes: Sequence[str], sub: DictConfig, origin: str,
                 task: Task = SINGLE) -> None:
    """Refuse anything but exactly one row per test id, each with a known label (or a probability per class), in the
    contest's format."""
    if not sub.delimiter:
        raise UserError(f"{origin}: submission.delimiter is empty; set the contest's separator, e.g. ',' or a tab")
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    if sub.header:
        expected = _header(classes, sub)
        if not lines or lines[0] != expected:
            raise UserError(f"{origin}: the header is {lines[0][:200] if lines else ''!r}, expected {expected[:200]!r}")
        lines = lines[1:]
    rows = [line.split(sub.delimiter) for line in lines]
    fields = 1 + (len(classes) if sub.columns == "classes" else 1)
    malformed = [line for line, row in zip(lines, rows) if len(row) != fields]
    if malformed:
        shape = f"<id>{sub.delimiter!r}<label>" if fields == 2 else f"<id> and {len(classes)} probabilities"
        raise UserError(f"{origin}: {len(malformed)} lines are not {shape} "
                        f"(e.g. {malformed[0][:200]!r}); an id or label contains the delimiter, or a line is empty")
    counts = Counter(row[0] for row in rows)
    expected_ids = {f"{clip}{sub.id_suffix}" for clip in test_ids}
    problems = []
    missing = sorted(expected_ids - counts.keys())
    if missing:
        problems.append(f"{len(missing)} test ids missing ({examples(missing)})")
    duplicate = sorted(clip for clip, n in counts.items() if n > 1)
    if duplicate:
        problems.append(f"{len(duplicate)} ids on more than one line ({examples(duplicate)})")
    unknown = sorted(counts.keys() - expected_ids)
    if unknown:
        problems.append(f"{len(unknown)} ids that are not test clips ({examples(unknown)})")
    bad = _bad_cells(rows, classes, sub, task)
    if bad:
        problems.append(bad)
    if problems:
        raise UserError(f"{origin}: not a valid answer: {'; '.join(problems)}")


def write_answer(path: Path, ids: Sequence[str], cells: Sequence[str], test_ids: Sequence[str],
                 classes: Sequence[str], sub: DictConfig, task: Task = SINGLE) -> None:
    """Render, check against the test ids, then write atomically: a refused answer leaves no file behind."""
    text = render_answer(ids, cells, classes, sub)
    check_answer(text, test_ids, classes, sub, str(path), task)
    atomic_write_text(path, text)
