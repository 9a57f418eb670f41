"""Which blend the OOF predictions support: every method scored (fitted weights also by nested cross-validation) and
the paired tests by which method=auto departs from soft voting only when the evidence says so."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from competition.ensemble import (METHODS, TTA, ensemble, mean_probability, nested_blend, nested_score, oof_stack,
                                  offered, parse_method, score)
from competition.members import Member
from competition.metrics import Metric


ALPHA = 0.05  # auto departs from the simpler method only on a paired test's p-value below this
RESAMPLES = 1000  # paired bootstrap resamples: p to 0.002, ample against ALPHA, and half the time of 2000 on ROC AUC


def fmt_score(value: float | None) -> str:
    """A score to four decimals; blank when there is none (no holdout), n/a when it is undefined."""
    return "" if value is None else "n/a" if math.isnan(value) else f"{value:.4f}"


def paired_test(metric: Metric, y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                rng_seed: int = 0) -> tuple[float, float]:
    """b's score minus a's on the same clips, signed so that positive means b is better, and the two-sided p-value of
    'no difference'. Accuracy: McNemar's exact test, as only the clips one gets right and the other wrong tell them
    apart. Other metrics: a paired bootstrap over the clips, p the share of resampled differences on the other side
    of zero, doubled; (count + 1) / (resamples + 1) so that a finite number of resamples never claims p = 0. A metric
    that is a mean over clips (Metric.per_clip) resamples the clips' differences, a batch of resamples at a time."""
    sign = 1.0 if metric.greater_is_better else -1.0
    difference = sign * (score(metric, y, probs_b) - score(metric, y, probs_a))
    if metric.name == "accuracy":
        from scipy.stats import binomtest  # here: checking a command's arguments needs no scipy

        right_a, right_b = probs_a.argmax(1) == y, probs_b.argmax(1) == y
        only_b, only_a = int((right_b & ~right_a).sum()), int((right_a & ~right_b).sum())
        return difference, binomtest(only_b, only_a + only_b).pvalue if only_a + only_b else 1.0
    rng = np.random.default_rng(rng_seed)
    resampled = np.empty(RESAMPLES)
    if metric.per_clip is not None:
        differences = sign * (metric.per_clip(y, probs_b) - metric.per_clip(y, probs_a))
        batch = max(1, 2**22 // len(y))  # resamples whose clip indices fit in 32 MiB
        for start in range(0, RESAMPLES, batch):
            clips = rng.integers(0, len(y), (min(batch, RESAMPLES - start), len(y)))
            resampled[start:start + len(clips)] = differences[clips].mean(1)
    else:
        for i in range(RESAMPLES):
            clips = rng.integers(0, len(y), len(y))
            resampled[i] = sign * (score(metric, y[clips], probs_b[clips]) - score(metric, y[clips], probs_a[clips]))
    other_side = min((resampled <= 0).sum(), (resampled >= 0).sum())
    return difference, min(1.0, 2 * (other_side + 1) / (RESAMPLES + 1))


@dataclass
class Row:
    scope: str  # an experiment, or 'blend' for all of them
    method: str  # 'fold <k>', or a method name with an optional +tta
    oof: float
    nested: float | None = None
    holdout: float | None = None
    weights: dict[str, float] | None = None
    fitted: bool = False  # weights or a stacker fitted on OOF rather than equal weights
    stacker: dict | None = None  # a stacker's network


def evaluate(members: list[Member], method: str, tta: bool, metric: Metric) -> Row:
    """One method over these members: its weights or stacker, OOF score (and nested estimate when fitted), holdout
    score. Weights are fitted only across several members (one member's are one); a stacker also on one."""
    stack, y, folds = oof_stack(members, tta)
    chosen = METHODS[method]
    fitted = chosen.fit is not None and (len(members) > 1 or chosen.stacks)
    equal = np.full(len(members), 1 / len(members))
    params = chosen.fit(stack, y, metric) if fitted else equal
    weights = equal if chosen.stacks else params
    row = Row(members[0].name if len(members) == 1 else "blend", method + (TTA if tta else ""),
              score(metric, y, chosen.combine(stack, params, y.ndim == 2)),
              weights={m.name: float(w) for m, w in zip(members, weights)}, fitted=fitted,
              stacker=params if chosen.stacks else None)
    if fitted and len(np.unique(folds)) > 1:
        row.nested = nested_score(chosen, stack, y, folds, metric)
    holdout = ensemble(members, "holdout", method, tta, row.weights, row.stacker)
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


@dataclass
class Step:
    """One comparison of `auto` on OOF predictions: a candidate against the method chosen so far."""

    candidate: str
    against: str
    oof_candidate: float  # nested for fitted weights and stackers
    oof_against: float
    difference: float  # candidate minus against, positive when the candidate is better
    p_value: float
    test: str
    kept: str  # the candidate if significantly better, else the method it was compared against

    def line(self) -> str:
        name = parse_method(self.candidate)[0]
        fitted = METHODS[name].fit is not None
        kind = ("TTA" if name == "soft" else "stacker" if METHODS[name].stacks else "weights" if fitted
                else "combiner")
        verdict = (f"kept {self.kept}" if self.p_value < ALPHA or self.kept == self.candidate
                   else f"within noise, kept the simpler {self.kept}")
        return (f"{kind}: {self.candidate} {'nested OOF' if fitted else 'OOF'} {fmt_score(self.oof_candidate)} vs "
                f"{self.against} {fmt_score(self.oof_against)} ({self.difference:+.4f}, {self.test} "
                f"p={self.p_value:.2g}): {verdict}")


def choose_method(members: list[Member], metric: Metric) -> tuple[str, list[Step]]:
    """`method=auto`: what to write and the comparisons that chose it, on OOF predictions only, so that the holdout
    stays an honest check of the choice. Soft; soft+tta if significantly better; then, with several members, each
    other equal-weight combiner on that view, and fitted weights and stackers by their nested OOF, against that
    choice: of those significantly better, the best OOF score. Each is one decision on thousands of clips, not a pick
    among a dozen close scores. With one member each OOF clip has a single model, so only the combiners that also
    work across clips (rank) can be judged there; the others differ only in how they combine models."""
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
    nested = len(members) > 1 and len(np.unique(folds)) > 1  # what is fitted is judged on folds it never saw
    challengers = []
    for name in offered(stack.shape[2], y.ndim == 2):
        method = METHODS[name]
        if name != "soft" and (len(members) > 1 or method.across_clips) and (method.fit is None or nested):
            blended = (method.combine(stack, equal, y.ndim == 2) if method.fit is None
                       else nested_blend(method, stack, y, folds, metric))
            challengers.append(compare(name + view, blended, label, probs))
    better = [step for step in challengers if step.kept == step.candidate]
    if better:
        label = max(better, key=lambda step: sign * step.oof_candidate).candidate
    return label, steps + challengers


AUTO = (f"method=auto, on OOF only: paired tests on the same clips (difference + when the candidate is better), "
        f"departing from the simpler method only at p < {ALPHA}")
