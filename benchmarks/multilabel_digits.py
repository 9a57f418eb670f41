"""Multi-label heads side by side: the plain head against the SED head on mixed spoken digits, scored on the clips of
unseen speakers and window by window on long soundscapes.

    OMP_NUM_THREADS=1 python benchmarks/multilabel_digits.py [--work <folder>] [--folds 3] [--epochs 12]
                                                             [--model resnet10t] [--device cpu] [--keep]
    OMP_NUM_THREADS=1 python benchmarks/multilabel_digits.py --smoke   # a tiny contest, well under a minute

Why: multi-label contests (data.task=multilabel) offer two heads on the same timm CNN: `model.head: plain` (the
backbone's own global pooling and classifier: one decision per crop) and `model.head: sed` (a classifier per frame,
pooled over time by softmax attention: competition.backbones.SEDHead). The SED head is meant to hear short events
in long, mostly empty audio better. Which head wins on clips, and which on 5-second windows of soundscapes, measured
here on one contest in one run with everything else the same.

The contest (competition.mixtures.make_mixtures): the Free Spoken Digit Dataset (../shared/data/fsdd/recordings, six
speakers) mixed one to three utterances of one speaker per clip over real noise (../shared/data/background_noise),
clips of `--duration` seconds at `--sample-rate`; its default test speakers (the last quarter in sorted order: theo,
yweweler) say the test clips and the soundscapes, the other four the training clips. Kept in --work (made once per
settings, reused by later runs); without --work a temporary folder holds everything and is removed afterwards
unless --keep.

How, in a fresh project root <work>/project (configs, fold file, waveform cache, fold outputs, answer files and each
command's log in logs/), every step through the toolkit's own commands, whose `main([...])` runs in this process
(one interpreter and torch start for the whole benchmark) from the project root as `python -m competition.<verb>`
would run it:

- two experiments, digits_plain and digits_sed, identical but for model.head: data.task=multilabel on the train
  table (labels, speaker-grouped and iteratively stratified folds), train.metric=lwlrap, the configured test set the
  soundscapes answered per `submission.window: 5` with `tta.views: [whole_max]` (each 5 s window is the class-wise
  max over the model's crops of audio.duration slid along it half a crop at a time), and `submission.columns:
  classes` (answer files of probabilities, one column per class);
- per experiment, timed: `competition.run exp=<exp> fold=all` (trains every fold; each fold also predicts the
  soundscape windows), then `competition.predict exps=<exp> test=<mix>/test name=clips method=soft` (the test clips
  of unseen speakers, through the same folds; the trained config's window applies, so each clip, shorter than a
  window, is one window whose id is <clip>_<window end second>: the clip itself, which one crop covers exactly);
- `competition.blend method=soft` of each experiment alone (its fold ensemble) and of both (equal weights), once
  for the soundscapes (the configured test set) and once with test=clips: the answer files scored here, and the
  blend report's OOF score (lwlrap over the training clips' out-of-fold predictions).

Scored with competition.metrics.METRICS against test_answers.csv and soundscape_answers.csv: on the test clips
lwlrap, cmap (padded), macro ROC AUC and macro F1 at 0.5; on the soundscape windows ROC AUC, cmap and F1 at 0.5
over all windows (empty windows included: a score on them is a false alarm) and lwlrap over the windows holding at
least one digit (an empty window has no label to rank). Seconds per experiment are run + predict. Below the table,
sed minus plain with a paired bootstrap 95% interval (clips resampled; windows resampled by soundscape, since the
windows of one recording share its noise); the conclusion names a head as winning a score only where that interval
excludes zero. Printed, and written with the command line and date to benchmarks/results/multilabel_digits.txt
(--smoke writes nothing).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

from common import (REPO, Stopwatch, ToolkitFailed, exit_cleanly_on_sigterm, hardware_line, log, markdown_table,
                    toolkit_here)

import numpy as np
import pandas as pd

SHARED = REPO.parent / "shared" / "data"
FSDD = SHARED / "fsdd" / "recordings"
NOISE = SHARED / "background_noise"
RESULTS = REPO / "benchmarks" / "results" / "multilabel_digits.txt"
HEADS = ("plain", "sed")
WINDOW = 5
BOOTSTRAP = 1000
SMOKE_BOOTSTRAP = 20


@dataclass(frozen=True)
class Settings:
    """The contest's size and the recipe both heads share."""

    clips: int = 720
    test_clips: int = 200
    recordings: int = 10
    soundscape_seconds: int = 30
    duration: float = 3.0
    sample_rate: int = 16000
    folds: int = 3
    epochs: int = 12
    model: str = "resnet10t"  # an epoch of 548 clips under the same load: resnet18 35-55 s, resnet10t 15-17 s
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 320  # 20 ms at 16 kHz: 151 frames for a 3 s crop
    batch_size: int = 32
    lr: float = 0.003

    def mix_name(self) -> str:
        return (f"fsdd-mix-{self.clips}c-{self.test_clips}t-{self.recordings}x{self.soundscape_seconds}s-"
                f"{self.duration:g}s-{self.sample_rate // 1000}k")


SMOKE = Settings(clips=30, test_clips=12, recordings=2, soundscape_seconds=10, duration=2.0, sample_rate=8000,
                 folds=2, epochs=1, model="resnet10t", n_mels=32, n_fft=256, hop_length=80, batch_size=16, lr=0.01)


def experiment_config(settings: Settings, mix: Path, cache: Path, head: str) -> dict:
    return {
        "data": {"name": "digits_mix", "task": "multilabel", "cache_dir": str(cache),
                 "train": {"path": str(mix / "train"), "layout": "table", "table": "labels.csv", "header": True,
                           "label_column": "labels", "group_column": "speaker"},
                 "test": {"path": str(mix / "soundscapes")}},
        "audio": {"sample_rate": settings.sample_rate, "duration": settings.duration},
        "folds": {"n_splits": settings.folds},
        "frontend": {"n_mels": settings.n_mels, "n_fft": settings.n_fft, "hop_length": settings.hop_length},
        "model": {"name": settings.model, "head": head},
        "train": {"epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
                  "schedule": "onecycle", "metric": "lwlrap"},
        # cheap batched augmentation for unseen voices: time shift and SpecAugment masks
        "augment": {"shift": {"p": 0.5}, "spec_time": {"p": 0.5}, "spec_freq": {"p": 0.5}},
        "tta": {"views": ["whole_max"]},
        "submission": {"window": WINDOW, "id_column": "row_id", "columns": "classes"},
    }


def warm_up(root: Path, exp: str, test_clips: Path) -> None:
    """The toolkit's modules imported and every clip decoded into the project's waveform cache (train clips,
    soundscapes, test clips) before the timers start, so that the first experiment does not pay for what both use."""
    from competition.cache import load_split
    from competition.config import load_experiment
    from competition.data import index_test, index_train, with_test_source

    for verb in ("run", "predict", "blend"):
        importlib.import_module(f"competition.{verb}")
    importlib.import_module("librosa.filters")  # imported lazily by the first log-mel frontend
    importlib.import_module("matplotlib").use("Agg")  # as the first fold's training curves would, then pyplot
    importlib.import_module("matplotlib.pyplot")
    before = os.getcwd()
    os.chdir(root)
    try:
        with open(root / "logs" / "warm_up.err", "w") as err, redirect_stderr(err):
            cfg = load_experiment(exp).cfg
            for split in (index_train(cfg), index_test(cfg),
                          index_test(with_test_source(cfg, {"path": str(test_clips)}))):
                load_split(split, cfg, skip_bad=False)
    finally:
        os.chdir(before)


def make_contest(settings: Settings, work: Path) -> Path:
    from competition.mixtures import make_mixtures

    return make_mixtures(FSDD, work / settings.mix_name(), layout="fsdd", noise=NOISE, clips=settings.clips,
                         test_clips=settings.test_clips, recordings=settings.recordings, duration=settings.duration,
                         soundscape_seconds=settings.soundscape_seconds, window=WINDOW,
                         sample_rate=settings.sample_rate)


def read_truth(path: Path, id_column: str, classes: list[str]) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False).set_index(id_column)
    return pd.DataFrame([[c in labels.split() for c in classes] for labels in table["labels"]], index=table.index,
                        columns=classes).astype(float)


def read_answer(root: Path, name: str, classes: list[str], strip_window: bool = False) -> pd.DataFrame:
    """submissions/<name>.csv (row_id, one probability column per class); for the test clips, each clip's one window
    id <clip>_<end second> back to the clip's id."""
    table = pd.read_csv(root / "submissions" / f"{name}.csv", dtype={"row_id": str}).set_index("row_id")
    if strip_window:
        table.index = table.index.str.rsplit("_", n=1).str[0]
    return table[classes].astype(float)


def oof_lwlrap(root: Path, name: str) -> float:
    return float(json.loads((root / "submissions" / f"{name}.json").read_text())["scores"]["oof"])


def oof_frame(root: Path, exp: str, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The experiment's out-of-fold probabilities (its first view, as blend's soft reads them) and their truth."""
    frames = [pd.read_csv(p, dtype={"id": str, "view": str, "label": str}, keep_default_na=False)
              for p in sorted((root / "experiments" / exp).glob("fold_*/oof.csv"))]
    oof = pd.concat(frames)
    oof = oof[oof["view"] == oof["view"].iloc[0]].set_index("id").sort_index()
    truth = pd.DataFrame([[c in label.split() for c in classes] for label in oof["label"]], index=oof.index,
                         columns=classes).astype(float)
    return oof[classes].astype(float), truth


CLIP_SCORES = [("lwlrap", "lwlrap"), ("cmap", "cmap"), ("roc_auc", "ROC AUC"), ("macro_f1_threshold", "F1@0.5")]
WINDOW_SCORES = [("lwlrap", "lwlrap*"), ("cmap", "cmap"), ("roc_auc", "ROC AUC"), ("macro_f1_threshold", "F1@0.5")]


def score(metric: str, truth: np.ndarray, probs: np.ndarray, windows: bool) -> float:
    from competition.metrics import METRICS

    if windows and metric == "lwlrap":  # only windows holding a digit carry a (window, label) pair to rank
        keep = truth.sum(1) > 0
        truth, probs = truth[keep], probs[keep]
    return float(METRICS[metric].score(truth, probs))


def scores(truth: pd.DataFrame, probs: pd.DataFrame, windows: bool) -> dict[str, float]:
    missing = sorted(set(truth.index) - set(probs.index))
    if missing or len(probs) != len(truth):
        raise SystemExit(f"answer rows do not match the truth: {len(probs)} rows for {len(truth)}, missing "
                         f"{missing[:3]}")
    p = probs.loc[truth.index].to_numpy()
    return {m: score(m, truth.to_numpy(), p, windows) for m, _ in (WINDOW_SCORES if windows else CLIP_SCORES)}


def bootstrap_difference(metric: str, truth: np.ndarray, a: np.ndarray, b: np.ndarray, groups: np.ndarray,
                         windows: bool, rng: np.random.Generator, resamples: int) -> tuple[float, float, float]:
    """b minus a on the same rows, and its paired bootstrap 95% interval, resampling whole groups."""
    names = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in names]
    diffs = []
    for _ in range(resamples):
        rows = np.concatenate([members[i] for i in rng.integers(len(names), size=len(names))])
        d = score(metric, truth[rows], b[rows], windows) - score(metric, truth[rows], a[rows], windows)
        if np.isfinite(d):
            diffs.append(d)
    point = score(metric, truth, b, windows) - score(metric, truth, a, windows)
    low, high = np.percentile(diffs, [2.5, 97.5]) if diffs else (float("nan"), float("nan"))
    return point, float(low), float(high)


def fmt(value: float) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4f}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="", help="folder for the mixed contest (made once, reused) and the project "
                                                   "root <work>/project (made fresh); default a temporary folder")
    parser.add_argument("--folds", type=int, default=None, help=f"folds.n_splits (default {Settings.folds})")
    parser.add_argument("--epochs", type=int, default=None, help=f"train.epochs (default {Settings.epochs})")
    parser.add_argument("--model", default=None, help=f"the timm backbone both heads share (default {Settings.model})")
    parser.add_argument("--device", default="cpu", help="device= of the toolkit commands: cpu, cuda, cuda:N or auto")
    parser.add_argument("--smoke", action="store_true", help="a tiny contest (30 clips, 2 folds of 1 epoch, resnet10t "
                                                             "at 8 kHz, 32 mels): checks the flow, writes no results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder (printed)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    settings = SMOKE if args.smoke else Settings()
    chosen = {k: v for k, v in (("folds", args.folds), ("epochs", args.epochs), ("model", args.model)) if v}
    settings = Settings(**{**settings.__dict__, **chosen})
    for path in (FSDD, NOISE):
        if not path.is_dir():
            raise SystemExit(f"needs {path} (../shared/data beside the repository)")

    started = time.perf_counter()
    temporary = not args.work
    work = Path(tempfile.mkdtemp(prefix="competition-multilabel-")) if temporary else Path(args.work).resolve()
    failed = None
    try:
        with Stopwatch() as mixing:
            mix = make_contest(settings, work)
        log(f"contest {mix} ({mixing.seconds:.0f}s)")
        root = work / "project"
        shutil.rmtree(root, ignore_errors=True)  # fresh: finished folds of an earlier run would be skipped
        (root / "experiments").mkdir(parents=True)
        import yaml

        exps = {head: f"digits_{head}" for head in HEADS}
        for head, exp in exps.items():
            (root / "experiments" / exp).mkdir()
            (root / "experiments" / exp / "config.yaml").write_text(
                yaml.safe_dump(experiment_config(settings, mix, root / "cache", head), sort_keys=False))
        (root / "logs").mkdir()
        with Stopwatch() as warming:
            warm_up(root, exps["plain"], mix / "test")
        log(f"modules imported and clips cached in {warming.seconds:.0f}s")
        seconds = {}
        for head, exp in exps.items():
            with Stopwatch() as watch:
                toolkit_here(root, exp, ["competition.run", f"exp={exp}", "fold=all", f"device={args.device}"])
                toolkit_here(root, exp, ["competition.predict", f"exps={exp}", f"test={mix / 'test'}", "name=clips",
                                                               "method=soft", "overwrite=true",
                                                               f"device={args.device}"])
            seconds[head] = watch.seconds
            log(f"{exp}: trained {settings.folds} folds and predicted the test clips in {watch.seconds:.0f}s")
        blends = {**{head: [exp] for head, exp in exps.items()}, "blend": list(exps.values())}
        with Stopwatch() as blending:
            for row, members in blends.items():
                for part, extra in (("windows", []), ("clips", ["test=clips"])):
                    toolkit_here(root, f"{row}-{part}", ["competition.blend",
                                                         f"exps={','.join(members)}", "method=soft", f"name={row}-{part}", "overwrite=true",
                                  *extra])
        seconds["blend"] = blending.seconds
        log(f"blends in {blending.seconds:.0f}s")

        classes = [str(c) for c in range(10)]
        clip_truth = read_truth(mix / "test_answers.csv", "id", classes)
        window_truth = read_truth(mix / "soundscape_answers.csv", "row_id", classes)
        results, probs = {}, {}
        for row in blends:
            clips = read_answer(root, f"{row}-clips", classes, strip_window=True)
            windows = read_answer(root, f"{row}-windows", classes)
            probs[row] = (clips.loc[clip_truth.index].to_numpy(), windows.loc[window_truth.index].to_numpy())
            results[row] = {"oof": oof_lwlrap(root, f"{row}-clips"), "clips": scores(clip_truth, clips, False),
                            "windows": scores(window_truth, windows, True), "seconds": seconds[row]}
            if oof_lwlrap(root, f"{row}-windows") != results[row]["oof"]:
                raise SystemExit(f"{row}: the two blends' OOF scores differ")
        oof = {head: oof_frame(root, exp, classes) for head, exp in exps.items()}
        if not oof["plain"][0].index.equals(oof["sed"][0].index):
            raise SystemExit("the two experiments' OOF clips differ")
        total = time.perf_counter() - started
        rng = np.random.default_rng(0)
        resamples = SMOKE_BOOTSTRAP if args.smoke else BOOTSTRAP
        recs = window_truth.index.str.rsplit("_", n=1).str[0].to_numpy()
        oof_truth = oof["plain"][1].to_numpy()
        differences = [("OOF lwlrap", bootstrap_difference("lwlrap", oof_truth, oof["plain"][0].to_numpy(),
                                                           oof["sed"][0].to_numpy(), np.arange(len(oof_truth)),
                                                           False, rng, resamples))]
        differences += [(f"test clips {label}", bootstrap_difference(
            metric, clip_truth.to_numpy(), probs["plain"][0], probs["sed"][0], np.arange(len(clip_truth)), False,
            rng, resamples)) for metric, label in CLIP_SCORES]
        differences += [(f"windows {label}", bootstrap_difference(
            metric, window_truth.to_numpy(), probs["plain"][1], probs["sed"][1], recs, True, rng, resamples))
            for metric, label in WINDOW_SCORES]
    except ToolkitFailed as exc:
        failed = exc.args[0] or 1
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            if failed:
                log(f"work folder {work} removed; --keep or --work keeps its logs")
        elif failed or args.keep:
            log(f"kept {work}")
    if failed:
        sys.exit(failed)

    header = (["head", "OOF lwlrap"] + [f"test clips {label}" for _, label in CLIP_SCORES]
              + [f"windows {label}" for _, label in WINDOW_SCORES] + ["seconds"])
    rows = []
    for row, result in results.items():
        name = {"plain": "plain (model.head=plain)", "sed": "sed (model.head=sed)",
                "blend": "soft blend of both"}[row]
        rows.append([name, fmt(result["oof"])] + [fmt(result["clips"][m]) for m, _ in CLIP_SCORES]
                    + [fmt(result["windows"][m]) for m, _ in WINDOW_SCORES]
                    + [f"{result['seconds']:.0f}" + (" (blends)" if row == "blend" else "")])
    diff_rows = [[what, f"{point:+.4f}", f"[{low:+.4f}, {high:+.4f}]",
                  "sed" if low > 0 else "plain" if high < 0 else "neither"] for what, (point, low, high) in differences]
    sed_wins = [what for what, (_, low, _) in differences if low > 0]
    plain_wins = [what for what, (_, _, high) in differences if high < 0]
    ties = [what for what, (_, low, high) in differences if low <= 0 <= high]
    conclusion = ("Conclusion: sed wins on " + (", ".join(sed_wins) or "nothing") + "; plain wins on "
                  + (", ".join(plain_wins) or "nothing") + "; no clear winner on " + (", ".join(ties) or "nothing")
                  + f" (paired bootstrap 95% intervals of sed - plain, {resamples} resamples).")
    n_windows, n_full = len(window_truth), int((window_truth.sum(axis=1) > 0).sum())
    command = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "unset") + " python " + " ".join(
        shlex.quote(a) for a in ["benchmarks/multilabel_digits.py", *argv])
    lines = [
        "## Multi-label heads on mixed spoken digits: model.head=plain against model.head=sed" + (" (SMOKE)" if
                                                                                                  args.smoke else ""),
        "",
        f"Command: {command}",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"Hardware: {hardware_line(args.device if args.device != 'auto' else 'cpu')}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"Total wall time {total / 60:.1f} min ({total:.0f}s): mixing the contest {mixing.seconds:.0f}s, importing "
        f"the toolkit and caching the clips {warming.seconds:.0f}s (before the timers), then the rows' seconds",
        f"Contest (competition.mixtures, fsdd over background_noise): {settings.clips} train clips of 4 speakers, "
        f"{settings.test_clips} test clips and {settings.recordings} soundscapes of {settings.soundscape_seconds} s "
        f"by 2 unseen speakers; {settings.duration:g} s clips at {settings.sample_rate} Hz, 1-3 digits each",
        f"Recipe (both heads): {settings.model}, {settings.n_mels} mels (n_fft {settings.n_fft}, hop "
        f"{settings.hop_length}), {settings.epochs} epochs onecycle lr {settings.lr} batch {settings.batch_size}, "
        f"shift + time/freq masks p=0.5, BCE, train.metric=lwlrap, {settings.folds} speaker-grouped folds; "
        f"tta.views=[whole_max], submission.window={WINDOW}",
        f"Ensembles: each experiment's {settings.folds} fold models averaged (competition.blend method=soft); the "
        "blend: both experiments, equal weights",
        f"Windows: {n_windows} windows of {WINDOW} s, {n_full} holding a digit; lwlrap* over those {n_full}, the other "
        "window scores over all (ROC AUC and F1 per class, macro)",
        "Seconds per experiment: competition.run fold=all (training + soundscape windows) + competition.predict "
        "(test clips); the blend row: the 6 blends",
        "",
        markdown_table(header, rows),
        "",
        "sed minus plain, paired bootstrap 95% interval (test clips and OOF clips resampled; windows resampled by "
        "soundscape):",
        "",
        markdown_table(["score", "sed - plain", "95% interval", "better head"], diff_rows),
        "",
        conclusion,
    ]
    text = "\n".join(lines)
    print()
    print(text)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
        log(f"written {RESULTS}")


if __name__ == "__main__":
    main()
