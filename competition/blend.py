"""Blend finished folds into ensembles, score each one the way a leaderboard would, and write the answer file.

    python -m competition.blend [exps=a,b] [method=auto] [name=<data.name>-<method>] [metric=accuracy]
                                [missing=skip|fail] [stale=fail|skip] [test=<test set name>] [overwrite=true]
                                [submission.<key>=value ...]

Only folds made from the current inputs are blended: a fold whose config, fold file or training clips changed since
it was trained (or whose predictions predate a change of TTA views or test clips) stops the blend with the reasons and
the command that brings exactly those folds up to date; stale=skip leaves them out instead, naming them. The answer
format is the experiments' current `submission:` section (it is not a training input).

An experiment is one member: its out-of-fold (OOF) predictions are its folds' validation predictions put together.
On OOF the method combines the members; on the holdout and test clips it combines all their fold models at once,
each member's weight split equally among its folds. Weights are equal, or for the weighted methods fitted on the
members' OOF predictions. A method name with `+tta` first averages each model's test-time views. Every method is
scored on OOF (fitted weights also by nested cross-validation over the folds, which in-sample OOF flatters) and on
the locked holdout, the local stand-in for the leaderboard.

The answer covers the configured test set (data.test), or with test=<name> a test set that competition.predict
predicted under that name: its folds' test-<name>.csv, checked against the clips its record (experiments/<exp>/
test-<name>.json) lists and against what its source holds now; its unreadable clips get the training clips' most
frequent class, as predict gave them.

The method written to submissions/<name>.<ext> is `method=` when given, otherwise (`auto`, the default) the one the
OOF predictions support. Taking the best-scoring row would mostly pick noise among a dozen close scores, so auto
starts from soft and departs from it only on a paired test of the same OOF clips at p < 0.05 (McNemar's exact test
for accuracy, a paired bootstrap otherwise): +tta if it beats soft so, then another combiner, or fitted weights by
their nested OOF score, if it beats that choice so (of several, the best OOF score). One such decision on thousands
of OOF clips has the power that a pick among a dozen on a few hundred holdout clips lacks; the holdout takes no part
and stays an honest check of it. Rank averaging is not offered on two classes (see rank_average). The report beside
the answer (.md, .json, a bar chart of the scores and the written method's confusion matrix) shares its name and
gives each step of the decision.
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from scipy.optimize import minimize
from scipy.stats import binomtest, rankdata

from competition.cli import main_guard, parse_bool
from competition.config import EXPERIMENTS_DIR, SubmissionConfig, load_experiment, parse_cli, parse_overrides
from competition.cache import load_split
from competition.data import _examples, index_test, with_test_source
from competition.errors import UserError
from competition.files import atomic_write, atomic_write_text
from competition.tracking import mirror_blend
from competition.foldrun import (DONE, commands_per_overrides, finished_folds, read_record, repredict_command,
                                retrain_command, staleness)
from competition.folds import FOLDS_DIR, per_clip_warning, read_folds
from competition.metrics import METRICS, Metric
from competition.submission import SUBMISSIONS_DIR, answer_path, write_answer

COMMAND_KEYS = {"exps": "", "method": "auto", "name": "", "metric": "", "missing": "skip", "stale": "fail",
                "test": "", "overwrite": "false"}
TTA = "+tta"
ALPHA = 0.05  # auto departs from the simpler method only on a paired test's p-value below this
RESAMPLES = 1000  # paired bootstrap resamples: p to 0.002, ample against ALPHA, and half the time of 2000 on ROC AUC
EPS = 1e-15  # the floor of a probability under a logarithm, as in sklearn's log loss


# Combiners: (models, clips, classes) probabilities and weights summing to one -> (clips, classes), rows summing to one.

def mean_probability(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of the probabilities."""
    return np.tensordot(weights, probs, axes=1)


def hard_vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Majority of the models' labels, ties broken by summed probability: the vote counts plus the mean probability
    as one more, fractional, ballot (with equal weights it moves the argmax only between tied classes), scaled to
    sum to one so that log loss and ROC AUC still apply."""
    m = len(probs)
    votes = np.tensordot(weights, np.eye(probs.shape[2])[probs.argmax(2)], axes=1)
    return (m * votes + mean_probability(probs, weights)) / (m + 1)


def geometric_mean(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted geometric mean of the probabilities (floored at 1e-15), renormalised: one confident 'no' counts."""
    log = np.tensordot(weights, np.log(np.clip(probs, EPS, None)), axes=1)
    combined = np.exp(log - log.max(1, keepdims=True))
    return combined / combined.sum(1, keepdims=True)


def rank_average(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of each model's per-class ranks over the clips (ties share the average rank, scaled to (0, 1]),
    renormalised per clip: only the order of a model's scores counts, not their calibration.

    Not offered on two classes: there p1 = 1 - p0, so a clip's two ranks mirror each other and the argmax only says
    whether the clip lies above the median clip, a threshold at the median whatever the class balance (0.92 OOF where
    every fold model scored 1.000)."""
    ranks = rankdata(probs, axis=1) / probs.shape[1]
    combined = np.tensordot(weights, ranks, axes=1)
    return combined / combined.sum(1, keepdims=True)


# Weight fitters: (members, clips, classes) OOF probabilities, true classes, metric -> weights summing to one.

def fit_caruana(probs: np.ndarray, y: np.ndarray, metric: Metric, rounds: int = 50, patience: int = 10) -> np.ndarray:
    """Greedy ensemble selection with replacement (Caruana et al., 2004): start from the best member, then keep adding
    the member that gives the best mean (at most 50 picks, stopping after 10 without a gain); weights are the picks
    up to the best round (the earliest on ties), so a member that never helps gets none."""
    sign = 1.0 if metric.greater_is_better else -1.0
    counts, total = np.zeros(len(probs)), np.zeros(probs.shape[1:])
    best, best_counts, best_round = None, None, 0
    for round_ in range(rounds):
        scores = [sign * score(metric, y, (total + p) / (counts.sum() + 1)) for p in probs]
        pick = int(np.nanargmax(scores))
        counts, total = counts + np.eye(len(probs))[pick], total + probs[pick]
        if best is None or scores[pick] > best:
            best, best_counts, best_round = scores[pick], counts, round_
        elif round_ - best_round >= patience:
            break
    return best_counts / best_counts.sum()


def fit_scipy(probs: np.ndarray, y: np.ndarray, metric: Metric) -> np.ndarray:
    """Weights minimising the OOF log loss of the weighted mean over the simplex (scipy's SLSQP, exact gradient):
    smooth where accuracy is a step function, so the optimiser has a slope to follow whatever the metric."""
    right = probs[:, np.arange(len(y)), y]  # each member's probability of the true class

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        mixed = np.clip(weights @ right, EPS, None)
        return -np.log(mixed).mean(), -(right / mixed).mean(1)

    m = len(probs)
    result = minimize(loss, np.full(m, 1 / m), jac=True, method="SLSQP", bounds=[(0, 1)] * m,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}])
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


@dataclass(frozen=True)
class Method:
    """How predictions are combined and, for a weighted method, how weights are fitted on OOF predictions. A new
    blend method is one entry in METHODS; the table, nested CV, +tta and the CLI pick it up from there."""

    combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
    fit: Callable[[np.ndarray, np.ndarray, Metric], np.ndarray] | None = None  # None: equal weights
    # whether it also works across clips (as ranks do), so that even one model per clip shows what it changes
    across_clips: bool = False


METHODS = {
    "hard": Method(hard_vote),
    "soft": Method(mean_probability),
    "geometric": Method(geometric_mean),
    "rank": Method(rank_average, across_clips=True),
    "caruana": Method(mean_probability, fit_caruana),
    "scipy": Method(mean_probability, fit_scipy),
}


def score(metric: Metric, y: np.ndarray, probs: np.ndarray) -> float:
    """The metric on rows renormalised to sum to one (files keep six digits); NaN where it is undefined, such as
    ROC AUC on clips that lack a class."""
    try:
        return float(metric.score(y, probs / probs.sum(1, keepdims=True)))
    except ValueError:
        return math.nan


def parse_method(value: str) -> tuple[str, bool]:
    name, tta = (value[:-len(TTA)], True) if value.endswith(TTA) else (value, False)
    if name not in METHODS:
        choices = ", ".join(f"{m}[{TTA}]" for m in METHODS)
        raise UserError(f"method={value} is unknown; choose auto or one of {choices}")
    return name, tta


def offered(n_classes: int) -> list[str]:
    """The methods that mean something for this many classes: rank needs more than two (see rank_average)."""
    return [name for name in METHODS if not (name == "rank" and n_classes == 2)]


def paired_test(metric: Metric, y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                rng_seed: int = 0) -> tuple[float, float]:
    """b's score minus a's on the same clips, signed so that positive means b is better, and the two-sided p-value of
    'no difference'. Accuracy: McNemar's exact test, as only the clips one gets right and the other wrong tell them
    apart. Other metrics: a paired bootstrap over the clips, p the share of resampled differences on the other side
    of zero, doubled; (count + 1) / (resamples + 1) so that a finite number of resamples never claims p = 0."""
    sign = 1.0 if metric.greater_is_better else -1.0
    difference = sign * (score(metric, y, probs_b) - score(metric, y, probs_a))
    if metric.name == "accuracy":
        right_a, right_b = probs_a.argmax(1) == y, probs_b.argmax(1) == y
        only_b, only_a = int((right_b & ~right_a).sum()), int((right_a & ~right_b).sum())
        return difference, binomtest(only_b, only_a + only_b).pvalue if only_a + only_b else 1.0
    rng = np.random.default_rng(rng_seed)
    resampled = np.empty(RESAMPLES)
    for i in range(RESAMPLES):
        clips = rng.integers(0, len(y), len(y))
        resampled[i] = sign * (score(metric, y[clips], probs_b[clips]) - score(metric, y[clips], probs_a[clips]))
    other_side = min((resampled <= 0).sum(), (resampled >= 0).sum())
    return difference, min(1.0, 2 * (other_side + 1) / (RESAMPLES + 1))


# Fold outputs

@dataclass
class Probs:
    """Probabilities (clips, classes) for a list of clips and, where known, their true class indices."""

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


@dataclass
class TestSet:
    """The clips an answer file must cover: the configured test set, or one that predict named."""

    ids: list[str]
    unreadable: list[str]  # answered with the training clips' most frequent class


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


def read_preds(path: Path, classes: list[str], views: list[str] | None) -> ViewPreds:
    """A long-format prediction file (id, view, [label,] one column per class) as one array per view (`views`, or
    those in the file, in its order)."""
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
        codes = labels.map({c: i for i, c in enumerate(classes)})
        if codes.isna().any():
            raise UserError(f"{path}: label {labels[codes.isna()].iloc[0]!r} is not one of the classes in DONE")
        y = codes.to_numpy(int)
    return ViewPreds(ids, y, arrays)


def load_fold(fold_dir: Path, number: int, classes: list[str] | None, reference: str, test: str = "") -> FoldRun:
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
        preds = read_preds(path, classes, views) if path.is_file() else None
        splits[split] = preds if preds is not None and len(preds.ids) else None
    if test:
        path = fold_dir / f"test-{test}.csv"
        if not path.is_file():
            raise UserError(f"{path} is missing: this fold was trained after test set {test} was predicted; predict "
                            f"it again with python -m competition.predict exps=... test=<its folder> name={test}")
        splits["test"] = read_preds(path, classes, None)  # the views predict used, which tta.views= may have changed
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
            folds.append(load_fold(done[number], number, classes, reference, test))
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
    stale = {name: folds for name, folds in stale.items() if folds}
    if stale and not skip_stale:
        raise UserError(f"stale folds are not blended: {stale_message(stale)}; or pass stale=skip to blend without "
                        "them")
    if not members:
        raise UserError(f"no fold is current: {stale_message(stale)}")
    return members


def test_record(experiment: str, name: str) -> Path:
    """Where predict records the test set it predicted under `name` for an experiment: its source, clips, content."""
    return EXPERIMENTS_DIR / experiment / f"test-{name}.json"


def class_prior(data_name: str, classes: list[str]) -> np.ndarray:
    """The training clips' class frequencies: the answer for clips that cannot be read."""
    labels = read_folds(FOLDS_DIR / f"{data_name}.csv")["label"].astype(str)
    counts = labels.value_counts().reindex(classes, fill_value=0).to_numpy(float)
    return counts / counts.sum()


def configured_test_set(members: list[Member]) -> TestSet:
    return TestSet(index_test(members[0].cfg).clips["id"].tolist(), [])


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
    return TestSet(list(first["ids"]), list(first["unreadable"]))


# Checks across members

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
    foreign = [item for item in overrides if not item.startswith("submission.")]
    if foreign:
        raise UserError(f"'{foreign[0]}' is not a blend option; use {', '.join(COMMAND_KEYS)} "
                        "or submission.<key>=value")
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


def aligned(parts: list[Probs], names: list[str], what: str) -> list[Probs]:
    """Every part on the same clips in the first one's order; different clips are a mismatch worth stopping for."""
    ref = parts[0]
    out = [ref]
    for part, name in zip(parts[1:], names[1:]):
        position = pd.Index(part.ids).get_indexer(ref.ids)
        if len(part.ids) != len(ref.ids) or (position < 0).any():
            example = sorted(set(part.ids) ^ set(ref.ids))[0]
            raise UserError(f"{names[0]} and {name} have different {what} ids ({len(ref.ids)} and {len(part.ids)} "
                            f"clips; e.g. {example} is in only one); retrain one of them, or blend them apart "
                            "with exps=")
        out.append(Probs(ref.ids, None if part.y is None else part.y[position], part.p[position]))
    return out


def present(parts: list, names: list[str], what: str) -> bool:
    """Whether every part has the split; some with and some without it cannot be combined."""
    have = [name for part, name in zip(parts, names) if part is not None]
    if have and len(have) < len(parts):
        lacking = next(name for part, name in zip(parts, names) if part is None)
        raise UserError(f"{have[0]} has {what} predictions but {lacking} has none; retrain {lacking} with "
                        "overwrite=true, or leave it out with exps=")
    return bool(have)


# Ensembles and their scores

def ensemble(members: list[Member], split: str, method: str, tta: bool, weights: np.ndarray) -> Probs | None:
    """Every fold model of every member on the holdout or test clips, combined in one go by the method, each member's
    weight shared equally by its folds (one level, so that a vote counts models and ranks are taken once)."""
    preds, names, shares = [], [], []
    for member, weight in zip(members, weights):
        for fold in member.folds:
            preds.append(getattr(fold, split))
            names.append(str(fold.dir))
            shares.append(weight / len(member.folds))
    if not present(preds, names, split):
        return None
    return combine_models(preds, names, np.array(shares), method, tta, split)


def combine_models(preds: list[ViewPreds], names: list[str], shares: np.ndarray, method: str, tta: bool,
                   what: str) -> Probs:
    """Models' predictions on the same clips (each model's views averaged first with tta), combined by the method."""
    parts = aligned([pred.take(tta) for pred in preds], names, what)
    return Probs(parts[0].ids, parts[0].y, METHODS[method].combine(np.stack([p.p for p in parts]), shares))


def oof_stack(members: list[Member], tta: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The members' OOF probabilities (members, clips, classes) on the clips they all have, the true classes and
    each clip's fold; a clip in different folds for different members means they used different fold files."""
    parts = [member.oof(tta) for member in members]
    for (part, _), member in zip(parts, members):
        if len(set(part.ids)) < len(part.ids):
            raise UserError(f"{member.name}: some clips are in the validation set of two folds, so its folds were "
                            "trained on different fold files; retrain them on the current folds")
    ids = np.array(sorted(set.intersection(*(set(part.ids) for part, _ in parts))))
    if not len(ids):
        raise UserError(f"{', '.join(m.name for m in members)} share no OOF clips; they were trained on other folds")
    positions = [pd.Index(part.ids).get_indexer(ids) for part, _ in parts]
    folds, y = parts[0][1][positions[0]], parts[0][0].y[positions[0]]
    for (part, fold_of), position, member in zip(parts[1:], positions[1:], members[1:]):
        differ = (fold_of[position] != folds) | (part.y[position] != y)
        if differ.any():
            raise UserError(f"{members[0].name} and {member.name} disagree on clip {ids[differ.argmax()]}'s fold or "
                            "label: the fold file was remade between them; retrain one on the current folds")
    return np.stack([part.p[position] for (part, _), position in zip(parts, positions)]), y, folds


def nested_blend(method: Method, stack: np.ndarray, y: np.ndarray, folds: np.ndarray, metric: Metric) -> np.ndarray:
    """Each fold's clips blended with weights fitted on the other folds' clips (folds keep speakers apart): what the
    fitted weights make of clips they never saw."""
    blended = np.empty(stack.shape[1:])
    for k in np.unique(folds):
        out = folds == k
        blended[out] = method.combine(stack[:, out], method.fit(stack[:, ~out], y[~out], metric))
    return blended


def nested_score(method: Method, stack: np.ndarray, y: np.ndarray, folds: np.ndarray, metric: Metric) -> float:
    """The nested blend scored: the fitted weights' worth on unseen clips, which the in-sample OOF score flatters."""
    return score(metric, y, nested_blend(method, stack, y, folds, metric))


@dataclass
class Row:
    scope: str  # an experiment, or 'blend' for all of them
    method: str  # 'fold <k>', or a method name with an optional +tta
    oof: float
    nested: float | None = None
    holdout: float | None = None
    weights: dict[str, float] | None = None
    fitted: bool = False  # weights fitted on OOF rather than equal


def evaluate(members: list[Member], method: str, tta: bool, metric: Metric) -> Row:
    """One method over these members: its weights, OOF score (and nested estimate when fitted), holdout score."""
    stack, y, folds = oof_stack(members, tta)
    fitted = METHODS[method].fit is not None and len(members) > 1
    weights = METHODS[method].fit(stack, y, metric) if fitted else np.full(len(members), 1 / len(members))
    row = Row(members[0].name if len(members) == 1 else "blend", method + (TTA if tta else ""),
              score(metric, y, METHODS[method].combine(stack, weights)),
              weights={m.name: float(w) for m, w in zip(members, weights)}, fitted=fitted)
    if fitted and len(np.unique(folds)) > 1:
        row.nested = nested_score(METHODS[method], stack, y, folds, metric)
    holdout = ensemble(members, "holdout", method, tta, weights)
    if holdout is not None:
        row.holdout = score(metric, holdout.y, holdout.p)
    return row


def score_table(members: list[Member], metric: Metric, variants: list[tuple[str, bool]]) -> list[Row]:
    """Per member: each fold model (plain view) and the fold ensembles; then, with several members, every blend."""
    rows = []
    for member in members:
        for fold in member.folds:
            oof, holdout = fold.oof.take(False), fold.holdout
            rows.append(Row(member.name, f"fold {fold.number}", score(metric, oof.y, oof.p),
                            holdout=None if holdout is None else score(metric, holdout.y, holdout.take(False).p)))
        rows += [evaluate([member], name, tta, metric) for name, tta in variants if METHODS[name].fit is None]
    if len(members) > 1:
        rows += [evaluate(members, name, tta, metric) for name, tta in variants]
    return rows


# The method written by default

@dataclass
class Step:
    """One comparison of `auto` on OOF predictions: a candidate against the method chosen so far."""

    candidate: str
    against: str
    oof_candidate: float  # nested for fitted weights
    oof_against: float
    difference: float  # candidate minus against, positive when the candidate is better
    p_value: float
    test: str
    kept: str  # the candidate if significantly better, else the method it was compared against

    def line(self) -> str:
        name = parse_method(self.candidate)[0]
        fitted = METHODS[name].fit is not None
        kind = "TTA" if name == "soft" else "weights" if fitted else "combiner"
        verdict = (f"kept {self.kept}" if self.p_value < ALPHA or self.kept == self.candidate
                   else f"within noise, kept the simpler {self.kept}")
        return (f"{kind}: {self.candidate} {'nested OOF' if fitted else 'OOF'} {_fmt(self.oof_candidate)} vs "
                f"{self.against} {_fmt(self.oof_against)} ({self.difference:+.4f}, {self.test} "
                f"p={self.p_value:.2g}): {verdict}")


def choose_method(members: list[Member], metric: Metric) -> tuple[str, list[Step]]:
    """`method=auto`: what to write and the comparisons that chose it, on OOF predictions only, so that the holdout
    stays an honest check of the choice. Soft; soft+tta if significantly better; then, with several members, each
    other equal-weight combiner on that view and fitted weights by their nested OOF, against that choice: of those
    significantly better, the best OOF score. Each is one decision on thousands of clips, not a pick among a dozen
    close scores. With one member each OOF clip has a single model, so only the combiners that also work across
    clips (rank) can be judged there; the others differ only in how they combine models."""
    sign = 1.0 if metric.greater_is_better else -1.0
    equal = np.full(len(members), 1 / len(members))
    stack, y, folds = oof_stack(members, False)

    def compare(candidate: str, probs: np.ndarray, against: str, base: np.ndarray) -> Step:
        difference, p_value = paired_test(metric, y, base, probs)
        kept = candidate if difference > 0 and p_value < ALPHA else against
        return Step(candidate, against, score(metric, y, probs), score(metric, y, base), difference, p_value,
                    "McNemar" if metric.name == "accuracy" else "paired bootstrap", kept)

    label, probs, steps = "soft", mean_probability(stack, equal), []
    if any(len(fold.oof.views) > 1 for member in members for fold in member.folds):
        tta_stack = oof_stack(members, True)[0]
        tta = mean_probability(tta_stack, equal)
        steps.append(compare("soft" + TTA, tta, label, probs))
        if steps[-1].kept != label:
            label, probs, stack = steps[-1].kept, tta, tta_stack
    view = TTA if label.endswith(TTA) else ""
    nested = len(members) > 1 and len(np.unique(folds)) > 1  # fitted weights are judged on folds they never saw
    challengers = []
    for name in offered(stack.shape[2]):
        method = METHODS[name]
        if name != "soft" and (len(members) > 1 or method.across_clips) and (method.fit is None or nested):
            blended = (method.combine(stack, equal) if method.fit is None
                       else nested_blend(method, stack, y, folds, metric))
            challengers.append(compare(name + view, blended, label, probs))
    better = [step for step in challengers if step.kept == step.candidate]
    if better:
        label = max(better, key=lambda step: sign * step.oof_candidate).candidate
    return label, steps + challengers


# Report

COLUMNS = ["scope", "method", "oof", "oof nested", "holdout", "weights"]


def _fmt(value: float | None) -> str:
    return "" if value is None else "n/a" if math.isnan(value) else f"{value:.4f}"


def table_cells(rows: list[Row], chosen: Row) -> list[list[str]]:
    cells = []
    for row in rows:
        weights = ", ".join(f"{name} {w:.2f}" for name, w in row.weights.items()) if row.fitted else ""
        mark = " *" if row is chosen else ""
        cells.append([row.scope, row.method + mark, _fmt(row.oof), _fmt(row.nested), _fmt(row.holdout), weights])
    return cells


def text_table(cells: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [COLUMNS, *cells])


def markdown_table(cells: list[list[str]]) -> str:
    lines = [COLUMNS, ["---"] * len(COLUMNS), *cells]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_scores(rows: list[Row], chosen: Row, metric: Metric, path: Path) -> None:
    """Horizontal bars per method (OOF, nested OOF, holdout), the axis zoomed to the scores' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"oof": [r.oof for r in rows], "oof nested": [r.nested for r in rows],
              "holdout": [r.holdout for r in rows]}
    series = {k: np.array([math.nan if v is None else v for v in vs]) for k, vs in series.items()}
    series = {k: v for k, v in series.items() if np.isfinite(v).any()}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(rows) * max(1, len(series)) / 2))
    height = 0.8 / max(1, len(series))
    positions = np.arange(len(rows))
    for i, (label, values) in enumerate(series.items()):
        ax.barh(positions + i * height, np.nan_to_num(values, nan=0.0), height, label=label)
    labels = [f"{r.scope} / {r.method}{' *' if r is chosen else ''}" for r in rows]
    ax.set_yticks(positions + height * (len(series) - 1) / 2, labels)
    ax.invert_yaxis()
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()]) if series else np.array([0.0, 1.0])
    low, high = finite.min(), finite.max()
    margin = max((high - low) * 0.15, 1e-3)
    ax.set_xlim(max(0.0, low - margin), high + margin)
    better = "higher" if metric.greater_is_better else "lower"
    ax.set(xlabel=metric.name, title=f"{metric.name} per method ({better} is better)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(y: np.ndarray, probs: np.ndarray, classes: list[str], title: str, path: Path) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y, probs.argmax(1), labels=np.arange(len(classes)))
    size = max(4.0, 0.32 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    if len(classes) <= 15:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
    return matrix


def _json_value(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def describe(method: str) -> str:
    name, tta = parse_method(method)
    parts = [METHODS[name].combine.__doc__.split("\n\n")[0]]
    if METHODS[name].fit is not None:
        parts.append(METHODS[name].fit.__doc__.split("\n\n")[0])
    if tta:
        parts.append("Each model's test-time views are averaged first.")
    return " ".join(" ".join(part.split()) for part in parts)


def submit(members: list[Member], label: str, weights: np.ndarray, fmt: DictConfig, path: Path,
           test_set: TestSet) -> int:
    """The method's labels for the test clips, checked against the test set's own file list, written atomically;
    its unreadable clips (named, one line each) get the training clips' most frequent class."""
    method, tta = parse_method(label)
    test = ensemble(members, "test", method, tta, weights)  # every fold has its test predictions: see main
    classes = members[0].folds[0].classes
    ids, labels = answered(test, classes, test_set.unreadable,
                           lambda: class_prior(members[0].cfg.data.name, classes))
    write_answer(path, ids, labels, test_set.ids, classes, fmt)
    return len(ids)


def check_test_predictions(members: list[Member]) -> None:
    """Refuse, before anything is scored or written, folds without predictions on the configured test set (a deleted
    test.csv), naming the cheapest fix: predicting the test set again from the trained models, not retraining."""
    lacking = [str(fold.dir / "test.csv") for member in members for fold in member.folds if fold.test is None]
    if not lacking:
        return
    cfg = members[0].cfg
    source = f"test={cfg.data.test.path}" + (f" test.subdir={cfg.data.test.subdir}" if cfg.data.test.subdir else "")
    raise UserError(f"{_examples(lacking)} missing though data.test is set; predict the test set again from the "
                    f"trained models with python -m competition.predict exps={','.join(m.name for m in members)} "
                    f"{source} name={cfg.data.name}, then blend again adding test={cfg.data.name}")


def answered(combined: Probs, classes: list[str], unreadable: list[str],
             prior: Callable[[], np.ndarray]) -> tuple[list[str], list[str]]:
    """Each clip's label: the combined probabilities' most likely class, and for clips that could not be read (named,
    one line each) the training clips' most frequent class (`prior`, read only when there are such clips)."""
    ids, labels = list(combined.ids), [classes[i] for i in combined.p.argmax(1)]
    if not unreadable:
        return ids, labels
    prior_label = classes[int(prior().argmax())]
    for clip in unreadable:
        print(f"{clip}: unreadable, answered with the training clips' most frequent class ({prior_label})",
              file=sys.stderr)
    return ids + list(unreadable), labels + [prior_label] * len(unreadable)


AUTO = (f"method=auto, on OOF only: paired tests on the same clips (difference + when the candidate is better), "
        f"departing from the simpler method only at p < {ALPHA}")


def write_reports(base: Path, members: list[Member], rows: list[Row], chosen: Row, label: str, metric: Metric,
                  fmt: DictConfig, answer: str, decision: list[Step] | None) -> None:
    """`<base>.md` and `.json` (method, how it was chosen, members, weights, the score table), the scores' bar chart
    and the chosen method's confusion matrix on the holdout (on OOF when there is none)."""
    method, tta = parse_method(label)
    weights = np.array(list(chosen.weights.values()))
    stack, y_oof, _ = oof_stack(members, tta)
    holdout = ensemble(members, "holdout", method, tta, weights)
    on, y, probs = (("holdout", holdout.y, holdout.p) if holdout is not None
                    else ("OOF", y_oof, METHODS[method].combine(stack, weights)))
    classes = members[0].folds[0].classes
    matrix = plot_confusion(y, probs, classes, f"{label} on {on} ({len(y)} clips)", Path(f"{base}.confusion.png"))
    plot_scores(rows, chosen, metric, Path(f"{base}.scores.png"))
    better = "higher" if metric.greater_is_better else "lower"
    report = {
        "name": base.name, "answer_file": answer, "method": label, "definition": describe(label),
        "chosen_by": "method=" if decision is None else "auto",
        "decision": [{key: _json_value(value) if isinstance(value, float) else value
                      for key, value in vars(step).items()} for step in decision or []],
        "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "members": [{"experiment": m.name, "folds": [f.number for f in m.folds], "left_out": m.left_out,
                     "tta_views": list(m.folds[0].oof.views)} for m in members],
        "weights": chosen.weights,
        "scores": {"oof": _json_value(chosen.oof), "oof_nested": _json_value(chosen.nested),
                   "holdout": _json_value(chosen.holdout)},
        "n_oof": len(y_oof), "n_holdout": None if holdout is None else len(holdout.ids),
        "format": OmegaConf.to_container(fmt),
        "table": [{"scope": r.scope, "method": r.method, "oof": _json_value(r.oof), "oof_nested": _json_value(r.nested),
                   "holdout": _json_value(r.holdout), "weights": r.weights} for r in rows],
        "confusion": {"on": on, "classes": classes, "matrix": matrix.tolist()},
    }
    atomic_write_text(Path(f"{base}.json"), json.dumps(report, indent=2) + "\n")
    scores = ", ".join(f"{what} {_fmt(value)}" for what, value in
                       (("OOF", chosen.oof), ("nested OOF", chosen.nested), ("holdout", chosen.holdout))
                       if value is not None)
    members_md = [f"  - {m.name}: folds {', '.join(str(f.number) for f in m.folds)}; "
                  f"views {', '.join(m.folds[0].oof.views)}" + "".join(f"; {note}, left out" for note in m.left_out)
                  for m in members]
    chosen_by = (["- chosen by: `method=` on the command line"] if decision is None else
                 [f"- chosen by: {AUTO}:", *(f"  - {step.line()}" for step in decision), f"  - written: {label}"])
    markdown = "\n".join([
        f"# {base.name}", "",
        f"- answer file: {answer}",
        f"- method: **{label}**: {describe(label)}",
        *chosen_by,
        f"- weights: {', '.join(f'{n} {w:.3f}' for n, w in chosen.weights.items())}",
        f"- {metric.name} ({better} is better): {scores}",
        f"- OOF clips: {len(y_oof)}; holdout clips: {'none' if holdout is None else len(holdout.ids)}",
        "- members:", *members_md, "",
        "## Scores", "",
        "Fold rows score one fold model (plain view) on its validation clips and on the holdout; method rows score the "
        "experiment's fold ensemble, or the blend of all experiments; *oof nested* scores fitted weights on the folds "
        "they were not fitted on; * marks the method written.", "",
        markdown_table(table_cells(rows, chosen)), "",
        f"![scores per method]({base.name}.scores.png)", "",
        f"![confusion matrix of {label} on {on}]({base.name}.confusion.png)", "",
    ])
    atomic_write_text(Path(f"{base}.md"), markdown)


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    if options["missing"] not in ("skip", "fail"):
        raise UserError(f"missing={options['missing']}: expected skip (leave unfinished folds out) or fail")
    if options["stale"] not in ("skip", "fail"):
        raise UserError(f"stale={options['stale']}: expected fail (refuse stale folds) or skip (leave them out)")
    overwrite = parse_bool("overwrite", options["overwrite"])
    method = options["method"]
    if method != "auto":
        parse_method(method)
    if "/" in options["name"] or options["name"].startswith("."):
        raise UserError(f"name={options['name']}: give a plain file name; the answer goes to "
                        f"{SUBMISSIONS_DIR}/<name>.<ext>")
    names = list(dict.fromkeys(name.strip() for name in options["exps"].split(",") if name.strip()))
    test_name = options["test"]
    if "/" in test_name or test_name.startswith("."):
        raise UserError(f"test={test_name}: give the name predict gave the test set (name=), not a path")
    members = load_members(names, options["missing"] == "fail", options["stale"] == "skip", test_name)
    named = named_test_set(members, test_name) if test_name else None  # checked before any scoring
    has_test = bool(test_name) or (members[0].cfg.data.test is not None and bool(members[0].cfg.data.test.path))
    if has_test and not test_name:
        check_test_predictions(members)
    data_name = check_fold_files(members)
    warning = per_clip_warning(read_folds(FOLDS_DIR / f"{data_name}.csv"), FOLDS_DIR / f"{data_name}.csv")
    if warning:
        print(warning, file=sys.stderr)
    metric = pick_metric(members, options["metric"])
    fmt = submission_format(members, overrides)
    methods = offered(len(members[0].folds[0].classes))
    if method != "auto" and parse_method(method)[0] not in methods:
        raise UserError(f"method={method}: rank averaging on two classes only says whether a clip lies above the "
                        "median clip (the classes' ranks mirror each other); use method=soft")
    label, decision = choose_method(members, metric) if method == "auto" else (method, None)
    name = options["name"] or f"{test_name or data_name}-{label}"
    answer = answer_path(name, fmt)
    target = answer if has_test else SUBMISSIONS_DIR / f"{name}.md"
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists; pass overwrite=true to replace it, or choose another name=")

    for member in members:
        for note in member.left_out:
            print(f"{member.name}: {note}, left out")
        covered = sum(len(fold.oof.ids) for fold in member.folds)
        if covered < member.n_train:
            print(f"{member.name}: OOF scores cover {covered} of {member.n_train} training clips (the folds left out "
                  "hold the rest)")
    any_tta = any(len(fold.oof.views) > 1 for member in members for fold in member.folds)
    rows = score_table(members, metric, [(m, t) for m in methods for t in ((False, True) if any_tta else (False,))])
    scope = members[0].name if len(members) == 1 else "blend"
    chosen = next((row for row in rows if row.scope == scope and row.method == label), None)
    if chosen is None:  # a weighted method on one experiment: not in the table, where it equals soft
        chosen = evaluate(members, *parse_method(label), metric)
        rows.append(chosen)
    better = "higher" if metric.greater_is_better else "lower"
    print(f"{metric.name} ({better} is better) of {', '.join(m.name for m in members)}: OOF"
          f"{'' if chosen.holdout is None else ' and locked holdout'} scores; * = written")
    print(text_table(table_cells(rows, chosen)))
    if decision is not None:
        print(f"{AUTO}:")
        print("\n".join(f"  {step.line()}" for step in decision) + f"\n  written: {label}")

    SUBMISSIONS_DIR.mkdir(parents=True, exist_ok=True)
    if has_test:
        n_rows = submit(members, label, np.array(list(chosen.weights.values())), fmt, answer,
                        named or configured_test_set(members))
        written = f"{answer} ({n_rows} rows)"
    else:
        written = f"none (no test set: data.test is not set for {data_name})"
    write_reports(SUBMISSIONS_DIR / name, members, rows, chosen, label, metric, fmt, written, decision)
    print(f"answer file: {written}; report: {SUBMISSIONS_DIR / name}.md")
    mirror_blend(members[0].cfg, SUBMISSIONS_DIR / name)


if __name__ == "__main__":
    main_guard(main)
