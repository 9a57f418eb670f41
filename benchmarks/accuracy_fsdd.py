"""Locked-holdout accuracy on the real FSDD recordings: recipes side by side, each blended the way a user would.

    python benchmarks/accuracy_fsdd.py [--recipes old,new,windows] [--folds 0,1,2,3,4] [--device cpu] [--keep]
                                       [key=value ...]
    python benchmarks/accuracy_fsdd.py --smoke    # smoke run: fold 0 of each recipe, 1 epoch, 36 clips

Trains experiments/fsdd (a CNN on ../shared/data/fsdd: speaker-grouped 5-fold, one speaker locked away as fold -1)
once per recipe through the real runner, competition.train.train_fold: the old default (per-clip normalisation,
zero-filled shift views), the new candidate (dataset-level normalisation with gain augmentation, windows slid along
the clip as views) and the old normalisation with the new views; then blends each with competition.blend's default,
evidence-based method. Reported per recipe: the mean single fold, the 5-fold soft ensemble with and without TTA, the
written method (chosen on OOF only), each view's accuracy, all on the held-out speaker. The default CNN (resnet18,
12 epochs, 64 mels) takes about half a minute per epoch per fold on two CPU cores, so the recipes are CPU-sized
(FAST_RECIPE below, printed with the results); extra key=value arguments are appended to each and win. Training is
seeded and repeats exactly on the CPU, so a recipe run alone gives the numbers it gives beside the others.

Everything is written into a temporary project root (copies of the experiment configs, the fold file and the
fold outputs), so the repository is left untouched; the audio is read in place and the waveform cache is the
usual shared one (~/.cache/competition/waveforms).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from accuracy_fsdd_speakers import clips_table
from common import REPO, TINY_CNN, Stopwatch, exit_cleanly_on_sigterm, hardware_line, log, markdown_table

import numpy as np
import pandas as pd

FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"

# The default recipe (a timm CNN on per-clip normalised log-mels, AdamW + one-cycle, batch 32, speaker folds, a
# holdout speaker) cut to fit five folds into about 7.5 minutes on two CPU cores, where the default (resnet18 on
# 64 mels x 101 frames, 12 epochs) needs about 27 s per epoch: a shallower ResNet (resnet10t), 40 mels and a
# 20 ms hop (51 frames; the fsdd base's 8 kHz STFT has n_fft 512, hop 80), 6 epochs at a higher peak rate: about
# 2.8x the default's training samples/s here (185 against 66 on the bare model). Cheap batched augmentation that helps a model
# trained on four speakers hear a fifth: time shift, noise, time and frequency masks. Gain is left out: with
# frontend.normalize=clip (and top_db per clip) a gain changes nothing the model sees, so gain augmentation and a
# gain TTA view are no-ops. TTA: the plain view and shifts within the training shift range (+-0.1 of the clip).
# The default recipe (a timm CNN on log-mels, AdamW + one-cycle, batch 32, speaker folds, a holdout speaker) cut to
# fit five folds into about 7.5 minutes on two CPU cores, where the default (resnet18 on 64 mels x 101 frames, 12
# epochs) needs about 27 s per epoch: a shallower ResNet (resnet10t), 40 mels and a 20 ms hop (51 frames; the fsdd
# experiment's 8 kHz STFT has n_fft 512, hop 80), 6 epochs at a higher peak rate: about 2.8x the default's training
# samples/s here. Cheap batched augmentation that helps a model trained on four speakers hear a fifth: time shift,
# noise, time and frequency masks.
FAST_RECIPE = [
    "model.name=resnet10t",
    "frontend.n_mels=40",
    "frontend.hop_length=160",
    "train.epochs=6",
    "train.lr=0.003",
    "augment.shift.p=0.5",
    "augment.noise.p=0.5",
    "augment.spec_time.p=0.5",
    "augment.spec_freq.p=0.5",
]
RECIPES = {
    # per-clip standardised log-mels (gain is a no-op), views that shift the samples in the window, zeros in
    "old": FAST_RECIPE + ["tta.views=[plain,shift:-0.1,shift:-0.05,shift:0.05,shift:0.1]"],
    # each band standardised over the training clips (level cues kept, so gain augmentation counts), views that slide
    # the window along the clip's own audio
    "new": FAST_RECIPE + ["frontend.normalize=dataset", "augment.gain.p=0.5",
                          "tta.views=[plain,window:-0.1,window:-0.05,window:0.05,window:0.1]"],
    # the old normalisation with the new views: which of the two changes the views' effect belongs to
    "windows": FAST_RECIPE + ["tta.views=[plain,window:-0.1,window:-0.05,window:0.05,window:0.1]"],
}


@contextmanager
def temporary_project(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary project root holding copies of the experiment configs (and the committed fold file), made the
    working directory for the block; removed afterwards unless `keep` (then its path is printed)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    cwd = os.getcwd()
    try:
        make_project(root)
        os.chdir(root)
        log(f"project root {root}")
        yield root
    finally:
        os.chdir(cwd)
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def make_project(root: Path) -> None:
    """The experiment configs (not their outputs) and, if committed, the fold file, copied into `root`."""
    for config in (REPO / "experiments").glob("**/*.yaml"):
        rel = config.relative_to(REPO)
        if any(part.startswith("fold_") for part in rel.parts):
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(config, root / rel)
    committed = REPO / "folds" / "fsdd.csv"
    if committed.is_file():
        (root / "folds").mkdir(exist_ok=True)
        shutil.copy2(committed, root / "folds" / "fsdd.csv")


def smoke_clips(root: Path) -> Path:
    """A smoke run's clips (accuracy_fsdd_speakers.clips_table) as symlinks in root/fsdd."""
    folder = root / "fsdd"
    folder.mkdir()
    for clip in clips_table(smoke=True)["id"]:
        (folder / f"{clip}.wav").symlink_to(FSDD / f"{clip}.wav")
    return folder


def read_holdout(path: Path) -> tuple[pd.DataFrame, list[str]]:
    frame = pd.read_csv(path, dtype={"id": str, "view": str, "label": str})
    classes = [c for c in frame.columns if c not in ("id", "view", "label")]
    return frame, classes


def view_probs(frame: pd.DataFrame, view: str, classes: list[str]) -> pd.DataFrame:
    """(clips, classes) probabilities of one view, indexed and sorted by id, with the label as a last column."""
    rows = frame[frame["view"] == view].set_index("id").sort_index()
    return rows[classes + ["label"]]


def accuracy(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> float:
    return float((np.asarray(classes)[probs.argmax(1)] == labels).mean())


def holdout_scores(exp, folds: list[int]) -> dict:
    """Holdout accuracy of each fold (plain and TTA mean), of the fold ensembles, and of each view's soft ensemble."""
    frames = {fold: read_holdout(exp.fold_dir(fold) / "holdout.csv") for fold in folds}
    classes = frames[folds[0]][1]
    tta = list(exp.cfg.tta.views)
    plain = {k: view_probs(f, tta[0], classes) for k, (f, _) in frames.items()}
    mean_view = {k: view_probs(f, "mean", classes) for k, (f, _) in frames.items()}
    labels = plain[folds[0]]["label"].to_numpy()
    for k in folds:
        assert plain[k].index.equals(plain[folds[0]].index), "holdout ids differ between folds"
    p_plain = [plain[k][classes].to_numpy() for k in folds]
    p_mean = [mean_view[k][classes].to_numpy() for k in folds]
    return {"single": [accuracy(p, labels, classes) for p in p_plain],
            "single_tta": [accuracy(p, labels, classes) for p in p_mean],
            "soft": accuracy(np.mean(p_plain, axis=0), labels, classes),
            "soft_tta": accuracy(np.mean(p_mean, axis=0), labels, classes),
            "per_view": {view: accuracy(np.mean([view_probs(frames[k][0], view, classes)[classes].to_numpy()
                                                 for k in folds], axis=0), labels, classes) for view in tta},
            "n": len(labels)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides, applied after each recipe")
    parser.add_argument("--folds", default="0,1,2,3,4", help="comma-separated folds to train (default all five)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--smoke", action="store_true", help="smoke run: fold 0 of each recipe for 1 epoch on 32 mels, "
                                                              "on 36 clips (accuracy_fsdd_speakers.clips_table)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    recipes = {name: RECIPES[name] for name in args.recipes.split(",")}
    if not FSDD.is_dir():
        raise SystemExit(f"FSDD recordings not found at {FSDD}")
    if args.smoke:
        args.folds, args.overrides = "0", TINY_CNN + args.overrides

    from competition.blend import main as blend
    from competition.config import load_experiment
    from competition.folds import main as folds_main
    from competition.train import train_fold

    folds = [int(k) for k in args.folds.split(",")]
    started = time.perf_counter()
    results, per_fold = {}, []
    with temporary_project("competition-accuracy-fsdd-", args.keep) as root:
        data = [f"data.train.path={FSDD}"]
        if args.smoke:  # the slice gets its own fold file and waveform cache
            data = [f"data.train.path={smoke_clips(root)}", f"data.cache_dir={root / 'cache'}"]
            (root / "folds" / "fsdd.csv").unlink(missing_ok=True)
        if not (root / "folds" / "fsdd.csv").is_file():
            log("folds/fsdd.csv is not committed: making it as `python -m competition.folds exp=fsdd` would")
            folds_main(["exp=fsdd", *data])
        fold_table = pd.read_csv(root / "folds" / "fsdd.csv", dtype=str)
        speakers = fold_table.groupby("fold")["group"].unique().map(lambda g: ",".join(sorted(g)))
        for recipe, overrides in recipes.items():
            name = f"fsdd_{recipe}"
            shutil.copytree(root / "experiments" / "fsdd", root / "experiments" / name)
            exp = load_experiment(name, overrides + data + args.overrides)
            log(f"=== {recipe} recipe: {' '.join(overrides + args.overrides)}")
            for fold in folds:
                log(f"--- {recipe} fold {fold} (validation speaker {speakers[str(fold)]}, holdout {speakers['-1']})")
                with Stopwatch() as watch:
                    summary = train_fold(exp, fold, args.device, overwrite=True)
                per_fold.append([recipe, fold, speakers[str(fold)], f"{summary['val_accuracy']:.4f}",
                                 summary["best_epoch"], f"{summary.get('holdout_accuracy', float('nan')):.4f}",
                                 f"{summary.get('holdout_accuracy_mean', float('nan')):.4f}", f"{watch.seconds:.0f}"])
            results[recipe] = holdout_scores(exp, folds)
            blend([f"exps={name}", f"name={name}"])
            report = json.loads((root / "submissions" / f"{name}.json").read_text())
            results[recipe].update(written=report["method"], written_holdout=report["scores"]["holdout"],
                                   written_oof=report["scores"]["oof"], decision=report.get("decision", []))

    total = time.perf_counter() - started
    n = len(folds)
    print()
    print(f"## FSDD locked holdout ({next(iter(results.values()))['n']} clips of speaker {speakers['-1']}, "
          "never trained on)")
    print()
    print(f"Hardware: {hardware_line(args.device)}; total wall time {total / 60:.1f} min ({total:.0f}s)")
    for recipe, overrides in recipes.items():
        print(f"- {recipe}: `{' '.join(overrides + args.overrides)}`")
    print()
    print(markdown_table(["recipe", "fold", "validation speaker", "val accuracy", "best epoch", "holdout plain",
                          "holdout TTA mean", "seconds"], per_fold))
    print()
    rows = []
    for recipe, r in results.items():
        rows += [[recipe, "single fold, plain (mean of folds)", f"{np.mean(r['single']):.4f}",
                  f"min {min(r['single']):.4f}, max {max(r['single']):.4f}"],
                 [recipe, f"{n}-fold soft, plain", f"{r['soft']:.4f}", ""],
                 [recipe, f"{n}-fold soft + TTA", f"{r['soft_tta']:.4f}",
                  "per view: " + ", ".join(f"{v} {a:.4f}" for v, a in r["per_view"].items())],
                 [recipe, f"written by blend: {r['written']}", f"{r['written_holdout']:.4f}",
                  f"chosen on OOF ({r['written_oof']:.4f})"]]
    print(markdown_table(["recipe", "method", "holdout accuracy", "notes"], rows))
    print()
    for recipe, r in results.items():
        for step in r["decision"]:
            print(f"{recipe}: {step}")
    print(json.dumps({recipe: {k: v for k, v in r.items() if k != "decision"} for recipe, r in results.items()}
                     | {"seconds": round(total, 1)}))


if __name__ == "__main__":
    main()
