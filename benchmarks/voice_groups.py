"""Speaker groups found by voice (`folds.groups: voice`): does the local (OOF) score of a contest that names no
speaker come back down to what unseen speakers score?

    python benchmarks/voice_groups.py [--draws 5] [--train-per-gender N] [--groupings clip,voice,speaker]
                                      [--folds 3] [--recipe voice|voice_encoder] [--device cpu] [--keep]
    python benchmarks/voice_groups.py --smoke     # smoke run: 8 speakers, 1 draw, commands in this process

Why: the voice-gender contest's `targets.tsv` is `id<TAB>gender`, with no speaker column, so every clip is its own
group and per-clip folds put one speaker's clips in several folds: the OOF score then rewards recognising voices the
model trained on (on speechocean762, per-clip OOF 0.998 against 0.974 on unseen speakers). `folds.groups: voice`
clusters the clips' speaker-encoder embeddings and uses the clusters as groups. The target: OOF within 2 points of
the unseen-speaker test accuracy.

How: on the real recordings of ../shared/data/speechocean762_gender (612 clips, 102 adult speakers, 51 male and
51 female, 6 clips each), draw d (numpy.random.default_rng(d), per gender, males first) holds out 15 male + 15
female speakers (about 30%) as the test set and trains on the other 72, laid out as the voice-gender contest:
train/<id>.wav symlinks and train/targets.tsv (`id<TAB>gender`, no header, no speaker column), test/<id>.wav.
A recipe (--recipe: experiments/_recipes/voice.yaml by default, or voice_encoder.yaml, the speaker encoder's
linear head, which the README advises from tens of speakers) runs once per grouping and draw through the real
command line, in a subprocess with the temporary project root as cwd: `python -m competition.run exp=<name> fold=all` then
`python -m competition.blend exps=<name> name=<name>`; once with per-clip folds (the contest as it is), once with
`folds.groups: voice`, and, for reference, once with the true speakers as groups (a third column of another table,
train/targets_speaker.tsv, read with `group_column`), which a real contest would not have (--folds folds, seed 42, no
holdout, 3 s clips at 16 kHz, all three). The answer file
submissions/<name>.tsv is scored against the held-out speakers' genders; the OOF score is `scores.oof` of
submissions/<name>.json. For the voice groups, the fold file folds/<data name>.csv is compared with the true
speakers (which the toolkit never saw): purity (clips whose group's majority speaker is their own), same-speaker
clip pairs sharing a group, and training speakers whose clips sit in more than one fold (each leaks its voice into
validation).

Everything is written into a temporary project root (split folders of symlinks, configs, fold files, the waveform
and embedding caches, fold outputs, answer files, each command's log), so the repository and ~/.cache are left
untouched; `--keep` keeps it and prints where. Set OMP_NUM_THREADS to leave cores to others. --smoke runs one draw of
the first 4 speakers of each gender (accuracy_gender.voices), 3 of each trained on, 2 folds, 1 s crops, the commands
in this process.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from accuracy_gender import DATA, SMOKE_DURATION, voices
from common import (REPO, Command, Stopwatch, commands, exit_cleanly_on_sigterm, hardware_line, log, markdown_table,
                    project_root)

import numpy as np
import pandas as pd

from competition.folds import purity, read_folds, together

RECIPES = REPO / "experiments" / "_recipes"
SAMPLE_RATE = 16000
DURATION = 3.0
N_SPLITS = 3
SMOKE_SPLITS = 2
TEST_PER_GENDER = 15  # 30 of 102 speakers held out
GROUPINGS = {"clip": "per clip", "voice": "folds.groups=voice", "speaker": "true speakers (reference)"}


@dataclass
class Result:
    draw: int
    grouping: str
    oof: float
    test: float
    seconds: float
    groups: int | None = None
    purity: float | None = None
    together: float | None = None
    spanning: int | None = None  # training speakers with clips in more than one fold


def draw_split(speakers: pd.DataFrame, draw: int, train_per_gender: int = 0) -> tuple[list[str], list[str]]:
    """(training speakers, test speakers), drawn with default_rng(draw) per gender: 15 of each gender held out, or,
    with `train_per_gender`, that many of each trained on and the rest held out (accuracy_gender.py's few regime)."""
    rng = np.random.default_rng(draw)
    picked = sorted(s for g in ("0", "1") for s in
                    rng.choice(sorted(speakers.loc[speakers["gender"] == g, "speaker"]),
                               train_per_gender or TEST_PER_GENDER, replace=False))
    rest = sorted(set(speakers["speaker"]) - set(picked))
    return (picked, rest) if train_per_gender else (rest, picked)


def lay_out(root: Path, name: str, clips: pd.DataFrame, train: list[str], test: list[str]) -> Path:
    """data/<name>/{train,test}/<id>.wav as symlinks to the clips, train/targets.tsv `id<TAB>gender`, no header."""
    base = root / "data" / name
    for part, speakers in (("train", train), ("test", test)):
        folder = base / part
        folder.mkdir(parents=True)
        rows = clips[clips["speaker"].isin(speakers)]
        for clip in rows["clip"]:
            (folder / clip).symlink_to(DATA / "clips" / clip)
        if part == "train":
            rows[["id", "gender"]].to_csv(folder / "targets.tsv", sep="\t", header=False, index=False)
            rows[["id", "gender", "speaker"]].to_csv(folder / "targets_speaker.tsv", sep="\t", header=False,
                                                     index=False)
    return base


def write_experiment(root: Path, name: str, base: Path, grouping: str, splits: int, duration: float,
                     recipe: str) -> None:
    """experiments/<name>/config.yaml: the voice-gender contest on this draw's folders (its own data.name, so its
    own fold file) with experiments/_recipes/<recipe>.yaml."""
    folds = {"n_splits": splits, "seed": 42, "holdout": 0.0, **({"groups": "voice"} if grouping == "voice" else {})}
    train = {"path": str(base / "train"), "layout": "table", "table": "targets.tsv"}
    if grouping == "speaker":  # without a header the table's columns are id, label, group
        train.update({"table": "targets_speaker.tsv", "group_column": "group"})
    contest = {
        "data": {"name": name, "train": train,
                 "test": {"path": str(base / "test")}, "cache_dir": str(root / "cache")},
        "audio": {"sample_rate": SAMPLE_RATE, "duration": duration},
        "folds": folds,
        "submission": {"id_column": "id", "label_column": "gender", "delimiter": "\t", "header": False,
                       "extension": "tsv"},
    }
    contest_path = root / "experiments" / "_contests" / f"{name}.yaml"
    contest_path.parent.mkdir(parents=True, exist_ok=True)
    contest_path.write_text(json.dumps(contest, indent=2) + "\n")  # JSON is YAML
    folder = root / "experiments" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(json.dumps({"contest": str(contest_path), "recipe": str(RECIPES / f"{recipe}.yaml")}) + "\n")


def run_one(root: Path, name: str, draw: int, grouping: str, truth: pd.Series, speaker_of: pd.Series, device: str,
            command: Command) -> Result:
    with Stopwatch() as watch:
        command(root, name, ["competition.run", f"exp={name}", "fold=all", f"device={device}"])
        command(root, name, ["competition.blend", f"exps={name}", f"name={name}"])
    answer = pd.read_csv(root / "submissions" / f"{name}.tsv", sep="\t", header=None, names=["id", "gender"],
                         dtype=str, keep_default_na=False).set_index("id")["gender"]
    if set(answer.index) != set(truth.index) or answer.index.duplicated().any():
        raise SystemExit(f"{name}: the answer file's ids are not exactly the {len(truth)} test clips")
    accuracy = float((answer.loc[truth.index].str.strip() == truth).mean())
    oof = json.loads((root / "submissions" / f"{name}.json").read_text())["scores"]["oof"]
    result = Result(draw, GROUPINGS[grouping], oof, accuracy, watch.seconds)
    if grouping == "voice":
        folds = read_folds(root / "folds" / f"{name}.csv")
        speakers = speaker_of.loc[folds["id"]]
        result.groups = int(folds["group"].nunique())
        result.purity = purity(folds["group"], speakers)
        result.together = together(folds["group"], speakers)
        result.spanning = int((folds.groupby(speakers.to_numpy())["fold"].nunique() > 1).sum())
    return result


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=5, help="speaker splits (default 5)")
    parser.add_argument("--train-per-gender", type=int, default=0,
                        help="train on this many speakers of each gender, test on the rest (default: hold out 15 each)")
    parser.add_argument("--groupings", default=",".join(GROUPINGS),
                        help=f"fold groupings to run: {', '.join(GROUPINGS)} (default all)")
    parser.add_argument("--folds", type=int, default=N_SPLITS,
                        help=f"folds.n_splits (default {N_SPLITS}; the voice-gender contest file ships 5)")
    parser.add_argument("--recipe", default="voice", choices=["voice", "voice_encoder"],
                        help="experiments/_recipes/<recipe>.yaml (default voice)")
    parser.add_argument("--device", default="cpu", help="device= of competition.run: cpu, cuda, cuda:N or auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    parser.add_argument("--smoke", action="store_true", help="smoke run: 1 draw of 8 speakers (the first 4 of each "
                                                              "gender), 3 of each gender trained on, 2 folds, 1 s")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if not DATA.is_dir():
        raise SystemExit(f"speechocean762_gender not found at {DATA}")
    groupings = [g.strip() for g in args.groupings.split(",") if g.strip()]
    if not groupings or not set(groupings) <= set(GROUPINGS):
        raise SystemExit(f"--groupings: choose from {', '.join(GROUPINGS)} (got {args.groupings})")
    splits, duration = (SMOKE_SPLITS, SMOKE_DURATION) if args.smoke else (args.folds, DURATION)
    if args.smoke:
        args.draws, args.train_per_gender = 1, 3
    clips, speakers = voices(args.smoke)
    speaker_of = clips.set_index("id")["speaker"]
    command = commands(in_process=args.smoke)

    started = time.perf_counter()
    results: list[Result] = []
    with project_root("competition-voice-groups-", args.keep) as root:
        log(f"project root {root}; {args.draws} draws")
        for draw in range(args.draws):
            train, test = draw_split(speakers, draw, args.train_per_gender)
            truth = clips[clips["speaker"].isin(test)].set_index("id")["gender"]
            base = lay_out(root, f"d{draw}", clips, train, test)
            for grouping in groupings:
                name = f"d{draw}_{grouping}"
                write_experiment(root, name, base, grouping, splits, duration, args.recipe)
                result = run_one(root, name, draw, grouping, truth, speaker_of, args.device, command)
                results.append(result)
                log(f"draw {draw} {result.grouping}: OOF {result.oof:.4f}, test {result.test:.4f}"
                    + ("" if result.purity is None else f", {result.groups} groups, purity {result.purity:.3f}, "
                       f"pairs together {result.together:.3f}, {result.spanning} speakers span folds")
                    + f" ({result.seconds:.0f}s)")

    total = time.perf_counter() - started
    print("## Speaker groups found by voice (speechocean762_gender, no speaker column)")
    print()
    print(f"Hardware: {hardware_line(args.device if args.device != 'auto' else 'cpu')}")
    print(f"{args.recipe}.yaml recipe; {len(train)} training speakers, {len(test)} unseen test speakers per draw; "
          f"{splits} folds, seed 42, no holdout. Total wall time {total / 60:.1f} min")
    print()
    print(markdown_table(["draw", "grouping", "OOF accuracy", "unseen-speaker test accuracy", "OOF - test", "groups",
                          "purity", "same-speaker pairs together", f"speakers in >1 fold (of {len(train)})", "seconds"],
                         [[r.draw, r.grouping, fmt(r.oof), fmt(r.test), f"{r.oof - r.test:+.4f}",
                           "-" if r.groups is None else r.groups, fmt(r.purity, 3), fmt(r.together, 3),
                           "-" if r.spanning is None else r.spanning, f"{r.seconds:.0f}"] for r in results]))
    print()
    rows = []
    for grouping in [GROUPINGS[g] for g in groupings]:
        group = [r for r in results if r.grouping == grouping]
        mean = lambda values: None if any(v is None for v in values) else float(np.mean(values))  # noqa: E731
        rows.append([grouping, len(group), fmt(mean([r.oof for r in group])), fmt(mean([r.test for r in group])),
                     f"{np.mean([r.oof - r.test for r in group]):+.4f}",
                     f"{max(abs(r.oof - r.test) for r in group):.4f}", fmt(mean([r.purity for r in group]), 3),
                     fmt(mean([r.together for r in group]), 3)])
    print(markdown_table(["grouping", "draws", "mean OOF", "mean test", "mean OOF - test", "largest |OOF - test|",
                          "mean purity", "mean pairs together"], rows))
    print()
    print(json.dumps({"results": [r.__dict__ for r in results], "seconds": round(total, 1)}))


if __name__ == "__main__":
    main()
