"""A fold folder, one thing with one owner: its lock, its `fold_<k>.partial/` -> `fold_<k>/` lifecycle with the
completion marker `DONE` written last, and the record of what it was made from, which every consumer (run, blend, and
later the queue, tune and predict) checks before it uses the fold.

A fold's model is made from the resolved config, the fold file and the training clips; its predictions also from the
TTA views and the test clips. `made_from.json` records them when the fold starts (so that a resume is checked too) and
again whenever its predictions are redone. A model made from other inputs than the current ones is stale and must be
retrained; predictions made from other views or other test clips can be redone from the kept model.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from competition.config import Experiment, config_changes
from competition.errors import UserError
from competition.files import atomic_write_text

DONE = "DONE"
LAST = "last.pt"
MADE_FROM = "made_from.json"
# Config keys that do not change what a model learns: the prediction inputs (recorded apart), the search space, the
# dashboards, the answer format, where the data and the cache live (the clips' content is fingerprinted instead, so a moved data folder keeps its folds),
# worker counts and the evaluation batch size.
NOT_MODEL_KEYS = ("tta", "tune", "tracking", "data.test", "submission", "data.train.path", "data.train.subdir", "data.cache_dir",
                  "data.workers", "train.eval_batch_size", "train.workers")


@dataclass(frozen=True)
class Inputs:
    """What a fold is made from: the resolved config with the command-line overrides that went into it, the fold
    file's content hash, fingerprints of the decoded training and test clips (None: no test set) and, per fold, the
    SHA-256 of the predictions that pseudo-labelled its extra training clips (competition.labels)."""

    config: dict[str, Any]
    overrides: list[str]
    fold_file: str
    train_data: str
    test_data: str | None
    pseudo_labels: dict[str, str] = field(default_factory=dict)  # fold number -> digest

    @property
    def views(self) -> list[str]:
        return list(self.config["tta"]["views"])


@dataclass
class Staleness:
    """Why a fold cannot be used as it is: its model must be retrained, or only its predictions redone."""

    model: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.model or self.predictions)

    def describe(self) -> str:
        return "; ".join(self.model or self.predictions)


def partial_dir(fold_dir: Path) -> Path:
    return fold_dir.with_name(f"{fold_dir.name}.partial")


def is_finished(fold_dir: Path) -> bool:
    return (fold_dir / DONE).is_file()


def can_resume(fold_dir: Path) -> bool:
    return (partial_dir(fold_dir) / LAST).is_file()


def record(folder: Path, inputs: Inputs) -> None:
    atomic_write_text(folder / MADE_FROM, json.dumps(asdict(inputs), indent=1) + "\n")


def read_record(folder: Path) -> Inputs | None:
    """The recorded inputs, or None for a fold without a (readable) record, which therefore cannot be trusted."""
    try:
        return Inputs(**json.loads((folder / MADE_FROM).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _is_model_key(key: str) -> bool:
    return not any(key == prefix or key.startswith(f"{prefix}.") for prefix in NOT_MODEL_KEYS)


def _changes(recorded: dict, current: dict) -> str:
    changes = [f"{key} {old!r} -> {new!r}" for key, (old, new) in config_changes(recorded, current).items()
               if _is_model_key(key)]
    shown = ", ".join(changes[:4])
    return f"{shown} and {len(changes) - 4} more" if len(changes) > 4 else shown


def fold_number(folder: Path) -> int:
    """The fold of a fold folder or its work folder (fold_<k>, fold_<k>.partial)."""
    return int(folder.name.removeprefix("fold_").removesuffix(".partial"))


def staleness(folder: Path, current: Inputs) -> Staleness:
    """What differs between the inputs a fold (or its interrupted work folder) recorded and the current ones."""
    return differences(read_record(folder), current, fold_number(folder))


def differences(recorded: Inputs | None, current: Inputs, fold: int | None = None) -> Staleness:
    """What differs between recorded inputs (None: no record) and the current ones: for one fold's pseudo-labels when
    `fold` is given, else for every fold's."""
    if recorded is None:
        return Staleness(model=["no record of what it was made from"])
    stale = Staleness()
    changed = _changes(recorded.config, current.config)
    if changed:
        stale.model.append(f"config changed: {changed}")
    if recorded.fold_file != current.fold_file:
        stale.model.append(f"the fold file folds/{current.config['data']['name']}.csv changed")
    if recorded.train_data != current.train_data:
        stale.model.append("the training clips changed")
    recorded_labels, current_labels = recorded.pseudo_labels, current.pseudo_labels
    if fold is not None:
        recorded_labels, current_labels = recorded_labels.get(str(fold)), current_labels.get(str(fold))
    if recorded_labels != current_labels:
        sources = ", ".join(current.config.get("pseudo", {}).get("source", [])) or "none now"
        stale.model.append(f"the predictions that pseudo-label its extra clips changed (pseudo.source: {sources})")
    if recorded.views != current.views:
        stale.predictions.append(f"tta.views changed ({', '.join(recorded.views)} -> {', '.join(current.views)})")
    if current.test_data is not None and recorded.test_data != current.test_data:
        stale.predictions.append("the test clips changed" if recorded.test_data else "a test set was added")
    return stale


def lock_path(fold_dir: Path) -> Path:
    return fold_dir.with_name(f".{fold_dir.name}.lock")


class FoldBusy(UserError):
    """The fold is being trained by another process, named by host and pid."""


class FoldFinished(UserError):
    """The fold is already finished from the current inputs, and overwrite was not asked for."""


@contextmanager
def fold_lock(fold_dir: Path) -> Iterator[None]:
    """One process per fold, on this machine or another sharing the folder. The lock is the kernel's (flock), so a
    dead owner never blocks anyone; the file names the live owner for the message."""
    fold_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(fold_dir), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "owner unknown"
            raise FoldBusy(f"{fold_dir} is being trained by another process ({owner}); wait for it or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        yield


def start_work(work: Path, inputs: Inputs, save_config: Callable[[Path], None]) -> None:
    """A fresh work folder holding the resolved config and the inputs record, before any training."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_config(work / "config.yaml")
    record(work, inputs)


def discard_unresumable(work: Path) -> None:
    """A work folder without a checkpoint holds nothing to resume: remove it rather than leave an 'unfinished' fold."""
    if work.is_dir() and not (work / LAST).is_file():
        shutil.rmtree(work)


def publish(work: Path, fold_dir: Path, summary: dict) -> None:
    """Write DONE last, then move the work folder into place; a fold it replaces goes only once the new one is in."""
    (work / LAST).unlink(missing_ok=True)  # optimiser state is for resuming; a finished fold keeps the best weights
    atomic_write_text(work / DONE, json.dumps(summary, indent=2))
    old = fold_dir.with_name(f".{fold_dir.name}.old-{os.getpid()}")
    if fold_dir.exists():
        fold_dir.rename(old)
    work.rename(fold_dir)
    shutil.rmtree(old, ignore_errors=True)


def finished_folds(exp_dir: Path) -> dict[int, Path]:
    """Finished fold folders of an experiment by fold number."""
    found = {}
    for path in exp_dir.glob("fold_*"):
        number = path.name[len("fold_"):]
        if number.isdigit() and is_finished(path):
            found[int(number)] = path
    return found


def made_from_other_fold_file(experiments: Path, data_name: str, fold_file: str) -> dict[str, dict[int, list[str]]]:
    """Per experiment, the trained or interrupted folds on `data_name`'s fold file whose record names another version
    of it (what remaking that fold file makes stale), each with the command-line overrides it was made with."""
    found: dict[str, dict[int, list[str]]] = {}
    for folder in sorted(experiments.glob("*/fold_*")):
        number = folder.name[len("fold_"):].removesuffix(".partial")
        recorded = read_record(folder)
        if number.isdigit() and recorded and recorded.config["data"]["name"] == data_name \
                and recorded.fold_file != fold_file:
            found.setdefault(folder.parent.name, {})[int(number)] = recorded.overrides
    return found


def commands_per_overrides(exp: str, folds: dict[int, Sequence[str]], command: Callable[..., str]) -> list[str]:
    """`command` for exactly these folds, one per set of overrides the folds were made with (most share one)."""
    grouped: dict[tuple[str, ...], list[int]] = {}
    for number, overrides in sorted(folds.items()):
        grouped.setdefault(tuple(overrides), []).append(number)
    return [command(exp, numbers, overrides) for overrides, numbers in grouped.items()]


def fold_list(folds: list[int]) -> str:
    """Fold numbers as `fold=` takes them: 0,2,4."""
    return ",".join(map(str, sorted(folds)))


def run_command(exp: str, folds: list[int], overrides: Sequence[str] = (), *options: str) -> str:
    """The `run` command for exactly these folds with these config overrides, shell-quoted. A hint must carry the
    overrides its fold is made with: without them, following it would make the fold with other settings."""
    args = [f"exp={exp}", f"fold={fold_list(folds)}", *options, *overrides]
    return "python -m competition.run " + " ".join(shlex.quote(arg) for arg in args)


def retrain_command(exp: str, folds: list[int], overrides: Sequence[str] = ()) -> str:
    return run_command(exp, folds, overrides, "overwrite=true")


def repredict_command(exp: str, folds: list[int], overrides: Sequence[str] = ()) -> str:
    return run_command(exp, folds, overrides)


def resume_command(exp: Experiment, folds: list[int]) -> str:
    """Continue interrupted folds with the overrides each was started with (from its work folder's record), not the
    current command's: a resume from other settings is refused. Folds started with other overrides get a command
    each."""
    started_with: dict[int, Sequence[str]] = {}
    for fold in folds:
        recorded = read_record(partial_dir(exp.fold_dir(fold)))
        started_with[fold] = recorded.overrides if recorded else exp.overrides
    return " and ".join(commands_per_overrides(
        exp.name, started_with, lambda name, numbers, overrides: run_command(name, numbers, overrides, "resume=true")))


def timestamp(when: float | None = None) -> str:
    """Local time with its offset, to the millisecond (now, or a time.time() value): when a fold or a job ran."""
    return datetime.fromtimestamp(time.time() if when is None else when).astimezone().isoformat(timespec="milliseconds")
