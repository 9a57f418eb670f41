"""Tune the default experiment on the built-in keyword demo: n_mels and two augmentation probabilities, one fold.

    python benchmarks/tune_demo.py [--trials 10] [--epochs 6] [--timeout 12m] [--device cpu] [--keep] [key=value ...]
    python benchmarks/tune_demo.py --smoke    # smoke run: 1 trial of 1 epoch on a slice of the demo, no plot copied

Runs `python -m competition.tune exp=default` (the search space of experiments/_recipes/cnn.yaml: n_mels in
{32, 64, 128}, augment.spec_time.p and augment.mixup.p) with shortened trials (6 of the recipe's 12 epochs; no pruning
before epoch 3, since augmented trials start slower) in a temporary project root, so the repository is left untouched. The study's first trial is the recipe's own values, trained exactly like every other
trial, so the comparison is side by side in one run: validation accuracy (the score the study maximised, hence biased
towards the winner) and the locked holdout's accuracy (never seen by the study: the honest comparison). The history
plot is copied to benchmarks/results/tune_demo_history.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time

from accuracy_fsdd import temporary_project
from common import REPO, TINY_CNN, demo_slice, exit_cleanly_on_sigterm, hardware_line, log, markdown_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every trial")
    parser.add_argument("--trials", type=int, default=10, help="finished trials to reach (default 10)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (default 6; the recipe trains 12)")
    parser.add_argument("--timeout", default="12m", help="stop starting trials after this long (default 12m)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    parser.add_argument("--smoke", action="store_true", help="smoke run: 1 trial of 1 epoch of resnet10t on 30 clips "
                                                              "of the demo; benchmarks/results is left alone")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.smoke:
        args.trials, args.epochs = 1, 1

    import optuna

    from competition import tune
    from competition.cli import main_guard

    started = time.perf_counter()
    overrides = [f"train.epochs={args.epochs}", "tune.warmup_epochs=2", *args.overrides]
    with temporary_project("competition-tune-demo-", args.keep) as root:
        smoke = [*demo_slice(root), *TINY_CNN] if args.smoke else []
        main_guard(tune.main, ["exp=default", f"n_trials={args.trials}", f"timeout={args.timeout}",
                               f"device={args.device}", *smoke, *overrides])
        study_dir = root / "experiments" / "default" / "tune" / "default"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(root / "experiments" / "default" / "tune" / tune.JOURNAL)))
        study = optuna.load_study(study_name="default", storage=storage)
        best = study.best_trial
        rows = []
        for label, trial in (("recipe as shipped (trial 0)", study.trials[0]), (f"tuned (trial {best.number})", best)):
            done = json.loads((study_dir / f"trial_{trial.number:04d}" / "fold_0" / "DONE").read_text())
            values = ", ".join(f"{key.split('.', 1)[1]}={value:g}" for key, value in trial.params.items())
            rows.append([label, values, f"{done['val_accuracy']:.4f}", f"{done['holdout_accuracy']:.4f}",
                         f"{done['seconds']:.0f}"])
        states = [t.state.name for t in study.trials]
        if not args.smoke:
            results = REPO / "benchmarks" / "results"
            results.mkdir(exist_ok=True)
            if (study_dir / "history.png").is_file():
                shutil.copy2(study_dir / "history.png", results / "tune_demo_history.png")
            log(f"history plot: {results / 'tune_demo_history.png'}")
    total = time.perf_counter() - started
    print()
    print(f"## Tuning the demo: {states.count('COMPLETE')} complete and {states.count('PRUNED')} pruned trials of "
          f"{args.epochs} epochs on fold 0 in {total / 60:.1f} min")
    print(f"Hardware: {hardware_line(args.device)}")
    print()
    print(markdown_table(["config", "searched values", "validation accuracy (what was tuned)",
                          "locked holdout accuracy", "seconds"], rows))


if __name__ == "__main__":
    main()
