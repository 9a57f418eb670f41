"""What offline W&B tracking costs a fold of the default experiment on the built-in demo.

    python benchmarks/tracking_overhead.py [--fold 0] [--epochs 12] [--device cpu] [--keep]

Trains the same fold twice in one run, side by side, in a temporary project root: with tracking disabled, then with
`tracking.wandb.mode=offline` (the default), and prints both wall times, their ratio, and the time spent inside the
tracking calls themselves (opening the run, per-epoch rows, images, the confusion matrix, the artifact, finishing),
which is the part of the difference that does not depend on how busy the machine was.
"""
from __future__ import annotations

import argparse
import os
import time

from accuracy_fsdd import temporary_project
from common import Stopwatch, exit_cleanly_on_sigterm, hardware_line, log, markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12, help="epochs per fold (the recipe's 12 by default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    os.environ.pop("WANDB_MODE", None)

    from competition.config import load_experiment
    from competition.tracking import fold_tracking
    from competition.train import FoldObserver, train_fold

    class Timed(FoldObserver):
        """Passes every event on to the real observer and adds up the time it took."""

        def __init__(self, inner: FoldObserver) -> None:
            self.inner, self.seconds = inner, 0.0

        def _timed(self, name: str, *event: object) -> None:
            started = time.perf_counter()
            getattr(self.inner, name)(*event)
            self.seconds += time.perf_counter() - started

        def inputs(self, *event: object) -> None:
            self._timed("inputs", *event)

        def epoch(self, *event: object) -> None:
            self._timed("epoch", *event)

        def finished(self, *event: object) -> None:
            self._timed("finished", *event)

    overrides = [f"train.epochs={args.epochs}"]
    rows = []
    with temporary_project("competition-tracking-overhead-", args.keep) as root:
        walls = {}
        for mode in ("disabled", "offline"):
            exp = load_experiment("default", [*overrides, f"tracking.wandb.mode={mode}"])
            log(f"=== tracking {mode}")
            inside = 0.0
            with Stopwatch() as watch:
                if mode == "disabled":
                    train_fold(exp, args.fold, args.device, overwrite=True)
                else:
                    with fold_tracking(exp, args.fold) as observers:  # the run opens on the first event
                        timed = [Timed(observer) for observer in observers]
                        train_fold(exp, args.fold, args.device, overwrite=True, observers=timed)
                        finishing = time.perf_counter()  # leaving the block finishes the run
                    inside = sum(t.seconds for t in timed) + time.perf_counter() - finishing
            walls[mode] = watch.seconds
            rows.append([mode, f"{watch.seconds:.1f}", f"{inside:.2f}" if mode == "offline" else "-"])
        runs = sorted(root.glob("wandb/offline-run-*"))
        log(f"offline runs written: {len(runs)}")
    extra = walls["offline"] / walls["disabled"] - 1
    print()
    print(f"## Offline W&B tracking on experiments/default, fold {args.fold}, {args.epochs} epochs")
    print(f"Hardware: {hardware_line(args.device)}")
    print()
    print(markdown_table(["tracking", "fold wall time (s)", "inside tracking calls (s)"], rows))
    print()
    inside_share = float(rows[1][2]) / walls["offline"]
    print(f"offline / disabled wall time: {1 + extra:.3f} ({extra:+.1%}); inside tracking calls: {inside_share:.1%} "
          "of the tracked fold")


if __name__ == "__main__":
    main()
