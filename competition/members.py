"""Finished folds read back as ensemble members: each experiment's current folds and their predictions on the
validation (OOF), holdout and test clips, checked against the inputs they were made from.

Used by blend, predict and pack alike: a fold made from other inputs than today's (config, fold file, training
clips, TTA views, test clips) is refused with the command that brings exactly that fold up to date, or left out and
named (stale=skip).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from competition.cache import load_split, windowed
from competition.config import EXPERIMENTS_DIR, SubmissionConfig, load_experiment, parse_overrides
from competition.data import examples, index_test, with_test_source
from competition.errors import UserError
from competition.foldrun import (DONE, commands_per_overrides, finished_folds, read_record, repredict_command,
                                retrain_command, staleness)
from competition.folds import FOLDS_DIR, read_folds
from competition.metrics import METRICS, Metric
from competition.predictions import Probs, ViewPreds, read_preds, test_record
from competition.task import SINGLE, Task, task_of


@dataclass
class TestSet:
    """The clips an answer file must cover: the configured test set, or one that predict named."""

    ids: list[str]
    unreadable: list[str]  # answered with the training clips' class frequencies (the most frequent class)


@dataclass
class FoldRun:
    """A finished fold: its model's predictions on its validation clips, the locked holdout and the test set."""

    number: int
    dir: Path
    classes: list[str]
    oof: ViewPreds
    holdout: ViewPreds | None
    test: ViewPreds | None


@dataclass
class Member:
    """One experiment's finished folds, blended as one model."""

    name: str
    cfg: DictConfig  # the experiment's current config, not the one its folds were trained with
    folds: list[FoldRun]
    left_out: list[str]
    n_train: int  # clips in the training folds, which the folds' OOF predictions should cover together

    def oof(self, tta: bool) -> tuple[Probs, np.ndarray]:
        """Every validation clip once, predicted by the one fold model that never trained on it; and its fold."""
        parts = [fold.oof.take(tta) for fold in self.folds]
        folds = np.concatenate([np.full(len(part.ids), fold.number) for part, fold in zip(parts, self.folds)])
        return Probs(np.concatenate([part.ids for part in parts]), np.concatenate([part.y for part in parts]),
                     np.concatenate([part.p for part in parts])), folds


def load_fold(fold_dir: Path, number: int, classes: list[str] | None, reference: str, test: str = "",
              task: Task = SINGLE) -> FoldRun:
    """A finished fold, its class columns read in the order `classes` (the first fold's) when given; its test
    predictions are those of the test set predict named `test`, when given."""
    try:
        done = json.loads((fold_dir / DONE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{fold_dir / DONE}: unreadable ({exc}); retrain the fold with overwrite=true") from None
    if not isinstance(done, dict) or not isinstance(done.get("classes"), list):
        raise UserError(f"{fold_dir / DONE}: no class list; retrain the fold with overwrite=true")
    if classes is not None and set(done["classes"]) != set(classes):
        ours, theirs = set(done["classes"]) - set(classes), set(classes) - set(done["classes"])
        raise UserError(f"{fold_dir} has other classes than {reference} (only here: {', '.join(sorted(ours)) or '-'}; "
                        f"only there: {', '.join(sorted(theirs)) or '-'}); blend experiments of one contest")
    classes = classes or list(done["classes"])
    views = list(done.get("tta_views", ["plain"]))
    splits = {}
    for split in ("oof", "holdout", "test"):
        path = fold_dir / f"{split}.csv"
        preds = read_preds(path, classes, views, task) if path.is_file() else None
        splits[split] = preds if preds is not None and len(preds.ids) else None
    if test:
        path = fold_dir / f"test-{test}.csv"
        if not path.is_file():
            raise UserError(f"{path} is missing: this fold was trained after test set {test} was predicted; predict "
                            f"it again with python -m competition.predict exps=... test=<its folder> name={test}")
        # the views predict used, which tta.views= may have changed
        splits["test"] = read_preds(path, classes, None, task)
    if splits["oof"] is None or splits["oof"].y is None:
        raise UserError(f"{fold_dir}: no labelled oof.csv; retrain the fold with overwrite=true")
    return FoldRun(number, fold_dir, classes, **splits)


def current_folds(name: str, done: dict[int, Path]) -> tuple[DictConfig, int, dict[int, Path],
                                                             dict[int, tuple[str, str, tuple[str, ...]]]]:
    """The experiment's current config, its number of training-fold clips, its finished folds made from the current
    inputs, and for the others what they need (retrain or re-predict) and why. Each fold is judged with the
    command-line overrides it was trained with (the config is read with the first fold's), so folds trained with
    e.g. data.train.path=... on the command line blend without repeating it."""
    from competition.train import DataSet, load_data  # torch and timm only when folds are actually checked

    current: dict[tuple[str, ...], tuple[DictConfig, DataSet]] = {}
    fresh, stale = {}, {}
    for number, fold_dir in sorted(done.items()):
        recorded = read_record(fold_dir)
        overrides = tuple(recorded.overrides) if recorded else ()
        if overrides not in current:
            exp = load_experiment(name, list(overrides))
            current[overrides] = exp.cfg, load_data(exp)
        why = staleness(fold_dir, current[overrides][1].inputs)
        if why:
            stale[number] = ("retrain" if why.model else "re-predict", why.describe(), overrides)
        else:
            fresh[number] = fold_dir
    cfg, data = next(iter(current.values()))
    return cfg, int((data.folds >= 0).sum()), fresh, stale


def stale_message(stale: dict[str, dict[int, tuple[str, str, tuple[str, ...]]]]) -> str:
    """Each stale fold with its reason, and per experiment the commands that bring exactly those folds up to date,
    each with the command-line overrides the folds were made with."""
    reasons, commands = [], []
    for name, folds in stale.items():
        reasons += [f"{name} fold {number}: {why}" for number, (_, why, _) in folds.items()]
        for action, command in (("retrain", retrain_command), ("re-predict", repredict_command)):
            needing = {number: overrides for number, (need, _, overrides) in folds.items() if need == action}
            commands += [line + (" (re-predicts from the trained models)" if action == "re-predict" else "")
                         for line in commands_per_overrides(name, needing, command)]
    return f"{'; '.join(reasons)}. Bring them up to date with {' and '.join(commands)}"


def load_members(names: list[str], fail_on_missing: bool, skip_stale: bool, test: str = "") -> list[Member]:
    """The named experiments (all with a finished fold when none are named), each fold checked against the current
    inputs and read once (with the named test set's predictions, when `test` is given)."""
    if not names:
        names = sorted(path.name for path in EXPERIMENTS_DIR.glob("*") if finished_folds(path))
        if not names:
            raise UserError(f"no finished experiments under {EXPERIMENTS_DIR}/ (no fold_<k>/{DONE}); train one with "
                            "python -m competition.run exp=<name> fold=all")
    members, classes, reference = [], None, ""
    stale: dict[str, dict[int, tuple[str, str, tuple[str, ...]]]] = {}
    for name in names:
        exp_dir = EXPERIMENTS_DIR / name
        if not exp_dir.is_dir():
            known = sorted(path.name for path in EXPERIMENTS_DIR.glob("*") if finished_folds(path))
            raise UserError(f"exps: experiment '{name}' not found under {EXPERIMENTS_DIR}/; finished experiments: "
                            f"{', '.join(known) or 'none'}")
        done = finished_folds(exp_dir)
        if not done:
            raise UserError(f"exps: {name} has no finished fold in {exp_dir}; train it with "
                            f"python -m competition.run exp={name} fold=all")
        if test and not test_record(name, test).is_file():
            raise UserError(f"test={test}: {name} has not predicted a test set of that name ({test_record(name, test)} "
                            f"is missing); run python -m competition.predict exps={name} test=<its folder> name={test}")
        cfg, n_train, done, stale[name] = current_folds(name, done)
        if not done:
            print(f"{name}: every finished fold is stale, left out")
            continue
        folds = []
        for number in sorted(done):
            folds.append(load_fold(done[number], number, classes, reference, test, task_of(cfg)))
            if classes is None:  # the first fold read fixes the class order every other fold is read in
                classes, reference = folds[-1].classes, str(folds[-1].dir)
        left_out, unfinished = [], []
        for number in range(cfg.folds.n_splits):
            if number in stale[name]:
                left_out.append(f"fold {number} stale ({stale[name][number][1]})")
            elif number not in done:
                partial = exp_dir / f"fold_{number}.partial"
                unfinished.append(f"fold {number} unfinished ({partial})" if partial.exists()
                                  else f"fold {number} missing")
                left_out.append(unfinished[-1])
        if unfinished and fail_on_missing:
            raise UserError(f"{name}: {', '.join(unfinished)}; finish it with python -m competition.run exp={name} "
                            "fold=all, or pass missing=skip to blend the finished folds")
        members.append(Member(name, cfg, folds, left_out, n_train))
        if task_of(cfg) != task_of(members[0].cfg):
            raise UserError(f"{members[0].name} and {name} answer different tasks (data.task {members[0].cfg.data.task}"
                            f" and {cfg.data.task}); blend experiments of one contest")
    stale = {name: folds for name, folds in stale.items() if folds}
    if stale and not skip_stale:
        raise UserError(f"stale folds are not blended: {stale_message(stale)}; or pass stale=skip to blend without "
                        "them")
    if not members:
        raise UserError(f"no fold is current: {stale_message(stale)}")
    return members


def class_prior(data_name: str, classes: list[str], task: Task = SINGLE) -> np.ndarray:
    """The training clips' class frequencies (for multilabel, the share of clips holding each class): the answer
    for clips that cannot be read."""
    folds = read_folds(FOLDS_DIR / f"{data_name}.csv")
    counts = task.explode(folds)["label"].value_counts().reindex(classes, fill_value=0).to_numpy(float)
    return task.normalise(counts / len(folds))


def answer_ids(cfg: DictConfig, clips: pd.DataFrame, cache) -> list[str]:
    """The ids an answer covers: the test clips', or with submission.window their windows' (cache.windowed)."""
    if not cfg.submission.window:
        return clips["id"].tolist()
    return windowed(cache, cache.rows(clips["path"]), clips["id"].to_numpy(), cfg.submission.window,
                    cfg.audio.sample_rate)[0].tolist()


def configured_test_set(members: list[Member]) -> TestSet:
    cfg = members[0].cfg
    split = index_test(cfg)
    cache = load_split(split, cfg, skip_bad=False)[1] if cfg.submission.window else None  # windows need lengths
    return TestSet(answer_ids(cfg, split.clips, cache), [])


def named_test_set(members: list[Member], name: str) -> TestSet:
    """The test set predict recorded as `name` for every member: one set of clips, still what its source holds."""
    records = {}
    command = (f"python -m competition.predict exps={','.join(m.name for m in members)} test=<its folder> "
               f"name={name} overwrite=true")
    for member in members:
        path = test_record(member.name, name)
        try:
            records[member.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: unreadable ({exc}); run {command}") from None
    first_name, first = next(iter(records.items()))
    for member in members:
        record = records[member.name]
        if (record["source"], record["ids"]) != (first["source"], first["ids"]):
            raise UserError(f"test={name}: {member.name} and {first_name} predicted different clips under this name; "
                            f"run {command}")
        cfg = with_test_source(member.cfg, record["source"])
        split = index_test(cfg)  # a source that is gone is refused there, naming it
        _, cache = load_split(split, cfg, skip_bad=True)
        if sorted(split.clips["id"]) != sorted(record["ids"]) or cache.fingerprint != record["fingerprint"]:
            raise UserError(f"test={name}: {record['source']['path']} changed since {member.name} predicted it "
                            f"({test_record(member.name, name)}); run {command}")
    return TestSet(answer_ids(members[0].cfg, split.clips, cache), list(first["unreadable"]))


def check_test_predictions(members: list[Member]) -> None:
    """Refuse, before anything is scored or written, folds without predictions on the configured test set (a deleted
    test.csv), naming the cheapest fix: predicting the test set again from the trained models, not retraining."""
    lacking = [str(fold.dir / "test.csv") for member in members for fold in member.folds if fold.test is None]
    if not lacking:
        return
    cfg = members[0].cfg
    source = f"test={cfg.data.test.path}" + (f" test.subdir={cfg.data.test.subdir}" if cfg.data.test.subdir else "")
    raise UserError(f"{examples(lacking)} missing though data.test is set; predict the test set again from the "
                    f"trained models with python -m competition.predict exps={','.join(m.name for m in members)} "
                    f"{source} name={cfg.data.name}, then blend again adding test={cfg.data.name}")


def check_fold_files(members: list[Member]) -> str:
    """Every fold of every member on one fold file: otherwise their OOF and holdout clips do not line up."""
    uses: dict[str, list[str]] = {}
    for member in members:
        uses.setdefault(member.cfg.data.name, []).append(member.name)
    if len(uses) > 1:
        detail = "; ".join(f"{', '.join(exps)} on {FOLDS_DIR / name}.csv" for name, exps in uses.items())
        raise UserError(f"experiments on different fold files cannot be blended ({detail}); choose one set with exps=")
    return next(iter(uses))


def pick_metric(members: list[Member], requested: str) -> Metric:
    if requested:
        if requested not in METRICS:
            raise UserError(f"metric={requested} is unknown; choose one of {', '.join(METRICS)}")
        return METRICS[requested]
    used = {member.name: member.cfg.train.metric for member in members}
    if len(set(used.values())) > 1:
        detail = ", ".join(f"{name}: {metric}" for name, metric in used.items())
        raise UserError(f"the experiments were scored with different train.metric ({detail}); choose one with metric=")
    return METRICS[next(iter(used.values()))]


def submission_format(members: list[Member], overrides: list[str]) -> DictConfig:
    """The members' shared answer format (`submission.*` of their resolved configs), command-line overrides on top."""
    layer = parse_overrides(overrides).get("submission", {})
    formats = {}
    for member in members:
        try:
            formats[member.name] = OmegaConf.merge(OmegaConf.structured(SubmissionConfig), member.cfg.submission, layer)
        except OmegaConfBaseException as exc:
            raise UserError(f"command line: bad submission override: {str(exc).splitlines()[0]}") from None
    first, fmt = next(iter(formats.items()))
    for name, other in formats.items():
        if other != fmt:
            raise UserError(f"{first} and {name} have different answer formats (submission.* in their configs); "
                            "make them agree, or set the format with submission.<key>=value")
    return fmt
