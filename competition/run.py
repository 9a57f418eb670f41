"""Train an experiment on one fold or on all of them.

    python -m competition.run exp=default fold=0 [device=cpu|cuda|cuda:N|auto] [overwrite=true] [train.epochs=5 ...]
    python -m competition.run exp=default fold=0 resume=true     # continue an interrupted fold
    python -m competition.run exp=default fold=all [resume=true]

With fold=all, finished folds are skipped (a night's work is never redone or lost), resume=true continues the
interrupted ones and starts the rest, and a failing fold is reported without stopping the others.
"""
from __future__ import annotations

import sys

from competition.cli import main_guard, parse_bool
from competition.config import load_experiment, parse_cli
from competition.errors import UserError
from competition.train import can_resume, is_finished, train_fold

COMMAND_KEYS = {"exp": "default", "fold": "0", "device": "auto", "overwrite": "false", "resume": "false"}


def parse_fold(value: str, n_splits: int) -> list[int]:
    if value == "all":
        return list(range(n_splits))
    folds = []
    for item in value.split(","):
        if not item.strip().lstrip("-").isdigit():
            raise UserError(f"fold={value}: expected a fold number, a comma-separated list or 'all'")
        folds.append(int(item))
    for fold in folds:
        if not 0 <= fold < n_splits:
            raise UserError(f"fold={fold} is out of range: folds.n_splits is {n_splits} (folds 0..{n_splits - 1})")
    return folds


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    overwrite = parse_bool("overwrite", options["overwrite"])
    resume = parse_bool("resume", options["resume"])
    exp = load_experiment(options["exp"], overrides)
    folds = parse_fold(options["fold"], exp.cfg.folds.n_splits)
    if len(folds) == 1:
        train_fold(exp, folds[0], options["device"], overwrite, resume)
        return
    failed = []
    for fold in folds:
        if is_finished(exp.fold_dir(fold)) and not overwrite:
            print(f"{exp.name} fold {fold}: already finished, skipped ({exp.fold_dir(fold)})")
            continue
        try:
            train_fold(exp, fold, options["device"], overwrite, resume and can_resume(exp.fold_dir(fold)))
        except UserError:
            raise  # a mistake in data or config fails every fold alike: stop at the first
        except Exception as exc:  # an unexpected failure of one fold should not cost the others
            print(f"{exp.name} fold {fold}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr)
            failed.append(fold)
    if failed:
        raise UserError(f"{len(failed)} folds failed: {', '.join(map(str, failed))}; rerun them with fold=<k>")


if __name__ == "__main__":
    main_guard(main)
