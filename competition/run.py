"""Train an experiment on one fold or on several.

    python -m competition.run exp=default fold=0 [device=cpu|cuda|cuda:N|auto] [overwrite=true] [train.epochs=5 ...]
    python -m competition.run exp=default fold=0 resume=true     # continue an interrupted fold
    python -m competition.run exp=default fold=all [resume=true]  # or fold=0,2,4

A finished fold is used only while what it was made from (config, fold file, training clips) is unchanged. With
several folds, finished current folds are skipped, folds whose TTA views or test clips changed are re-predicted from
their trained models, and stale folds are named with what changed and the command that retrains exactly them; they
are never reused and never retrained without overwrite=true. resume=true continues interrupted folds, a fold trained
by another process is skipped, and a failing fold is reported without stopping the others.
"""
from __future__ import annotations

import sys

from competition.cli import main_guard, parse_bool
from competition.config import Experiment, load_experiment, parse_cli
from competition.errors import UserError
from competition.foldrun import (FoldBusy, can_resume, fold_list, is_finished, partial_dir, retrain_command,
                                 staleness)
from competition.models import check_backbone
from competition.train import DataSet, load_data, train_fold

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
    return list(dict.fromkeys(folds))


def run_folds(exp: Experiment, folds: list[int], data: DataSet, device: str, overwrite: bool, resume: bool) -> None:
    """Bring each fold up to date with the current inputs, touching no finished fold that is not asked for."""
    stale, interrupted, busy, failed = [], [], [], []
    for fold in folds:
        fold_dir, title = exp.fold_dir(fold), f"{exp.name} fold {fold}"
        if can_resume(fold_dir) and not overwrite:  # an interrupted run, possibly retraining a finished fold
            why = staleness(partial_dir(fold_dir), data.inputs)
            if not resume or why.model:
                reason = f"{why.describe()} since it started" if resume else "interrupted"
                print(f"{title}: {reason}, left as it is ({partial_dir(fold_dir)})", file=sys.stderr)
                interrupted.append(fold)
                continue
        elif is_finished(fold_dir) and not overwrite:
            why = staleness(fold_dir, data.inputs)
            if not why:
                print(f"{title}: already finished, skipped ({fold_dir})")
                continue
            if why.model:
                print(f"{title}: stale, not used: {why.describe()} since it was trained", file=sys.stderr)
                stale.append(fold)
                continue
        try:
            train_fold(exp, fold, device, overwrite, resume and can_resume(fold_dir), data)
        except FoldBusy as exc:
            print(f"{title}: skipped: {exc}", file=sys.stderr)
            busy.append(fold)
        except UserError:
            raise  # a mistake in data or config fails every fold alike: stop at the first
        except Exception as exc:  # an unexpected failure of one fold should not cost the others
            print(f"{title}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr)
            failed.append(fold)
    problems = []
    if stale:
        problems.append(f"folds {fold_list(stale)} are stale and were left out; retrain exactly them with "
                        f"{retrain_command(exp.name, stale)}")
    if interrupted:
        problems.append(f"folds {fold_list(interrupted)} are interrupted; continue them with python -m competition.run "
                        f"exp={exp.name} fold={fold_list(interrupted)} resume=true, or restart exactly them with "
                        f"{retrain_command(exp.name, interrupted)}")
    if failed:
        problems.append(f"folds {fold_list(failed)} failed; rerun them with fold={fold_list(failed)}")
    if busy:
        print(f"{exp.name}: folds {fold_list(busy)} are being trained by other processes", file=sys.stderr)
    if problems:
        raise UserError("; ".join(problems))


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    overwrite = parse_bool("overwrite", options["overwrite"])
    resume = parse_bool("resume", options["resume"])
    exp = load_experiment(options["exp"], overrides)
    folds = parse_fold(options["fold"], exp.cfg.folds.n_splits)
    check_backbone(exp.cfg.model.name)  # before any audio is decoded
    if len(folds) == 1:
        train_fold(exp, folds[0], options["device"], overwrite, resume)
        return
    run_folds(exp, folds, load_data(exp), options["device"], overwrite, resume)


if __name__ == "__main__":
    main_guard(main)
