"""The submissions log, `submissions/log.csv`: every answer file written, what made it and what it scored.

Competitors keep, beside each submission, its local scores (OOF, holdout) and the public leaderboard's, to see
whether CV and LB move together. blend and predict log each answer file they write (`log_answer`); the submit
command records its upload and, later, its leaderboard score (`record_lb`); the board plots them. One row per
written answer file: a file written again (overwrite=true) gets a row of its own, since its content changed; a
score is recorded against the newest row of a file's current content (its hash).
"""
from __future__ import annotations

import fcntl
import json
import math
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd

from competition.errors import UserError
from competition.files import atomic_write, file_sha256
from competition.submission import SUBMISSIONS_DIR

LOG = SUBMISSIONS_DIR / "log.csv"
COLUMNS = ["written", "file", "sha256", "report", "experiments", "metric", "oof", "holdout", "submitted", "message",
           "lb"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _locked() -> Iterator[None]:
    """One writer at a time (a blend and a predict may finish together): read, change and replace the log under a
    lock file beside it."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG.with_name(".log.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_log() -> pd.DataFrame:
    """The log, or an empty one; a log that is not one is named."""
    if not LOG.is_file():
        return pd.DataFrame(columns=COLUMNS)
    try:
        log = pd.read_csv(LOG, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{LOG}: unreadable ({str(exc).splitlines()[0]}); move it aside to start a new log") from None
    if list(log.columns) != COLUMNS:
        raise UserError(f"{LOG}: not a submissions log (columns {', '.join(COLUMNS)}); move it aside to start a new "
                        "one")
    return log


def _write(log: pd.DataFrame) -> None:
    atomic_write(LOG, lambda tmp: log.to_csv(tmp, index=False))


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6g}"


def log_answer(answer: Path, report: Path | None, experiments: list[str], metric: str, oof: float | None,
               holdout: float | None) -> None:
    """A row for an answer file just written: its hash, the report beside it, the experiments and local scores."""
    row = {"written": _now(), "file": Path(answer).as_posix(), "sha256": file_sha256(answer),
           "report": "" if report is None else Path(report).as_posix(), "experiments": json.dumps(experiments),
           "metric": metric, "oof": _number(oof), "holdout": _number(holdout), "submitted": "", "message": "", "lb": ""}
    with _locked():
        log = read_log()
        _write(pd.concat([log, pd.DataFrame([row])], ignore_index=True))


def logged_row(log: pd.DataFrame, answer: Path) -> int:
    """The newest row of `answer` as it is now (same hash); an unlogged or since-changed file is refused."""
    if not Path(answer).is_file():
        raise UserError(f"{answer}: no such answer file")
    digest = file_sha256(answer)
    rows = log.index[(log["file"] == Path(answer).as_posix()) & (log["sha256"] == digest)]
    if not len(rows):
        raise UserError(f"{answer} is not in {LOG} as it is now (written by hand, or changed since blend or predict "
                        "wrote it); write it with python -m competition.blend or competition.predict")
    return int(rows[-1])


def record(answer: Path, **values: str) -> None:
    """Set columns (submitted, message, lb) of the newest row of `answer`'s current content."""
    with _locked():
        log = read_log()
        row = logged_row(log, answer)
        for column, value in values.items():
            log.loc[row, column] = value
        _write(log)


def record_lb(answer: Path, score: float) -> None:
    if not math.isfinite(score):
        raise UserError(f"lb={score}: give the leaderboard score as a number")
    record(answer, lb=_number(score))


def record_submitted(answer: Path, message: str) -> None:
    record(answer, submitted=_now(), message=message)
