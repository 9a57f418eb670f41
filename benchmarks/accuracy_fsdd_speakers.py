"""Spoken digits by a speaker never heard in training: the keyword-encoder recipe's 5-fold ensemble, a frozen-encoder
linear probe and the CNN recipe, leave-one-speaker-out on the real FSDD recordings.

    python benchmarks/accuracy_fsdd_speakers.py [--speakers all] [--cnn-speakers theo] [--device cpu] [--keep]
    python benchmarks/accuracy_fsdd_speakers.py --smoke      # smoke run: theo held, 36 clips, 2 folds, no CNN

Why: experiments/_recipes/words_encoder.yaml was chosen on fsdd's speaker-grouped OOF; a user's question is what its
fold ensemble scores on a new speaker's clips, and whether the toolkit's folds, head and ensemble add anything to the
simplest use of the same encoder (one logistic regression on its embeddings). FSDD (../shared/data/fsdd/recordings:
3000 clips of the digits 0-9, 6 speakers, 500 clips each, 8 kHz) is split six ways: each speaker in turn is the test
set, the other five the training set.

For each held speaker, in a temporary project root:
- a contest: data/<speaker>/train holds the other five speakers' clips and data/<speaker>/test the held speaker's
  (symlinks, never copies); labels and speakers from the file names (fsdd's filename regex), 8 kHz, 1 s, 5
  speaker-grouped folds (one training speaker validates each), seed 42, no holdout; every contest shares one cache
  folder, so each clip is decoded per contest but embedded once per run (embeddings are keyed by the samples);
- `words`: an experiment of that contest and the words_encoder recipe, through the real command line in
  subprocesses: `python -m competition.run exp=<name> fold=all` then `python -m competition.blend exps=<name>
  name=<name> method=soft` (the 5 fold models' mean probability, the plain view); the answer file
  submissions/<name>.csv (`id,label`) is scored against the true digits, and its OOF accuracy (over the five
  training speakers) is `scores.oof` of submissions/<name>.json;
- `probe`: the same encoder frozen (competition.encoders.load_encoder("words", -1, "cpu")): each whole clip (not
  cropped to 1 s) resampled to 16 kHz with librosa, the mean of its frames, L2-normalised; ONE scikit-learn
  LogisticRegression (default C = 1; also C = 10, the value an earlier probe outside the toolkit used) fitted on
  every training clip, no folds;
- `cnn` (only the held speakers named by --cnn-speakers, default theo: a CPU takes minutes per fold): the CNN
  recipe (experiments/_recipes/cnn.yaml with fsdd's 8 kHz STFT, n_fft 512) cut to CPU size as in
  benchmarks/accuracy_fsdd.py (CNN_FAST below), run and blended like `words`.

Reported: per held speaker, and the mean over those run, the ensemble's test accuracy, the probes', the OOF
accuracy, the CNN's where run, and seconds. Everything (split folders, configs, fold files, caches, fold outputs,
answers, each command's log) lives in the temporary root, so the repository and ~/.cache are left untouched;
`--keep` keeps it and prints where. Set OMP_NUM_THREADS=1 on a shared machine. --smoke runs the toolkit's commands in
this process rather than in subprocesses (common.toolkit_here), on the digits 0-2 and takes 0-1 (36 clips), 2 folds of
1 epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (REPO, Command, Stopwatch, commands, exit_cleanly_on_sigterm, hardware_line, log, markdown_table,
                    project_root)

import numpy as np
import pandas as pd

FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
WORDS_RECIPE = REPO / "experiments" / "_recipes" / "words_encoder.yaml"
CNN_RECIPE = REPO / "experiments" / "_recipes" / "cnn.yaml"
FILENAME_REGEX = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+"
SAMPLE_RATE = 8000
N_SPLITS = 5
PROBE_CS = (1.0, 10.0)
SMOKE_SPEAKER = "theo"
SMOKE_DIGITS, SMOKE_TAKES = 3, 2  # a smoke run's clips: takes 0-1 of the digits 0-2 by every speaker, 36 in all
SMOKE_EPOCHS = {"train": {"epochs": 1}}  # a smoke run's experiments train one epoch
SMOKE_SPLITS = 2  # and its contests have two folds

# The CNN recipe cut to CPU size as benchmarks/accuracy_fsdd.py's FAST_RECIPE (resnet10t, 40 mels, 20 ms hop, 6
# epochs, cheap batched augmentation), with fsdd's 8 kHz STFT (n_fft 512) and the plain view only.
CNN_FAST = {
    "frontend": {"n_fft": 512, "hop_length": 160, "n_mels": 40},
    "model": {"name": "resnet10t"},
    "train": {"epochs": 6, "lr": 0.003},
    "augment": {"shift": {"p": 0.5}, "noise": {"p": 0.5}, "spec_time": {"p": 0.5}, "spec_freq": {"p": 0.5}},
    "tta": {"views": ["plain"]},
}


@dataclass
class Held:
    speaker: str
    words: float | None = None
    words_oof: float | None = None
    words_seconds: float = 0.0
    probe: dict[float, float] = field(default_factory=dict)
    words_right: np.ndarray | None = None  # per test clip, in the order of `truth`
    probe_right: dict[float, np.ndarray] = field(default_factory=dict)
    cnn: float | None = None
    cnn_oof: float | None = None
    cnn_seconds: float = 0.0


def clips_table(smoke: bool = False) -> pd.DataFrame:
    """Every FSDD clip's id, label and speaker; for a smoke run only the first takes of the first digits."""
    names = sorted(p.stem for p in FSDD.glob("*.wav"))
    parts = [name.split("_") for name in names]
    clips = pd.DataFrame({"id": names, "label": [p[0] for p in parts], "speaker": [p[1] for p in parts],
                          "take": [int(p[2]) for p in parts]})
    if smoke:
        clips = clips[(clips["label"].astype(int) < SMOKE_DIGITS) & (clips["take"] < SMOKE_TAKES)]
    return clips.drop(columns="take")


def lay_out(root: Path, speaker: str, clips: pd.DataFrame) -> Path:
    """data/<speaker>/{train,test}/<id>.wav as symlinks: train the other speakers' clips, test the held one's."""
    base = root / "data" / speaker
    for part, rows in (("train", clips[clips["speaker"] != speaker]), ("test", clips[clips["speaker"] == speaker])):
        folder = base / part
        folder.mkdir(parents=True)
        for clip in rows["id"]:
            (folder / f"{clip}.wav").symlink_to(FSDD / f"{clip}.wav")
    return base


def write_contest(root: Path, speaker: str, base: Path, splits: int = N_SPLITS) -> Path:
    contest = {
        "data": {"name": f"fsdd_without_{speaker}",
                 "train": {"path": str(base / "train"), "layout": "filename", "filename_regex": FILENAME_REGEX},
                 "test": {"path": str(base / "test")}, "cache_dir": str(root / "cache")},
        "audio": {"sample_rate": SAMPLE_RATE, "duration": 1.0},
        "folds": {"n_splits": splits, "seed": 42, "holdout": 0.0},
    }
    path = root / "experiments" / "_contests" / f"fsdd_without_{speaker}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(contest, indent=2) + "\n")  # JSON is YAML
    return path


def write_experiment(root: Path, name: str, contest: Path, recipe: Path, extra: dict | None = None) -> None:
    folder = root / "experiments" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(json.dumps({"contest": str(contest), "recipe": str(recipe), **(extra or {})},
                                                   indent=2) + "\n")


def run_and_score(root: Path, exp: str, truth: pd.Series, device: str,
                  command: Command) -> tuple[np.ndarray, float, float]:
    """Run every fold, blend the fold models' soft mean, score the answer file: (per test clip right or not, OOF,
    seconds)."""
    with Stopwatch() as watch:
        command(root, exp, ["competition.run", f"exp={exp}", "fold=all", f"device={device}"])
        command(root, exp, ["competition.blend", f"exps={exp}", f"name={exp}", "method=soft"])
    answer = pd.read_csv(root / "submissions" / f"{exp}.csv", dtype=str, keep_default_na=False)
    predicted = answer.set_index("id")["label"].str.strip()
    if set(predicted.index) != set(truth.index) or predicted.index.duplicated().any():
        raise SystemExit(f"{exp}: the answer file's ids are not exactly the {len(truth)} test clips")
    report = json.loads((root / "submissions" / f"{exp}.json").read_text())
    if report.get("method") != "soft":
        raise SystemExit(f"{exp}: blend wrote {report.get('method')!r}, not soft")
    return (predicted.loc[truth.index] == truth).to_numpy(), float(report["scores"]["oof"]), watch.seconds


def probe_features(clips: pd.DataFrame) -> np.ndarray:
    """Each whole clip through the frozen encoder at 16 kHz: the mean of its frames, L2-normalised."""
    import librosa
    import soundfile as sf

    from competition.encoders import load_encoder

    encoder = load_encoder("words", -1, "cpu")
    rows = []
    for clip in clips["id"]:
        wave, rate = sf.read(FSDD / f"{clip}.wav", dtype="float32", always_2d=True)
        wave = librosa.resample(wave.mean(axis=1), orig_sr=rate, target_sr=encoder.sample_rate)
        rows.append(encoder.frames([wave.astype(np.float32)])[0].mean(axis=0))
    features = np.stack(rows).astype(np.float64)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def run_probe(features: np.ndarray, clips: pd.DataFrame, speaker: str, truth: pd.Series) -> dict[float, np.ndarray]:
    """Per C, whether each test clip (in the order of `truth`) is classified right."""
    from sklearn.linear_model import LogisticRegression

    train = (clips["speaker"] != speaker).to_numpy()
    labels = clips["label"].to_numpy()
    test = pd.Series(np.flatnonzero(~train), index=clips["id"][~train]).loc[truth.index].to_numpy()
    out = {}
    for c in PROBE_CS:
        model = LogisticRegression(C=c, max_iter=5000).fit(features[train], labels[train])
        out[c] = model.predict(features[test]) == truth.to_numpy()
    return out


def mcnemar(first: np.ndarray, second: np.ndarray) -> tuple[int, int, float]:
    """Clips only the first gets right, clips only the second does, and McNemar's exact two-sided p."""
    from scipy.stats import binomtest

    only_first, only_second = int((first & ~second).sum()), int((~first & second).sum())
    n = only_first + only_second
    return only_first, only_second, binomtest(only_first, n).pvalue if n else 1.0


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", default="all", help="comma-separated held speakers (default all six)")
    parser.add_argument("--cnn-speakers", default=SMOKE_SPEAKER,
                        help=f"held speakers the CNN recipe also runs on ('' none, 'all'; default {SMOKE_SPEAKER})")
    parser.add_argument("--device", default="cpu", help="device= of competition.run: cpu, cuda, cuda:N or auto")
    parser.add_argument("--smoke", action="store_true",
                        help=f"smoke run: held speaker {SMOKE_SPEAKER} only, 36 clips, 2 folds of 1 epoch, no CNN")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if not FSDD.is_dir():
        raise SystemExit(f"FSDD recordings not found at {FSDD}")
    clips = clips_table(args.smoke)
    everyone = sorted(clips["speaker"].unique())
    speakers = everyone if args.speakers == "all" else args.speakers.split(",")
    cnn_speakers = everyone if args.cnn_speakers == "all" else [s for s in args.cnn_speakers.split(",") if s]
    splits = SMOKE_SPLITS if args.smoke else N_SPLITS
    if args.smoke:
        speakers, cnn_speakers = [SMOKE_SPEAKER], []
    unknown = sorted(set(speakers + cnn_speakers) - set(everyone))
    if unknown:
        raise SystemExit(f"unknown speakers {unknown}; FSDD has {', '.join(everyone)}")

    command = commands(in_process=args.smoke)
    started = time.perf_counter()
    results: list[Held] = []
    with project_root("competition-fsdd-speakers-", args.keep) as root:
        log(f"project root {root}")
        with Stopwatch() as probe_watch:
            features = probe_features(clips)
        log(f"probe features of {len(clips)} clips: {probe_watch.seconds:.0f}s")
        for speaker in speakers:
            truth = clips[clips["speaker"] == speaker].set_index("id")["label"]
            held = Held(speaker, probe_right=run_probe(features, clips, speaker, truth))
            held.probe = {c: float(right.mean()) for c, right in held.probe_right.items()}
            contest = write_contest(root, speaker, lay_out(root, speaker, clips), splits)
            exp = f"words_{speaker}"
            write_experiment(root, exp, contest, WORDS_RECIPE, SMOKE_EPOCHS if args.smoke else None)
            held.words_right, held.words_oof, held.words_seconds = run_and_score(root, exp, truth, args.device, command)
            held.words = float(held.words_right.mean())
            if speaker in cnn_speakers:
                exp = f"cnn_{speaker}"
                write_experiment(root, exp, contest, CNN_RECIPE, CNN_FAST)
                right, held.cnn_oof, held.cnn_seconds = run_and_score(root, exp, truth, args.device, command)
                held.cnn = float(right.mean())
            results.append(held)
            log(f"{speaker}: words ensemble {held.words:.4f} (OOF {held.words_oof:.4f}, {held.words_seconds:.0f}s), "
                + ", ".join(f"probe C={c:g} {a:.4f}" for c, a in held.probe.items())
                + ("" if held.cnn is None else f", cnn {held.cnn:.4f} (OOF {held.cnn_oof:.4f}, "
                                               f"{held.cnn_seconds:.0f}s)"))

    total = time.perf_counter() - started
    header = ["held speaker", f"words {splits}-fold soft ensemble", *(f"probe LR C={c:g}" for c in PROBE_CS),
              "words OOF", f"cnn {splits}-fold soft", "cnn OOF", "seconds (words, cnn)"]
    rows = [[r.speaker, fmt(r.words), *(fmt(r.probe[c]) for c in PROBE_CS), fmt(r.words_oof), fmt(r.cnn),
             fmt(r.cnn_oof), f"{r.words_seconds:.0f}" + ("" if r.cnn is None else f", {r.cnn_seconds:.0f}")]
            for r in results]
    rows.append([f"mean of {len(results)}", fmt(mean([r.words for r in results])),
                 *(fmt(mean([r.probe[c] for r in results])) for c in PROBE_CS),
                 fmt(mean([r.words_oof for r in results])),
                 fmt(mean([r.cnn for r in results])), fmt(mean([r.cnn_oof for r in results])),
                 f"{np.mean([r.words_seconds for r in results]):.0f}"])
    print()
    held_clips = len(results[0].words_right)
    print(f"## FSDD, leave one speaker out ({held_clips} test clips of the held speaker, {len(clips) - held_clips} "
          "training clips of five others)")
    print()
    print(f"Hardware: {hardware_line(args.device if args.device != 'auto' else 'cpu')}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"words: experiments/_recipes/words_encoder.yaml; cnn: cnn.yaml + {json.dumps(CNN_FAST)}; "
          f"{splits} speaker-grouped folds, seed 42, no holdout; blend method=soft")
    print(f"Total wall time {total / 60:.1f} min ({total:.0f}s, of which probe features {probe_watch.seconds:.0f}s)")
    print()
    print(markdown_table(header, rows))
    words = mean([r.words for r in results])
    print()
    print(f"words ensemble mean {words:.4f} ({'>=' if words >= 0.95 else '<'} 0.95)")
    words_right = np.concatenate([r.words_right for r in results])
    for c in PROBE_CS:
        wins = sum(r.words > r.probe[c] for r in results)
        ties = sum(r.words == r.probe[c] for r in results)
        only_words, only_probe, p = mcnemar(words_right, np.concatenate([r.probe_right[c] for r in results]))
        print(f"- against probe C={c:g} ({mean([r.probe[c] for r in results]):.4f}): mean "
              f"{words - mean([r.probe[c] for r in results]):+.4f}, higher on {wins}/{len(results)} speakers "
              f"({ties} ties); over all {len(words_right)} test clips {only_words} right only by the ensemble, "
              f"{only_probe} only by the probe, McNemar exact p = {p:.3f}")
    skip = ("words_right", "probe_right")
    print(json.dumps({"results": [{k: v for k, v in r.__dict__.items() if k not in skip} for r in results],
                      "seconds": round(total, 1)}))


if __name__ == "__main__":
    main()
