"""Pseudo-label rounds: does a second round, trained on the test clips its first round is sure of, score higher on
those test clips, and does its OOF score still estimate that accuracy?

    OMP_NUM_THREADS=1 python benchmarks/pseudo_rounds.py [--speakers all] [--threshold 0.9] [--targets hard]
                                                         [--rounds 1] [--parts fsdd,demo] [--device cpu] [--keep]
    OMP_NUM_THREADS=1 python benchmarks/pseudo_rounds.py --smoke   # smoke run: theo held, 36 clips, 2 folds, no demo

Why: `python -m competition.pseudo` (README, "Pseudo-labels: a second round on the test clips") is meant for test
speakers that differ from the training ones, and claims that its OOF stays honest because fold k is labelled by the
sources' fold k models alone. Two questions follow, measured here side by side in one run: does round two beat round
one on the test clips, and does round two's OOF stay within 2 points of the test accuracy it estimates?

How, in one temporary project root (configs, fold files, caches, fold outputs, answer files and each command's log;
the audio is read in place through symlinks; `--keep` keeps it), every step through the real command line in
subprocesses (common.toolkit; --smoke runs them in this process, common.toolkit_here):

- fsdd (../shared/data/fsdd/recordings: 3000 clips of the digits 0-9, 6 speakers), leave one speaker out, laid out
  exactly as benchmarks/accuracy_fsdd_speakers.py does it and with its functions (imported, not copied): for each
  held speaker a contest whose training set is the other five speakers (5 speaker-grouped folds, seed 42, no holdout)
  and whose test set is the held speaker's 500 clips. Round one is the words_encoder recipe
  (experiments/_recipes/words_encoder.yaml): `competition.run exp=words_<speaker> fold=all`, then `competition.blend
  exps=words_<speaker> method=soft`; the answer file is scored against the held speaker's true digits (test
  accuracy) and the blend's OOF accuracy is read from its report. Round two is `competition.pseudo
  exps=words_<speaker> threshold=<t> targets=<hard|soft>` (it trains words_<speaker>_pl1, all folds), then the same
  run (every fold already finished: a check that none is stale) + blend + scoring on words_<speaker>_pl1. `--rounds
  2` adds round three, `competition.pseudo ... rounds=2` (words_<speaker>_pl2, labelled by the round before).
- the demo (competition.demo: 30 synthetic words, 64 training voices, 360 test clips by 12 other voices, whose true
  words are in words/test_answers.csv): round one is the demo's words experiment (experiments/default: the
  demo_words contest, 5 speaker-grouped folds and a 10% locked holdout, and the small-CNN recipe), round two a
  pseudo round on it, blended and scored the same way (test accuracy against the demo's answers, OOF, and the
  holdout). CPU-sized: the default CNN (resnet18, 64 mels, 12 epochs) needs about 3 minutes a fold on two cores
  (README, tracking_overhead.py), over 15 minutes a round of five folds, so the CNN recipe is cut as
  benchmarks/accuracy_fsdd.py cuts it (its FAST_RECIPE, imported: resnet10t, 40 mels, 6 epochs at lr 0.003, shift,
  noise and time/frequency masks at p=0.5; `--demo-epochs` cuts further): about 14 s an epoch per fold on one
  thread here, 8-10 minutes a round. The answer file is written as `id,label` (submission.id_column=id, no .wav
  suffix) so that it is scored by the same function as fsdd's; the answers are the same.

Reported per held speaker (and their mean) and for the demo: each round's test accuracy and OOF, round two's OOF
minus its test accuracy, the pseudo-labelled clips per fold (`n_pseudo` in each fold's DONE), how many of those
labels were right (from the labelling folds' test.csv, the clips at or above the threshold: a check of the same
count), and seconds; over all fsdd test clips pooled, the clips right only in round two against only in round one
and McNemar's exact two-sided p. The verdicts: round two "beats" round one when its pooled test accuracy is higher
and McNemar's p < 0.05; its OOF is "within 2 points" when the mean over the held speakers of OOF minus test accuracy
lies in [-0.02, +0.02] (each speaker's own gap is in the table).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (REPO, Command, Stopwatch, commands, dotlist_dict, exit_cleanly_on_sigterm, hardware_line, log,
                    markdown_table, project_root)

import numpy as np
import pandas as pd

from accuracy_fsdd import FAST_RECIPE
from accuracy_fsdd_speakers import (FSDD, N_SPLITS, SMOKE_EPOCHS, SMOKE_SPEAKER, SMOKE_SPLITS, WORDS_RECIPE,
                                    clips_table, lay_out, mcnemar, probe_features, run_and_score, run_probe,
                                    write_contest, write_experiment)

DEMO_CONTEST = REPO / "experiments" / "_contests" / "demo_words.yaml"
CNN_RECIPE = REPO / "experiments" / "_recipes" / "cnn.yaml"
OOF_TOLERANCE = 0.02
SIGNIFICANCE = 0.05


@dataclass
class Round:
    exp: str
    right: np.ndarray  # per test clip, in the order of the truth
    oof: float
    holdout: float | None
    seconds: float
    n_pseudo: list[int] = field(default_factory=list)  # per fold, from DONE
    labels_right: list[int] = field(default_factory=list)  # per fold, pseudo-labels that are the true class

    @property
    def test(self) -> float:
        return float(self.right.mean())


@dataclass
class Contest:
    name: str  # the held speaker, or "demo"
    rounds: list[Round] = field(default_factory=list)
    probe: dict[float, np.ndarray] = field(default_factory=dict)  # fsdd: per C, the frozen-encoder probe's right clips


def fold_dirs(root: Path, exp: str) -> list[Path]:
    return sorted((root / "experiments" / exp).glob("fold_[0-9]*"), key=lambda p: int(p.name.split("_")[1]))


def pseudo_counts(root: Path, exp: str, source: str, truth: pd.Series, threshold: float) -> tuple[list[int], list[int]]:
    """Per fold of the round `exp`: its pseudo-labelled clips (DONE's n_pseudo), and how many of the clips its
    source's same fold labelled at or above the threshold (TTA views averaged, as competition.labels does) got the
    true class; the counts must agree."""
    from competition.predictions import read_preds

    counts, right = [], []
    for fold_dir in fold_dirs(root, exp):
        counts.append(int(json.loads((fold_dir / "DONE").read_text())["n_pseudo"]))
        source_dir = root / "experiments" / source / fold_dir.name
        done = json.loads((source_dir / "DONE").read_text())
        classes = list(done["classes"])
        probs = read_preds(source_dir / "test.csv", classes, list(done.get("tta_views", [])) or None).take(True)
        kept = probs.p.max(1) >= threshold
        labels = np.asarray(classes)[probs.p.argmax(1)]
        right.append(int((labels[kept] == truth.loc[probs.ids[kept]].to_numpy()).sum()))
        if int(kept.sum()) != counts[-1]:
            log(f"WARNING {exp} {fold_dir.name}: n_pseudo {counts[-1]} but {int(kept.sum())} of {source}'s "
                f"{fold_dir.name} test predictions reach the threshold {threshold}")
    return counts, right


def holdout_score(root: Path, exp: str) -> float | None:
    value = json.loads((root / "submissions" / f"{exp}.json").read_text())["scores"].get("holdout")
    return None if value is None else float(value)


def play_rounds(root: Path, first: str, truth: pd.Series, args: argparse.Namespace, command: Command) -> list[Round]:
    """Round one (run + blend soft) on the written experiment `first`, then each pseudo round through
    competition.pseudo, each blended and scored the same way."""
    right, oof, seconds = run_and_score(root, first, truth, args.device, command)
    rounds = [Round(first, right, oof, holdout_score(root, first), seconds)]
    log(f"{first}: test {rounds[0].test:.4f}, OOF {oof:.4f} ({seconds:.0f}s)")
    for number in range(1, args.rounds + 1):
        exp = f"{first}_pl{number}"
        with Stopwatch() as watch:  # rounds=N retrains nothing of the rounds before it: their folds are current
            command(root, first, ["competition.pseudo", f"exps={first}", f"threshold={args.threshold}",
                                  f"targets={args.targets}", f"rounds={number}", f"device={args.device}"])
        right, oof, seconds = run_and_score(root, exp, truth, args.device, command)
        counts, labels_right = pseudo_counts(root, exp, rounds[-1].exp, truth, args.threshold)
        rounds.append(Round(exp, right, oof, holdout_score(root, exp), watch.seconds + seconds, counts, labels_right))
        log(f"{exp}: test {rounds[-1].test:.4f}, OOF {oof:.4f}, pseudo-labelled per fold {counts} "
            f"({sum(labels_right)}/{sum(counts)} right), {rounds[-1].seconds:.0f}s")
    return rounds


def demo_truth() -> tuple[Path, pd.Series]:
    from competition.demo import ensure_demo

    demo = ensure_demo()
    answers = pd.read_csv(demo / "words" / "test_answers.csv", dtype=str, keep_default_na=False)
    return demo, answers.assign(id=answers["fname"].str.removesuffix(".wav")).set_index("id")["label"]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def round_name(number: int) -> str:
    return f"round {number + 1}"


def table(contests: list[Contest], label: str, with_mean: bool, with_holdout: bool) -> str:
    n = len(contests[0].rounds)
    header = [label]
    for r in range(n):
        header += [f"{round_name(r)} test", f"{round_name(r)} OOF"]
        if with_holdout:
            header.append(f"{round_name(r)} holdout")
        if r:
            header += [f"{round_name(r)} OOF - test", f"{round_name(r)} pseudo-labelled per fold (right)"]
    header.append("seconds per round")
    rows = []
    for contest in contests:
        row = [contest.name]
        for r, rnd in enumerate(contest.rounds):
            row += [fmt(rnd.test), fmt(rnd.oof)]
            if with_holdout:
                row.append(fmt(rnd.holdout))
            if r:
                row += [f"{rnd.oof - rnd.test:+.4f}", f"{', '.join(map(str, rnd.n_pseudo))} "
                        f"({sum(rnd.labels_right)}/{sum(rnd.n_pseudo)} right)"]
        row.append(", ".join(f"{rnd.seconds:.0f}" for rnd in contest.rounds))
        rows.append(row)
    if with_mean and len(contests) > 1:
        row = [f"mean of {len(contests)}"]
        for r in range(n):
            row += [fmt(mean([c.rounds[r].test for c in contests])), fmt(mean([c.rounds[r].oof for c in contests]))]
            if with_holdout:
                row.append(fmt(mean([c.rounds[r].holdout for c in contests])))
            if r:
                pseudo = [sum(c.rounds[r].n_pseudo) / len(c.rounds[r].n_pseudo) for c in contests]
                good = sum(sum(c.rounds[r].labels_right) for c in contests)
                total = sum(sum(c.rounds[r].n_pseudo) for c in contests)
                row += [f"{mean([c.rounds[r].oof - c.rounds[r].test for c in contests]):+.4f}",
                        f"{np.mean(pseudo):.0f} per fold ({good / total:.4f} right)" if total else "0"]
        row.append(", ".join(f"{np.mean([c.rounds[r].seconds for c in contests]):.0f}" for r in range(n)))
        rows.append(row)
    return markdown_table(header, rows)


def verdicts(contests: list[Contest], prefix: str) -> list[str]:
    """The two Done-means clauses, round two (the first pseudo round) against round one, plus any later round."""
    lines = []
    for r in range(1, len(contests[0].rounds)):
        before = np.concatenate([c.rounds[r - 1].right for c in contests])
        after = np.concatenate([c.rounds[r].right for c in contests])
        gain = mean([c.rounds[r].test for c in contests]) - mean([c.rounds[r - 1].test for c in contests])
        only_after, only_before, p = mcnemar(after, before)
        beats = after.mean() > before.mean() and p < SIGNIFICANCE
        higher = sum(c.rounds[r].test > c.rounds[r - 1].test for c in contests)
        lines.append(f"{prefix}{round_name(r)} beats {round_name(r - 1)} on the test clips: {'yes' if beats else 'no'} "
                     f"(mean {gain:+.4f}, McNemar p={p:.3g}; over {len(after)} test clips {only_after} right only in "
                     f"{round_name(r)}, {only_before} only in {round_name(r - 1)}; higher on {higher}/{len(contests)})")
        gaps = [c.rounds[r].oof - c.rounds[r].test for c in contests]
        within = abs(float(np.mean(gaps))) <= OOF_TOLERANCE
        lines.append(f"{prefix}{round_name(r)} OOF within 2 points of its test accuracy: {'yes' if within else 'no'} "
                     f"(mean OOF - test = {np.mean(gaps):+.4f}; per {'speaker' if len(gaps) > 1 else 'contest'} "
                     f"{min(gaps):+.4f} to {max(gaps):+.4f}, {sum(abs(g) <= OOF_TOLERANCE for g in gaps)}/{len(gaps)} "
                     f"within; {round_name(0)}: mean "
                     f"{np.mean([c.rounds[0].oof - c.rounds[0].test for c in contests]):+.4f})")
    return lines


def against_probe(contests: list[Contest]) -> list[str]:
    """Each round against the frozen-encoder linear probe on the same test clips (accuracy_fsdd_speakers' probe: the
    words encoder, one logistic regression on the five training speakers' clips): the bar an encoder recipe must
    clear. It "beats" the probe when its pooled test accuracy is higher and McNemar's p < 0.05."""
    lines = []
    for c in contests[0].probe:
        probe = np.concatenate([contest.probe[c] for contest in contests])
        for r in range(len(contests[0].rounds)):
            ours = np.concatenate([contest.rounds[r].right for contest in contests])
            only_ours, only_probe, p = mcnemar(ours, probe)
            higher = sum(contest.rounds[r].test > contest.probe[c].mean() for contest in contests)
            beats = ours.mean() > probe.mean() and p < SIGNIFICANCE
            lines.append(f"{round_name(r)} beats the probe (LR C={c:g}, mean "
                         f"{mean([x.probe[c].mean() for x in contests]):.4f}): {'yes' if beats else 'no'} (mean "
                         f"{mean([x.rounds[r].test for x in contests]):.4f}, McNemar "
                         f"p={p:.3g}; {only_ours} clips right only in {round_name(r)}, {only_probe} only by the probe; "
                         f"higher on {higher}/{len(contests)})")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", default="all", help="comma-separated held fsdd speakers (default all six)")
    parser.add_argument("--threshold", type=float, default=0.9, help="pseudo threshold= (default 0.9)")
    parser.add_argument("--targets", default="hard", choices=("hard", "soft"), help="pseudo targets= (default hard)")
    parser.add_argument("--rounds", type=int, default=1, help="pseudo rounds after round one (default 1)")
    parser.add_argument("--parts", default="fsdd,demo", help="which contests: fsdd, demo or both (default)")
    parser.add_argument("--demo-epochs", type=int, default=None, help="train.epochs of the demo's CNN (default 6)")
    parser.add_argument("--device", default="cpu", help="device= of the toolkit commands: cpu, cuda, cuda:N or auto")
    parser.add_argument("--smoke", action="store_true", help=f"smoke run: held speaker {SMOKE_SPEAKER} only, 36 clips, 2 "
                                                              "folds of 1 epoch, threshold 0 (every test clip "
                                                              "labelled), no demo")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    splits = SMOKE_SPLITS if args.smoke else N_SPLITS
    if args.smoke:
        args.threshold = 0.0
    parts = ["fsdd"] if args.smoke else [p for p in args.parts.split(",") if p]
    if set(parts) - {"fsdd", "demo"} or not parts or args.rounds < 1:
        raise SystemExit("--parts takes fsdd, demo or fsdd,demo; --rounds 1 or more")
    clips = clips_table(args.smoke) if "fsdd" in parts else None
    speakers = []
    if clips is not None:
        everyone = sorted(clips["speaker"].unique())
        speakers = [SMOKE_SPEAKER] if args.smoke else everyone if args.speakers == "all" else args.speakers.split(",")
        unknown = sorted(set(speakers) - set(everyone))
        if unknown:
            raise SystemExit(f"unknown speakers {unknown}; FSDD has {', '.join(everyone)}")
    demo_recipe = FAST_RECIPE + ([f"train.epochs={args.demo_epochs}"] if args.demo_epochs else [])

    command = commands(in_process=args.smoke)
    started = time.perf_counter()
    fsdd: list[Contest] = []
    demo: list[Contest] = []
    with project_root("competition-pseudo-rounds-", args.keep) as root:
        log(f"project root {root}")
        features = probe_features(clips) if speakers else None
        for speaker in speakers:
            truth = clips[clips["speaker"] == speaker].set_index("id")["label"]
            contest = write_contest(root, speaker, lay_out(root, speaker, clips), splits)
            exp = f"words_{speaker}"
            write_experiment(root, exp, contest, WORDS_RECIPE, SMOKE_EPOCHS if args.smoke else None)
            probe = run_probe(features, clips, speaker, truth)
            log(f"{speaker}: probe " + ", ".join(f"C={c:g} {right.mean():.4f}" for c, right in probe.items()))
            fsdd.append(Contest(speaker, play_rounds(root, exp, truth, args, command), probe))
        if "demo" in parts:
            _, truth = demo_truth()
            extra = dotlist_dict(demo_recipe)
            extra["data"] = {"cache_dir": str(root / "cache")}
            extra["submission"] = {"id_column": "id", "id_suffix": ""}
            write_experiment(root, "demo_words", DEMO_CONTEST, CNN_RECIPE, extra)
            demo.append(Contest("demo (360 test clips, 12 new voices)", play_rounds(root, "demo_words", truth, args, command)))
    total = time.perf_counter() - started

    print()
    print("## Pseudo-label rounds: round one, then competition.pseudo rounds on the test clips")
    print()
    print(f"Hardware: {hardware_line(args.device if args.device != 'auto' else 'cpu')}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"pseudo: threshold={args.threshold} targets={args.targets}, {args.rounds} round(s) after round one; "
          f"each round blended with method=soft")
    print(f"Total wall time {total / 60:.1f} min ({total:.0f}s)")
    if fsdd:
        print()
        held = len(fsdd[0].rounds[0].right)
        print(f"### fsdd, leave one speaker out ({FSDD}; {held} test clips of the held speaker, {len(clips) - held} "
              f"training clips of five others; words_encoder recipe, {splits} speaker-grouped folds)")
        print()
        print(table(fsdd, "held speaker", True, False))
        print()
        for line in verdicts(fsdd, "") + against_probe(fsdd):
            print(line)
    if demo:
        print()
        print(f"### the demo (experiments/default's demo_words contest: 5 speaker-grouped folds, 10% holdout; "
              f"cnn.yaml + {' '.join(demo_recipe)})")
        print()
        print(table(demo, "contest", False, True))
        print()
        for line in verdicts(demo, "demo: "):
            print(line)
    skip = ("right",)
    print(json.dumps({"threshold": args.threshold, "targets": args.targets, "seconds": round(total, 1),
                      "results": [{"contest": c.name,
                                   "probe": {f"C={k:g}": float(v.mean()) for k, v in c.probe.items()},
                                   "rounds": [{k: v for k, v in r.__dict__.items() if k not in skip}
                                              for r in c.rounds]} for c in fsdd + demo]}))


if __name__ == "__main__":
    main()
