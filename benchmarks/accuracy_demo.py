"""The default experiment on the built-in keyword demo: the old default recipe against the new one, one fold each.

    python benchmarks/accuracy_demo.py [--folds 0] [--device cpu] [--keep] [key=value ...]
    python benchmarks/accuracy_demo.py --smoke    # smoke run: 1 epoch of resnet10t on a slice of the demo

Trains experiments/default (the small-CNN recipe on the demo's 30 words, speaker-grouped folds, a locked holdout)
through the real runner twice per fold: with the old recipe (per-clip normalisation) and with the candidate
(dataset-level normalisation with gain augmentation), each predicting through every candidate view (windows slid
along the clip, zero-filled shifts, a gain). Printed per recipe: the validation and locked-holdout accuracy of every
view and of their mean, so that the default ships only views that help. Same temporary project root as
accuracy_fsdd.py; the repository is left untouched.
"""
from __future__ import annotations

import argparse
import shutil
import time

from accuracy_fsdd import holdout_scores, temporary_project
from common import TINY_CNN, Stopwatch, demo_slice, exit_cleanly_on_sigterm, hardware_line, log, markdown_table

VIEWS = "tta.views=[plain,window:-0.1,window:-0.05,window:0.05,window:0.1,shift:-0.1,shift:0.1,gain:-6]"
RECIPES = {  # every candidate view in both: each view is scored on its own, so one training run measures them all
    "old": [VIEWS],
    "new": ["frontend.normalize=dataset", "augment.gain.p=0.5", VIEWS],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides, applied after each recipe")
    parser.add_argument("--folds", default="0", help="comma-separated folds to train (default fold 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    parser.add_argument("--smoke", action="store_true", help="smoke run: 1 epoch of resnet10t on 32 mels, on 30 "
                                                              "clips of the demo (3 words by 10 voices)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()

    from competition.config import load_experiment
    from competition.train import train_fold

    folds = [int(k) for k in args.folds.split(",")]
    started = time.perf_counter()
    rows = []
    with temporary_project("competition-accuracy-demo-", args.keep) as root:
        extra = [*demo_slice(root), *TINY_CNN, *args.overrides] if args.smoke else args.overrides
        for recipe, overrides in RECIPES.items():
            name = f"default_{recipe}"
            shutil.copytree(root / "experiments" / "default", root / "experiments" / name)
            exp = load_experiment(name, overrides + extra)
            summaries = {}
            for fold in folds:
                log(f"=== {recipe} fold {fold}: {' '.join(overrides + extra)}")
                with Stopwatch() as watch:
                    summaries[fold] = train_fold(exp, fold, args.device, overwrite=True)
                summaries[fold]["wall"] = watch.seconds
            holdout = holdout_scores(exp, folds)
            views = list(exp.cfg.tta.views) + ["mean"]
            for view in views:
                suffix = "" if view == views[0] else f"_{view}"
                val = [summaries[k][f"val_accuracy{suffix}"] for k in folds]
                held = holdout["per_view"].get(view, holdout["soft_tta"] if view == "mean" else None)
                rows.append([recipe, view, f"{sum(val) / len(val):.4f}", f"{held:.4f}"])
            rows.append([recipe, "(seconds per fold)", f"{sum(s['wall'] for s in summaries.values()) / len(folds):.0f}",
                         f"{holdout['n']} holdout clips"])
    total = time.perf_counter() - started
    print()
    print(f"## The keyword demo, experiments/default, fold(s) {args.folds}")
    print(f"Hardware: {hardware_line(args.device)}; total wall time {total / 60:.1f} min")
    for recipe, overrides in RECIPES.items():
        print(f"- {recipe}: `{' '.join(overrides + extra)}`")
    print()
    print(markdown_table(["recipe", "view", "validation accuracy", "holdout accuracy (soft over the folds)"], rows))


if __name__ == "__main__":
    main()
