"""Voice gender on real speakers never heard in training: the log-mel baseline, a frozen speaker-encoder probe, the
CNN, voice and voice-encoder recipes and the blend of the last two, with speaker-grouped and per-clip folds.

    python benchmarks/accuracy_gender.py [--regimes many,few,six] [--draws 5] [--many-draws 1] [--methods ...]
                                         [--groupings spk,clip] [--device cpu] [--keep]
    python benchmarks/accuracy_gender.py --smoke      # smoke run: 8 speakers, 1 draw, 2 folds, 1 epoch

Why: a voice-gender model is judged on voices it never heard, and a local score made with folds that split one
speaker's clips across folds (the contest's own `id<TAB>gender` table has no speaker column) says little about that.
This script measures, on the real recordings of ../shared/data/speechocean762_gender (612 clips, 102 adult speakers,
51 male and 51 female, 6 clips each), what each method scores on held-out speakers and how far its local (OOF)
score overstates that.

Regimes, all measured in one run on the same speaker splits for every method:
- `many`: 15 male + 15 female speakers (about 30%) held out as the test set, trained on the other 72
  (`--many-draws` draws, default 1);
- `few`: trained on 8 male + 8 female speakers, tested on the other 86 (`--draws` draws, default 5);
- `six`: trained on 3 male + 3 female speakers, tested on the other 96 (`--draws` draws).
Draw d picks its speakers with numpy.random.default_rng(d), per gender.

Methods, each trained and scored on exactly the same split:
1. `baseline`: each band's mean and std of a log-mel (librosa, 64 mels, n_fft 1024, hop 160, 16 kHz, power_to_db
   top_db 80) of the centred 3 s crop, zero-padded like the toolkit pads, + StandardScaler + LogisticRegression,
   fitted on every training clip (no folds). Its wall time is the feature time of the split's clips plus the fit.
2. `old default`: the toolkit's CNN recipe (experiments/_recipes/cnn.yaml) with `train.epochs: 8` and the plain
   TTA view, on a contest file written for the split (3 folds, seed 42, no holdout, 3 s clips at 16 kHz).
3. `new default`: the same contest with experiments/_recipes/voice.yaml (a logistic regression on per-clip
   statistics including pitch, fitted exactly).
4. `voice pitch`: experiments/_recipes/voice_pitch.yaml (the voice recipe on the pitch quantiles alone).
5. `voice encoder`: experiments/_recipes/voice_encoder.yaml (a logistic regression on the pretrained GE2E speaker
   embedding from the resemblyzer wheel, fitted exactly).
6. `voice encoder fine-tuned` (`tuned`): experiments/_recipes/voice_encoder_tuned.yaml (the same encoder and an
   MLP head trained end to end on the waveforms, frontend.trainable).
7. `voice pitch + voice encoder`: `competition.blend exps=<voice pitch>,<voice encoder> method=soft`, the two
   experiments above blended (no training of its own; its seconds are the blend's); `tpair` the same with the
   fine-tuned encoder.
8. `the pair after a pseudo-label round` (`pl`): `competition.pseudo exps=<voice pitch>,<voice encoder>
   threshold=0.9` and the same with the encoder first (each round is its first source's recipe trained again with
   the test clips the two label at 0.9 or more; fold k labelled by their fold k alone), then the two rounds blended
   soft as the pair is. Its seconds are the two rounds' and the blend's.
9. `probe`: the frozen-encoder linear probe the encoder recipes must beat: the same speaker encoder on each whole
   clip (competition.encoders, mean of its windows, unit length) + one scikit-learn LogisticRegression (default C)
   on every training clip, no folds.
A toolkit method runs through the real command line in a subprocess, cwd the temporary project root:
`python -m competition.run exp=<name> fold=all` then `python -m competition.blend exps=<name> name=<name>` (blend
picks its method from OOF evidence); the answer file submissions/<name>.tsv (`id<TAB>0|1`) is scored against the
test clips' true genders, and the local score is `scores.oof` of submissions/<name>.json. Each toolkit method runs
twice per split: with the speaker as a third column of targets.tsv (`group_column: group`: speaker-grouped folds)
and without it (per-clip folds, the contest's own layout). The wall time of a toolkit method is both commands;
the first method run on a data set (the old default) also pays for decoding its clips into the waveform cache.

Everything is written into a temporary project root (the split folders, made of symlinks to the clips, never
copies; the contest and experiment configs; fold files; the waveform caches; fold outputs; answer files; each
command's log), so the repository and ~/.cache are left untouched; `--keep` keeps it and prints where. --smoke runs
the six regime's first draw on the first 4 speakers of each gender (voices), speaker-grouped folds alone, 2 of them,
1 s crops, the CNN as common.TINY_CNN, the fine-tuned encoder for 2 epochs, the toolkit's commands in this process
(common.toolkit_here).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (REPO, TINY_CNN, Command, Stopwatch, commands, dotlist_dict, exit_cleanly_on_sigterm, hardware_line,
                    log, markdown_table, project_root)

import numpy as np
import pandas as pd

DATA = REPO.parent / "shared" / "data" / "speechocean762_gender"
CNN_RECIPE = REPO / "experiments" / "_recipes" / "cnn.yaml"
VOICE_RECIPE = REPO / "experiments" / "_recipes" / "voice.yaml"

SAMPLE_RATE = 16000
DURATION = 3.0
N_SPLITS = 3
MANY_TEST_PER_GENDER = 15  # 30 of 102 speakers held out
FEW_TRAIN_PER_GENDER = {"few": 8, "six": 3}  # training speakers per gender: 16 (86 test speakers), 6 (96)
GROUPINGS = {"spk": "speaker", "clip": "per clip"}  # data-name suffix -> how the folds are made
METHODS = {"old": "old default (cnn)", "new": "new default (voice)", "pitch": "voice pitch", "enc": "voice encoder",
           "tuned": "voice encoder fine-tuned", "pair": "voice pitch + voice encoder",
           "tpair": "voice pitch + fine-tuned encoder", "pl": "the pair after a pseudo-label round"}
BLENDS = {"pair": ("pitch", "enc"), "tpair": ("pitch", "tuned")}  # methods that blend two others, soft
# pl trains a pseudo-label round of pitch and enc on the pair's labels: list it, and each blend, after its members
PSEUDO_THRESHOLD = 0.9  # pl: the test clips whose pair probability reaches this are trained on
BASELINE = "baseline (log-mel + LR)"
PROBE = "probe (speaker encoder + LR)"
VOICE_ENCODER_RECIPE = REPO / "experiments" / "_recipes" / "voice_encoder.yaml"
VOICE_ENCODER_TUNED_RECIPE = REPO / "experiments" / "_recipes" / "voice_encoder_tuned.yaml"
VOICE_PITCH_RECIPE = REPO / "experiments" / "_recipes" / "voice_pitch.yaml"
SMOKE_PER_GENDER = 4  # a smoke run's speakers: the first four of each gender (48 clips)
SMOKE_DURATION = 1.0  # a smoke run's clips: the toolkit's crops of 1 s (pitch statistics and CNN inputs)


@dataclass
class Split:
    regime: str
    draw: int
    train: list[str]  # speakers
    test: list[str]

    @property
    def tag(self) -> str:
        return f"{self.regime}{self.draw}"


@dataclass
class Result:
    regime: str
    draw: int
    method: str
    grouping: str
    oof: float | None
    test: float
    seconds: float
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Splits


def voices(smoke: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clips (clip, id, speaker, gender, ...) and the speakers (speaker, gender) of speechocean762_gender; for a
    smoke run, the first speakers of each gender alone."""
    clips = pd.read_csv(DATA / "clips.tsv", sep="\t", dtype=str)
    clips["id"] = clips["clip"].str.replace(r"\.wav$", "", regex=True)
    speakers = pd.read_csv(DATA / "speakers.tsv", sep="\t", dtype=str)
    if smoke:
        speakers = speakers.sort_values("speaker").groupby("gender").head(SMOKE_PER_GENDER)
        clips = clips[clips["speaker"].isin(speakers["speaker"])]
    return clips, speakers


def draw_splits(speakers: pd.DataFrame, regimes: list[str], many_draws: int, few_draws: int) -> list[Split]:
    """Speaker splits balanced by gender; draw d uses numpy.random.default_rng(d) (males drawn first)."""
    by_gender = {g: sorted(speakers.loc[speakers["gender"] == g, "speaker"]) for g in ("0", "1")}
    everyone = sorted(speakers["speaker"])
    splits = []
    for regime in regimes:
        for draw in range(many_draws if regime == "many" else few_draws):
            rng = np.random.default_rng(draw)
            count = MANY_TEST_PER_GENDER if regime == "many" else FEW_TRAIN_PER_GENDER[regime]
            picked = sorted(s for g in ("0", "1") for s in rng.choice(by_gender[g], count, replace=False))
            rest = [s for s in everyone if s not in set(picked)]
            train, test = (rest, picked) if regime == "many" else (picked, rest)
            splits.append(Split(regime, draw, train, test))
    return splits


def lay_out(root: Path, data_name: str, clips: pd.DataFrame, split: Split, with_speaker: bool) -> Path:
    """data/<data_name>/{train,test}/<id>.wav as symlinks to the clips, train/targets.tsv without a header:
    id<TAB>gender[<TAB>speaker]."""
    base = root / "data" / data_name
    for part, speakers in (("train", split.train), ("test", split.test)):
        folder = base / part
        folder.mkdir(parents=True)
        rows = clips[clips["speaker"].isin(speakers)]
        for clip in rows["clip"]:
            (folder / clip).symlink_to(DATA / "clips" / clip)
        if part == "train":
            columns = ["id", "gender", "speaker"] if with_speaker else ["id", "gender"]
            rows[columns].to_csv(folder / "targets.tsv", sep="\t", header=False, index=False)
    return base


def write_contest(root: Path, data_name: str, base: Path, with_speaker: bool, splits: int, duration: float) -> Path:
    """experiments/_contests/<data_name>.yaml: the voice-gender contest on this split's folders."""
    train = {"path": str(base / "train"), "layout": "table", "table": "targets.tsv"}
    if with_speaker:
        train["group_column"] = "group"  # without a header the table's columns are id, label, group
    contest = {
        "data": {"name": data_name, "train": train, "test": {"path": str(base / "test")},
                 "cache_dir": str(root / "cache")},
        "audio": {"sample_rate": SAMPLE_RATE, "duration": duration},
        "folds": {"n_splits": splits, "seed": 42, "holdout": 0.0},
        "submission": {"id_column": "id", "label_column": "gender", "delimiter": "\t", "header": False,
                       "extension": "tsv"},
    }
    path = root / "experiments" / "_contests" / f"{data_name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(contest, indent=2) + "\n")  # JSON is YAML
    return path


def write_experiment(root: Path, name: str, contest: Path, method: str, cnn: dict, smoke: bool = False) -> None:
    """experiments/<name>/config.yaml: the contest with the method's recipe; the old default's with `cnn` over it
    (and in a smoke run, the fine-tuned encoder's with 2 epochs)."""
    config = {"contest": str(contest)}
    if method == "old":
        config.update({"recipe": str(CNN_RECIPE), **cnn, "tta": {"views": ["plain"]}})
    else:
        config["recipe"] = str({"new": VOICE_RECIPE, "pitch": VOICE_PITCH_RECIPE, "enc": VOICE_ENCODER_RECIPE,
                                "tuned": VOICE_ENCODER_TUNED_RECIPE}[method])
        if method == "tuned" and smoke:
            config["train"] = {"epochs": 2}
    folder = root / "experiments" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Baseline


def centred_crop(wave: np.ndarray, length: int) -> np.ndarray:
    """The toolkit's evaluation crop: the centre of a longer clip, a shorter one centred in zeros."""
    out = np.zeros(length, np.float32)
    size = len(wave)
    start = (size - length) // 2 if size >= length else -((length - size) // 2)
    first, last = max(start, 0), min(start + length, size)
    out[first - start: last - start] = wave[first:last]
    return out


def baseline_features(clips: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per clip: each mel band's mean and std of the log-mel, and the seconds it took."""
    import librosa
    import soundfile as sf

    features, seconds = {}, {}
    for clip in clips["clip"]:
        start = time.perf_counter()
        wave, rate = sf.read(DATA / "clips" / clip, dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)
        if rate != SAMPLE_RATE:
            wave = librosa.resample(wave, orig_sr=rate, target_sr=SAMPLE_RATE)
        wave = centred_crop(wave, int(SAMPLE_RATE * DURATION))
        mel = librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=1024, hop_length=160, n_mels=64)
        db = librosa.power_to_db(mel, ref=np.max, top_db=80)
        features[clip] = np.concatenate([db.mean(axis=1), db.std(axis=1)])
        seconds[clip] = time.perf_counter() - start
    return features, seconds


def probe_features(clips: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per clip: the speaker encoder's mean embedding of the whole clip, at unit length, and the seconds it took."""
    import soundfile as sf

    from competition.encoders import load_encoder

    encoder = load_encoder("speaker", -1, "cpu")
    features, seconds = {}, {}
    for clip in clips["clip"]:
        start = time.perf_counter()
        wave, rate = sf.read(DATA / "clips" / clip, dtype="float32")
        mean = encoder.frames([wave])[0].mean(0)
        features[clip] = mean / np.linalg.norm(mean)
        seconds[clip] = time.perf_counter() - start
    return features, seconds


def run_linear(split: Split, clips: pd.DataFrame, features: dict[str, np.ndarray], seconds: dict[str, float],
               method: str) -> Result:
    """One logistic regression on every training clip's features (standardised for the baseline's log-mel
    statistics; as they are for the probe's unit-length embeddings), scored on the test speakers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = clips[clips["speaker"].isin(split.train)]
    test = clips[clips["speaker"].isin(split.test)]
    with Stopwatch() as watch:
        model = LogisticRegression(max_iter=5000) if method == PROBE else \
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        model.fit(np.stack([features[c] for c in train["clip"]]), train["gender"].to_numpy())
        predicted = model.predict(np.stack([features[c] for c in test["clip"]]))
    accuracy = float((predicted == test["gender"].to_numpy()).mean())
    feature_seconds = sum(seconds[c] for c in pd.concat([train["clip"], test["clip"]]))
    return Result(split.regime, split.draw, method, "-", None, accuracy, feature_seconds + watch.seconds)


# --------------------------------------------------------------------------------------------------------------
# Toolkit methods through the command line


def run_toolkit(root: Path, split: Split, method: str, grouping: str, exp: str, truth: pd.Series,
                device: str, command: Command) -> Result:
    with Stopwatch() as watch:
        if method in BLENDS:
            members = ",".join(exp.replace(f"_{method}", f"_{part}") for part in BLENDS[method])
            command(root, exp, ["competition.blend", f"exps={members}", "method=soft", f"name={exp}"])
        elif method == "pl":  # each of the pair again, on the test clips both label surely (the first is the base)
            pitch, enc = (exp.replace("_pl", f"_{part}") for part in ("pitch", "enc"))
            for sources, part in ((f"{pitch},{enc}", "pitch"), (f"{enc},{pitch}", "enc")):
                command(root, exp, ["competition.pseudo", f"exps={sources}", f"name={exp}_{part}",
                                    f"threshold={PSEUDO_THRESHOLD}", f"device={device}"])
            command(root, exp, ["competition.blend", f"exps={exp}_pitch1,{exp}_enc1", "method=soft", f"name={exp}"])
        else:
            command(root, exp, ["competition.run", f"exp={exp}", "fold=all", f"device={device}"])
            command(root, exp, ["competition.blend", f"exps={exp}", f"name={exp}"])
    answer = pd.read_csv(root / "submissions" / f"{exp}.tsv", sep="\t", header=None, names=["id", "gender"],
                         dtype=str, keep_default_na=False)
    predicted = answer.set_index("id")["gender"]
    if set(predicted.index) != set(truth.index) or predicted.index.duplicated().any():
        raise SystemExit(f"{exp}: the answer file's ids are not exactly the {len(truth)} test clips")
    accuracy = float((predicted.loc[truth.index].str.strip() == truth).mean())
    report = json.loads((root / "submissions" / f"{exp}.json").read_text())
    return Result(split.regime, split.draw, METHODS[method], GROUPINGS[grouping], report["scores"]["oof"], accuracy,
                  watch.seconds, {"blend": report.get("method")})


# --------------------------------------------------------------------------------------------------------------
# Tables


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def summary_rows(results: list[Result]) -> list[list[object]]:
    rows = []
    baseline = {(r.regime, r.draw): r.test for r in results if r.method == BASELINE}
    probe = {(r.regime, r.draw): r.test for r in results if r.method == PROBE}
    keys = list(dict.fromkeys((r.regime, r.method, r.grouping) for r in results))
    for regime, method, grouping in keys:
        group = [r for r in results if (r.regime, r.method, r.grouping) == (regime, method, grouping)]
        tests = [r.test for r in group]
        oofs = [r.oof for r in group if r.oof is not None]
        gap = [r.oof - r.test for r in group if r.oof is not None]
        beats = []
        for reference, name in ((baseline, BASELINE), (probe, PROBE)):
            wins = sum(r.test > reference[(r.regime, r.draw)] for r in group if (r.regime, r.draw) in reference)
            beats.append("-" if method == name or not reference else f"{wins}/{len(group)}")
        rows.append([regime, method, grouping, len(group), f"{np.mean(tests):.4f}", f"{min(tests):.4f}",
                     f"{max(tests):.4f}", f"{np.mean(oofs):.4f}" if oofs else "-",
                     f"{np.mean(gap):+.4f}" if gap else "-", *beats,
                     f"{np.mean([r.seconds for r in group]):.0f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", default="many,few,six", help="comma-separated: many, few, six (default all)")
    parser.add_argument("--draws", type=int, default=5, help="speaker draws of the few regime (default 5)")
    parser.add_argument("--many-draws", type=int, default=1, help="speaker draws of the many regime (default 1)")
    parser.add_argument("--epochs", type=int, default=8, help="train.epochs of the old default (default 8)")
    parser.add_argument("--device", default="cpu", help="device= of competition.run: cpu, cuda, cuda:N or auto")
    parser.add_argument("--splits", type=int, default=N_SPLITS, help=f"folds.n_splits (default {N_SPLITS})")
    parser.add_argument("--groupings", default=",".join(GROUPINGS),
                        help="folds of the toolkit methods: spk (speaker-grouped), clip (per clip) (default both)")
    parser.add_argument("--smoke", action="store_true", help="smoke run: the first 4 speakers of each gender, six "
                                                              "regime, 1 draw, spk grouping, 2 folds, 1 epoch of a "
                                                              "resnet10t on 32 mels")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"toolkit recipes to run beside the baseline: {', '.join(METHODS)} (default all)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if not DATA.is_dir():
        raise SystemExit(f"speechocean762_gender not found at {DATA}")
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    if args.smoke:
        regimes, args.draws, args.epochs, args.splits, args.groupings = ["six"], 1, 1, 2, "spk"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not set(methods) <= set(METHODS):
        raise SystemExit(f"--methods: choose from {', '.join(METHODS)} (got {args.methods})")
    groupings = [g.strip() for g in args.groupings.split(",") if g.strip()]
    if not groupings or not set(groupings) <= set(GROUPINGS):
        raise SystemExit(f"--groupings: choose from {', '.join(GROUPINGS)} (got {args.groupings})")
    unknown = [r for r in regimes if r not in ("many", "few", "six")]
    if unknown or not regimes:
        raise SystemExit(f"--regimes: choose from many, few, six (got {args.regimes})")
    for method, members in {**BLENDS, "pl": ("pitch", "enc")}.items():
        if method in methods and not set(members) <= set(methods[:methods.index(method)]):
            raise SystemExit(f"--methods: {method} builds on {' and '.join(members)}, so list both before it")

    clips, speakers = voices(args.smoke)
    splits = draw_splits(speakers, regimes, args.many_draws, args.draws)
    command = commands(in_process=args.smoke)
    cnn = dotlist_dict([*(TINY_CNN if args.smoke else []), f"train.epochs={args.epochs}"])

    started = time.perf_counter()
    results: list[Result] = []
    with project_root("competition-accuracy-gender-", args.keep) as root:
        log(f"project root {root}; {len(splits)} splits: {', '.join(s.tag for s in splits)}")
        with Stopwatch() as watch:
            features, seconds = baseline_features(clips)
        log(f"baseline log-mel features of {len(clips)} clips: {watch.seconds:.1f}s")
        with Stopwatch() as watch:
            embeddings, embedding_seconds = probe_features(clips)
        log(f"probe speaker embeddings of {len(clips)} clips: {watch.seconds:.1f}s")
        for split in splits:
            truth = clips[clips["speaker"].isin(split.test)].set_index("id")["gender"]
            log(f"--- {split.tag}: train {len(split.train)} speakers "
                f"({(clips['speaker'].isin(split.train)).sum()} clips), test {len(split.test)} speakers "
                f"({len(truth)} clips)")
            done = [run_linear(split, clips, features, seconds, BASELINE),
                    run_linear(split, clips, embeddings, embedding_seconds, PROBE)]
            log(f"{split.tag} baseline: test {done[0].test:.4f}; probe: test {done[1].test:.4f}")
            for grouping in groupings:
                data_name = f"g_{split.tag}_{grouping}"
                with_speaker = grouping == "spk"
                contest = write_contest(root, data_name, lay_out(root, data_name, clips, split, with_speaker),
                                        with_speaker, args.splits, SMOKE_DURATION if args.smoke else DURATION)
                for method in methods:
                    exp = f"{split.tag}_{grouping}_{method}"
                    if method not in (*BLENDS, "pl"):
                        write_experiment(root, exp, contest, method, cnn, args.smoke)
                    result = run_toolkit(root, split, method, grouping, exp, truth, args.device, command)
                    done.append(result)
                    log(f"{split.tag} {exp}: OOF {fmt(result.oof)}, test {result.test:.4f} "
                        f"(blend {result.notes.get('blend')}, {result.seconds:.0f}s)")
            results += done
            print(f"{split.tag}: " + "; ".join(
                f"{r.method}{'' if r.grouping == '-' else ' / ' + r.grouping} test {r.test:.4f}"
                + ("" if r.oof is None else f" (OOF {r.oof:.4f})") for r in done), flush=True)

    total = time.perf_counter() - started
    print()
    print("## Voice gender on unseen speakers (speechocean762_gender)")
    print()
    print(f"Hardware: {hardware_line(args.device if args.device != 'auto' else 'cpu')}")
    print(f"Old default: cnn.yaml with train.epochs={args.epochs}, tta plain; new default: voice.yaml; voice pitch: "
          f"voice_pitch.yaml; voice encoder: voice_encoder.yaml; fine-tuned: voice_encoder_tuned.yaml; {args.splits} folds, seed 42, no holdout; blend method chosen from OOF evidence "
          "(the pair: soft)")
    print(f"Total wall time {total / 60:.1f} min ({total:.0f}s)")
    print()
    print(markdown_table(["regime", "draw", "method", "grouping", "local OOF accuracy",
                          "unseen-speaker test accuracy", "seconds"],
                         [[r.regime, r.draw, r.method, r.grouping, fmt(r.oof), fmt(r.test), f"{r.seconds:.0f}"]
                          for r in results]))
    print()
    print(markdown_table(["regime", "method", "grouping", "draws", "mean test accuracy", "min", "max",
                          "mean OOF", "OOF - test", "beats baseline (same draw)", "beats probe (same draw)",
                          "mean seconds"],
                         summary_rows(results)))
    print()
    print(json.dumps({"results": [r.__dict__ for r in results], "seconds": round(total, 1)}))


if __name__ == "__main__":
    main()
