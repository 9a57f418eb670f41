"""Weight averaging on fsdd: the best epoch, train.ema, train.swa and train.average_best, side by side on one CNN run.

    python benchmarks/averaging_fsdd.py [--held theo] [--takes 40] [--epochs 6] [--swa 3] [--average-best 3]
                                        [--ema 0.99] [--folds all] [--device cpu] [--keep]
    python benchmarks/averaging_fsdd.py --smoke   # smoke run: fold 0, 2 epochs, 36 clips, commands in this process

Why: a fold's model can be its best epoch, an exponential moving average of the weights (train.ema), the mean of
the last epochs' weights (train.swa) or the mean of the best epochs' weights (train.average_best), both with
BatchNorm statistics re-estimated on the training clips. Which gives the better fold ensemble on a speaker never
heard?

In a temporary project root (benchmarks/common.project_root), laid out as benchmarks/accuracy_fsdd_speakers.py lays
out one held speaker (its contest: the held speaker's clips as the test set, the other five speakers' as the training
set, 5 speaker-grouped folds, no holdout, 8 kHz, 1 s): four experiments of the CNN recipe cut to CPU size
(accuracy_fsdd_speakers.CNN_FAST: resnet10t, 40 mels, 20 ms hop, one-cycle at 0.003, shift, noise and masks, the
plain view), differing only in the averaging key, each run with `python -m competition.run exp=<name> fold=all`.
Scored from the fold files: OOF accuracy (each training speaker's clips by the fold that validated on them) and the
held speaker's accuracy by the soft ensemble of the fold models (the mean of their test.csv probabilities), and by
the fold models one at a time (mean). The best epoch's OOF accuracy is optimistic: each fold chose its epoch on
those very clips; the held speaker's accuracy is the fair comparison. The training itself is the same in all four
(same seed; none of the keys changes a step), which the report checks on the per-epoch training losses.

CPU-sized to finish in about 25 minutes on one core (OMP_NUM_THREADS=1; 23.5 on the 2-core AMD EPYC of
benchmarks/results/averaging_fsdd.txt): of each training speaker only the takes 0..--takes-1 of each digit (40 of 50:
400 clips a speaker, 1600 training clips a fold), 6 epochs (about 10 s each there); the held speaker's 500 clips all.
Everything lives in the temporary root; `--keep` keeps it and prints where.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from accuracy_fsdd_speakers import (CNN_FAST, CNN_RECIPE, FSDD, SMOKE_TAKES, clips_table, lay_out, write_contest,
                                    write_experiment)
from common import (Stopwatch, commands, exit_cleanly_on_sigterm, hardware_line, log, markdown_table, project_root)

import numpy as np
import pandas as pd


def fold_dirs(root: Path, exp: str) -> list[Path]:
    return sorted((root / "experiments" / exp).glob("fold_[0-9]*"), key=lambda path: int(path.name.split("_")[1]))


def plain_rows(path: Path) -> pd.DataFrame:
    """The plain view's rows of a fold's prediction file, indexed by clip id."""
    frame = pd.read_csv(path, dtype={"id": str, "label": str})
    return frame[frame["view"] == "plain"].set_index("id")


def score(root: Path, exp: str, truth: pd.Series) -> dict:
    """OOF accuracy, the held speaker's accuracy by the fold ensemble and by single folds, and what each fold kept."""
    folds = fold_dirs(root, exp)
    classes = sorted(truth.unique())
    oof = pd.concat([plain_rows(fold / "oof.csv") for fold in folds])
    tests = [plain_rows(fold / "test.csv").loc[truth.index, classes].to_numpy() for fold in folds]
    def right(probs: np.ndarray) -> np.ndarray:
        return np.asarray(classes)[probs.argmax(1)] == truth.to_numpy()

    summaries = [json.loads((fold / "DONE").read_text()) for fold in folds]
    return {"oof": float((np.asarray(classes)[oof[classes].to_numpy().argmax(1)] == oof["label"]).mean()),
            "n_oof": len(oof), "test": float(right(np.mean(tests, axis=0)).mean()),
            "test_single": float(np.mean([right(probs).mean() for probs in tests])),
            "kept": ["+".join(map(str, s["averaged"]["epochs"])) if "averaged" in s else str(s["best_epoch"])
                     for s in summaries],
            "train_loss": [pd.read_csv(fold / "metrics.csv")["train_loss"].tolist() for fold in folds]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", default="theo", help="the speaker held out as the test set (default theo)")
    parser.add_argument("--takes", type=int, default=40, help="takes per digit of each training speaker (of 50)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--swa", type=int, default=3, help="train.swa: the last N epochs averaged")
    parser.add_argument("--average-best", type=int, default=3, help="train.average_best: the K best epochs averaged")
    parser.add_argument("--ema", type=float, default=0.99, help="train.ema: the decay per step")
    parser.add_argument("--folds", default="all", help="fold= of competition.run (default all five)")
    parser.add_argument("--device", default="cpu", help="device= of competition.run: cpu, cuda, cuda:N or auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    parser.add_argument("--smoke", action="store_true", help="smoke run: fold 0, 2 epochs, swa and average_best of 2, "
                                                              "on 36 clips (accuracy_fsdd_speakers.clips_table)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if not FSDD.is_dir():
        raise SystemExit(f"FSDD recordings not found at {FSDD}")
    if args.smoke:
        args.takes, args.epochs, args.swa, args.average_best, args.folds = SMOKE_TAKES, 2, 2, 2, "0"
    clips = clips_table(args.smoke)
    take = clips["id"].str.rsplit("_", n=1).str[1].astype(int)
    clips = clips[(clips["speaker"] == args.held) | (take < args.takes)]
    truth = clips[clips["speaker"] == args.held].set_index("id")["label"]
    variants = {"best epoch": {}, f"ema {args.ema:g}": {"ema": args.ema}, f"swa {args.swa}": {"swa": args.swa},
                f"average_best {args.average_best}": {"average_best": args.average_best}}

    command = commands(in_process=args.smoke)
    started = time.perf_counter()
    results, seconds = {}, {}
    with project_root("competition-averaging-fsdd-", args.keep) as root:
        log(f"project root {root}")
        contest = write_contest(root, args.held, lay_out(root, args.held, clips))
        for position, (variant, averaging) in enumerate(variants.items()):
            exp = f"averaging_{position}"
            train = {**CNN_FAST["train"], "epochs": args.epochs, **averaging}
            write_experiment(root, exp, contest, CNN_RECIPE, {**CNN_FAST, "train": train})
            log(f"=== {variant}: {exp}, train {json.dumps(train)}")
            with Stopwatch() as watch:
                command(root, exp, ["competition.run", f"exp={exp}", f"fold={args.folds}", f"device={args.device}"])
            results[variant], seconds[variant] = score(root, exp, truth), watch.seconds
            log(f"{variant}: OOF {results[variant]['oof']:.4f}, {args.held} ensemble {results[variant]['test']:.4f}, "
                f"{watch.seconds:.0f}s")

    total = time.perf_counter() - started
    first = next(iter(results.values()))
    same = all(r["train_loss"] == first["train_loss"] for r in results.values())
    print()
    print(f"## Weight averaging on fsdd: {args.held} held out ({len(truth)} test clips), OOF on the other five "
          f"({first['n_oof']} clips, takes 0-{args.takes - 1} of each digit)")
    print()
    print(f"Hardware: {hardware_line(args.device if args.device != 'auto' else 'cpu')}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; total wall time {total / 60:.1f} min")
    print(f"Recipe: cnn.yaml + {json.dumps({**CNN_FAST, 'train': {**CNN_FAST['train'], 'epochs': args.epochs}})}; "
          f"fold={args.folds}; the per-epoch training losses are {'identical' if same else 'NOT identical'} across "
          "the variants")
    print()
    print(markdown_table(
        ["model of each fold", "OOF accuracy", f"{args.held}: fold ensemble", f"{args.held}: single fold (mean)",
         "epochs in each fold's model", "seconds"],
        [[variant, f"{r['oof']:.4f}", f"{r['test']:.4f}", f"{r['test_single']:.4f}", " ".join(r["kept"]),
          f"{seconds[variant]:.0f}"] for variant, r in results.items()]))
    print(json.dumps({variant: {k: v for k, v in r.items() if k != "train_loss"} for variant, r in results.items()}
                     | {"seconds": round(total, 1)}))


if __name__ == "__main__":
    main()
