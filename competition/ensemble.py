"""How models' predictions become one: the combiners, the weight fitters fitted on OOF predictions, and the fold
models an ensemble predicts with.

A combiner maps (models, clips, classes) probabilities and weights summing to one to (clips, classes) probabilities,
rows summing to one; a weight fitter maps (members, clips, classes) OOF probabilities, the true classes and the
metric to weights summing to one. A new blend method is one entry in METHODS: blend's table, its nested
cross-validation, `+tta`, method=auto, predict and bundles pick it up from there.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from competition.config import Config
from competition.data import with_test_source
from competition.errors import UserError
from competition.members import Member
from competition.metrics import Metric
from competition.predictions import Probs, ViewPreds
from competition.submission import SUBMISSIONS_DIR
from competition.task import task_of

TTA = "+tta"
EPS = 1e-15  # the floor of a probability under a logarithm, as in sklearn's log loss


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
    from scipy.stats import rankdata  # scipy and sklearn are imported where used: checking arguments needs neither

    ranks = rankdata(probs, axis=1) / probs.shape[1]
    combined = np.tensordot(weights, ranks, axes=1)
    return combined / combined.sum(1, keepdims=True)


def hard_vote_per_class(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multi-label hard vote: per class, the share of the models that say yes (p >= 0.5), ties broken by the mean
    probability as one more, fractional, ballot: above 0.5 where most models say yes."""
    m = len(probs)
    votes = np.tensordot(weights, (probs >= 0.5).astype(float), axes=1)
    return (m * votes + mean_probability(probs, weights)) / (m + 1)


def geometric_mean_per_class(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multi-label geometric mean: per class, the weighted geometric means of p and of 1 - p, as the odds of yes."""
    yes = np.tensordot(weights, np.log(np.clip(probs, EPS, 1.0)), axes=1)
    no = np.tensordot(weights, np.log(np.clip(1.0 - probs, EPS, 1.0)), axes=1)
    return 1.0 / (1.0 + np.exp(no - yes))


def rank_average_per_class(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multi-label rank average: per class, the weighted mean of each model's ranks of the clips, scaled to (0, 1]:
    the order of the clips for each class, which is all that lwlrap, ROC AUC and cmAP score; not a probability to
    threshold."""
    from scipy.stats import rankdata

    return np.tensordot(weights, rankdata(probs, axis=1) / probs.shape[1], axes=1)


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
    smooth where accuracy is a step function, so the optimiser has a slope to follow whatever the metric. Multi-label
    (y a 0/1 matrix): the binary log loss of every (clip, class), the probability of each clip's truth per class."""
    if y.ndim == 2:  # a member's probability of what is true, per (clip, class)
        right = (probs * y + (1 - probs) * (1 - y)).reshape(len(probs), -1)
    else:
        right = probs[:, np.arange(len(y)), y]  # each member's probability of the true class

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        mixed = np.clip(weights @ right, EPS, None)
        return -np.log(mixed).mean(), -(right / mixed).mean(1)

    from scipy.optimize import minimize

    m = len(probs)
    result = minimize(loss, np.full(m, 1 / m), jac=True, method="SLSQP", bounds=[(0, 1)] * m,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}])
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


# Stackers: a meta-model on the members' probabilities. On OOF each clip has one model per member, so on the holdout
# and test clips each member's fold models are averaged first. Its features are the members' log-probabilities
# (floored at STACK_FLOOR), so that a stacker can do what a weighted geometric mean does and more: learn that a member's
# "3" means 2, or trust one member on some classes and another on others. A fit returns the network as plain lists,
# which a report and a bundle carry as JSON and which apply without pickle: logistic regression is a network without
# hidden layers.

STACK_FLOOR = 1e-4


def stack_features(probs: np.ndarray) -> np.ndarray:
    """(members, clips, classes) probabilities -> (clips, members x classes) log-probabilities."""
    return np.log(np.clip(probs, STACK_FLOOR, 1.0)).transpose(1, 0, 2).reshape(probs.shape[1], -1)


def as_network(weights: list[np.ndarray], biases: list[np.ndarray], classes: np.ndarray) -> dict:
    """A fitted sklearn network (ReLU hidden layers, then softmax; with two classes one logistic unit z, written as
    the two softmax units -z/2 and z/2, which give the same probabilities) as JSON-ready lists."""
    weights, biases = [np.asarray(w, float) for w in weights], [np.asarray(b, float) for b in biases]
    if weights[-1].shape[1] == 1 and len(classes) == 2:
        weights[-1], biases[-1] = np.hstack([-weights[-1] / 2, weights[-1] / 2]), np.hstack([-biases[-1] / 2,
                                                                                              biases[-1] / 2])
    return {"layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in zip(weights, biases)],
            "classes": [int(c) for c in classes]}


def constant_network(probs: np.ndarray, y: np.ndarray) -> dict | None:
    """The only class seen, certain: what a stacker can learn from training clips of one class (a nested fold of a
    tiny set); None when there are two or more."""
    seen = np.unique(y)
    if len(seen) > 1:
        return None
    return as_network([np.zeros((probs.shape[0] * probs.shape[2], 1))], [np.zeros(1)], seen)


def fit_logistic_stacker(probs: np.ndarray, y: np.ndarray, metric: Metric) -> dict:
    """Logistic regression (L2, C=1) on the members' log-probabilities: one weight per member and class pair."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=1000)
    return constant_network(probs, y) or as_network([model.fit(stack_features(probs), y).coef_.T],
                                                    [model.intercept_], model.classes_)


def fit_mlp_stacker(probs: np.ndarray, y: np.ndarray, metric: Metric) -> dict:
    """A small MLP (32 ReLU units, L2 1e-2, Adam for at most 300 epochs) on the members' log-probabilities:
    interactions between members that a linear stacker cannot express. No early stopping: on a validation tenth its
    accuracy stalls in the first epochs and stops it there."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    constant = constant_network(probs, y)
    if constant:
        return constant
    model = MLPClassifier(hidden_layer_sizes=(32,), alpha=1e-2, max_iter=300, random_state=0)
    with warnings.catch_warnings():  # 300 epochs on a small set need not converge to be useful
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(stack_features(probs), y)
    return as_network(model.coefs_, model.intercepts_, model.classes_)


def apply_stacker(probs: np.ndarray, network: dict) -> np.ndarray:
    """The stacker's probabilities (clips, classes) from the members' (members, clips, classes); a class its training
    clips lacked gets none."""
    x = stack_features(probs)
    layers = network["layers"]
    for layer in layers[:-1]:
        x = np.maximum(x @ np.asarray(layer["weight"]) + np.asarray(layer["bias"]), 0.0)
    z = x @ np.asarray(layers[-1]["weight"]) + np.asarray(layers[-1]["bias"])
    z = np.exp(z - z.max(1, keepdims=True))
    out = np.zeros((probs.shape[1], probs.shape[2]))
    out[:, network["classes"]] = z / z.sum(1, keepdims=True)
    return out


def network_problem(network: object, n_inputs: int, n_classes: int) -> str:
    """What is wrong with a stacker's network read from a report or a bundle ('' if nothing): its shape, that every
    number is finite, that its layers chain from `n_inputs` features to some of the `n_classes` classes."""
    if not isinstance(network, dict) or not isinstance(network.get("layers"), list) or not network["layers"]:
        return "is not a network {layers: [{weight, bias}, ...], classes}"
    classes = network.get("classes")
    if (not isinstance(classes, list) or not classes or len(set(map(str, classes))) < len(classes)
            or not all(type(c) is int and 0 <= c < n_classes for c in classes)):
        return f"classes is not a list of distinct class indices below {n_classes}"
    width = n_inputs
    for i, layer in enumerate(network["layers"]):
        try:
            weight, bias = np.asarray(layer["weight"], float), np.asarray(layer["bias"], float)
        except (TypeError, KeyError, ValueError):
            return f"layers[{i}] is not {{weight: rows of numbers, bias: numbers}}"
        if weight.ndim != 2 or weight.shape[0] != width or bias.shape != (weight.shape[1],):
            return f"layers[{i}] does not take {width} inputs to as many outputs as its bias has"
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            return f"layers[{i}] holds a number that is not finite"
        width = weight.shape[1]
    return "" if width == len(classes) else f"its last layer gives {width} outputs for {len(classes)} classes"


@dataclass(frozen=True)
class Method:
    """How predictions are combined and, for a fitted method, what is fitted on OOF predictions: weights, or a
    stacker's network. A new blend method is one entry in METHODS; the table, nested CV, +tta, method=auto, predict
    and bundles pick it up from there."""

    single: Callable[[np.ndarray, Any], np.ndarray]  # (probabilities, weights or the stacker's network)
    per_class: Callable[[np.ndarray, Any], np.ndarray] | None  # the same for multi-label contests; None: not offered
    fit: Callable[[np.ndarray, np.ndarray, Metric], Any] | None = None  # None: equal weights
    # whether it also works across clips (as ranks do), so that even one model per clip shows what it changes
    across_clips: bool = False
    stacks: bool = False  # a stacker: fit returns a network, combine takes each member's fold ensemble

    def combine(self, probs: np.ndarray, params: Any, multilabel: bool = False) -> np.ndarray:
        return (self.per_class if multilabel else self.single)(probs, params)


METHODS = {
    "hard": Method(hard_vote, hard_vote_per_class),
    "soft": Method(mean_probability, mean_probability),
    "geometric": Method(geometric_mean, geometric_mean_per_class),
    "rank": Method(rank_average, rank_average_per_class, across_clips=True),
    "caruana": Method(mean_probability, mean_probability, fit_caruana),
    "scipy": Method(mean_probability, mean_probability, fit_scipy),
    "stack": Method(apply_stacker, None, fit_logistic_stacker, stacks=True),
    "stack_mlp": Method(apply_stacker, None, fit_mlp_stacker, stacks=True),
}


def score(metric: Metric, y: np.ndarray, probs: np.ndarray) -> float:
    """The metric on rows renormalised to sum to one (files keep six digits; multi-label rows, y a matrix, are not
    distributions); NaN where it is undefined, such as ROC AUC on clips that lack a class."""
    try:
        return float(metric.score(y, probs if y.ndim == 2 else probs / probs.sum(1, keepdims=True)))
    except ValueError:
        return math.nan


def parse_method(value: str) -> tuple[str, bool]:
    name, tta = (value[:-len(TTA)], True) if value.endswith(TTA) else (value, False)
    if name not in METHODS:
        choices = ", ".join(f"{m}[{TTA}]" for m in METHODS)
        raise UserError(f"method={value} is unknown; choose auto or one of {choices}")
    return name, tta


def offered(n_classes: int, multilabel: bool = False) -> list[str]:
    """The methods that mean something for this many classes and task: single-label rank needs more than two (see
    rank_average); multi-label, those with a per-class combiner."""
    if multilabel:
        return [name for name, method in METHODS.items() if method.per_class is not None]
    return [name for name in METHODS if not (name == "rank" and n_classes == 2)]


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


def ensemble(members: list[Member], split: str, method: str, tta: bool, weights: dict[str, float],
             stacker: dict | None = None) -> Probs | None:
    """Every fold model of every member on the holdout or test clips, combined by the method (see combine_models)."""
    preds, names, experiments = [], [], []
    for member in members:
        for fold in member.folds:
            preds.append(getattr(fold, split))
            names.append(str(fold.dir))
            experiments.append(member.name)
    if not present(preds, names, split):
        return None
    return combine_models(preds, names, experiments, weights, method, tta, split, stacker,
                          task_of(members[0].cfg).multilabel)


def combine_models(preds: list[ViewPreds], names: list[str], experiments: list[str], weights: dict[str, float],
                   method: str, tta: bool, what: str, stacker: dict | None = None, multilabel: bool = False) -> Probs:
    """Fold models' predictions on the same clips (each model's views averaged first with tta), combined by the method
    in one go, each experiment's weight shared equally by its folds (one level, so that a vote counts models and
    ranks are taken once); for a stacker, each experiment's fold models averaged first, in the order of `weights`
    (the order it was fitted in), as on OOF each clip had one model per experiment."""
    parts = aligned([pred.take(tta) for pred in preds], names, what)
    probs, experiments = np.stack([p.p for p in parts]), np.asarray(experiments)
    if METHODS[method].stacks:
        combined = METHODS[method].combine(np.stack([probs[experiments == name].mean(0) for name in weights]), stacker)
    else:
        shares = np.array([weights[name] / (experiments == name).sum() for name in experiments])
        combined = METHODS[method].combine(probs, shares, multilabel)
    return Probs(parts[0].ids, parts[0].y, combined)


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
        differ = (fold_of[position] != folds) | (part.y[position] != y).reshape(len(y), -1).any(1)
        if differ.any():
            raise UserError(f"{members[0].name} and {member.name} disagree on clip {ids[differ.argmax()]}'s fold or "
                            "label: the fold file was remade between them; retrain one on the current folds")
    return np.stack([part.p[position] for (part, _), position in zip(parts, positions)]), y, folds


_NESTED: dict[tuple, np.ndarray] = {}  # nested blends already fitted in this process: the score table and
# method=auto judge the same fits, and a stacker's take seconds each


def nested_blend(method: Method, stack: np.ndarray, y: np.ndarray, folds: np.ndarray, metric: Metric) -> np.ndarray:
    """Each fold's clips blended with weights fitted on the other folds' clips (folds keep speakers apart): what the
    fitted weights make of clips they never saw. Fitted once per method, metric and predictions (the fits are
    deterministic), however often it is asked."""
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (stack, y, folds))).hexdigest()
    key = (method, metric.name, stack.shape, digest)
    if key not in _NESTED:
        blended = np.empty(stack.shape[1:])
        for k in np.unique(folds):
            out = folds == k
            blended[out] = method.combine(stack[:, out], method.fit(stack[:, ~out], y[~out], metric), y.ndim == 2)
        _NESTED[key] = blended
    return _NESTED[key].copy()


def nested_score(method: Method, stack: np.ndarray, y: np.ndarray, folds: np.ndarray, metric: Metric) -> float:
    """The nested blend scored: the fitted weights' worth on unseen clips, which the in-sample OOF score flatters."""
    return score(metric, y, nested_blend(method, stack, y, folds, metric))


def answered(combined: Probs, unreadable: list[str], prior: Callable[[], np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Each clip's probabilities, and for clips that could not be read (named, one line each) the training clips'
    class frequencies (`prior`, read only when there are such clips)."""
    if not unreadable:
        return list(combined.ids), combined.p
    for clip in unreadable:
        print(f"{clip}: unreadable, answered with the training clips' class frequencies", file=sys.stderr)
    return list(combined.ids) + list(unreadable), np.vstack([combined.p, np.tile(prior(), (len(unreadable), 1))])


# Fold models ready to predict (from experiments or a bundle)
@dataclass
class FoldModel:
    """One trained fold, ready to predict: the config it was trained with (TTA views possibly replaced), its classes,
    its weights loaded on demand (tensors only), and where its predictions on the named test set go."""

    experiment: str
    fold: int
    cfg: DictConfig
    classes: list[str]
    state: Callable[[], tuple[dict, dict | None]]  # (model weights, frontend statistics or None)
    out: Path

    @property
    def title(self) -> str:
        return f"{self.experiment} fold {self.fold}"


@dataclass
class Ensemble:
    """What predict needs besides the test clips: the models, how to combine them, the answer format, the prior."""

    models: list[FoldModel]
    method: str
    weights: dict[str, float]  # per experiment, shared equally by its folds
    stacker: dict | None  # a stacker's network (method=stack...), fitted by a blend
    answer_format: DictConfig
    prior: np.ndarray  # the training clips' class frequencies, for clips that cannot be read
    records: dict[str, Path]  # per experiment, where to record the test set (none from a bundle)


def with_views(cfg: DictConfig, views: list[str] | None, test: dict) -> DictConfig:
    """A fold's config on the schema (older folds lack newer keys), with other TTA views and the named test source."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), {k: v for k, v in OmegaConf.to_container(cfg).items()
                                                            if k not in ("base", "recipe", "contest")})
    return OmegaConf.merge(with_test_source(merged, test), {"tta": {"views": views}} if views else {})


def choose(method: str, blend_report: str, experiments: list[str], n_classes: int,
           multilabel: bool = False) -> tuple[str, dict[str, float], dict | None]:
    """method= with equal weights, or the method, weights and stacker a blend recorded (blend=<name>); soft by
    default."""
    if blend_report:
        if method:
            raise UserError(f"method={method} together with blend={blend_report}: the blend's report names its method")
        path = SUBMISSIONS_DIR / f"{blend_report}.json"
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"blend={blend_report}: cannot read {path} ({exc}); run python -m competition.blend "
                            "first, or give method=") from None
        blended = [member["experiment"] for member in report["members"]]
        if sorted(blended) != sorted(experiments):
            raise UserError(f"blend={blend_report} blended {', '.join(blended)}, not {', '.join(experiments)}; predict "
                            "with the same exps=")
        weights, stacker = {k: float(v) for k, v in report["weights"].items()}, report.get("stacker")
        if METHODS[parse_method(report["method"])[0]].stacks:
            problem = network_problem(stacker, len(weights) * n_classes, n_classes)
            if problem:
                raise UserError(f"{path}: stacker {problem}; blend again with python -m competition.blend "
                                f"exps={','.join(blended)} method={report['method']}")
        return report["method"], weights, stacker
    method = method or "soft"
    name, _ = parse_method(method)
    if name not in offered(n_classes, multilabel):
        why = ("has no multi-label form" if multilabel else
               "(rank averaging on two classes) only says whether a clip lies above the median clip")
        raise UserError(f"method={method} {why}; use method=soft")
    if METHODS[name].fit is not None:
        fitted = "a stacker" if METHODS[name].stacks else "weights"
        raise UserError(f"method={method} has {fitted} fitted on OOF predictions: fit it with python -m "
                        f"competition.blend exps={','.join(experiments)} method={method}, then predict with "
                        "blend=<the name it printed>")
    return method, {experiment: 1.0 / len(experiments) for experiment in experiments}, None
