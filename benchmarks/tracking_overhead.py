"""What offline W&B tracking costs a fold of the default experiment on the built-in demo.

    python benchmarks/tracking_overhead.py [--fold 0] [--epochs 12] [--rounds 1] [--device cpu] [--keep]
    python benchmarks/tracking_overhead.py --smoke    # smoke run: 1 epoch of resnet10t on a slice of the demo

Trains the same fold 2 x rounds times in one run, in a temporary project root, alternating tracking off and on in
ABBA order (off, offline, offline, off, ...) so that a drift in the machine's speed falls on both alike, and prints
the median wall times and their ratio. Wall times on a shared 2-core machine move by several percent from one fold to
the next, so two costs are also measured directly in each tracked fold: the time spent inside the tracking calls
(opening the run, per-epoch rows, images, the confusion matrix, the artifact, finishing) and the CPU time of wandb's
background service process, which shares the cores with training.
"""
from __future__ import annotations

import argparse
import os
import time

from accuracy_fsdd import temporary_project
from common import TINY_CNN, Stopwatch, demo_slice, exit_cleanly_on_sigterm, hardware_line, log, markdown_table, median


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12, help="epochs per fold (the recipe's 12 by default)")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds: 2 x rounds folds per mode")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project root (printed)")
    parser.add_argument("--smoke", action="store_true", help="smoke run: one ABBA round of 1 epoch of resnet10t on 32 "
                                                              "mels, on 30 clips of the demo (3 words by 10 voices)")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.smoke:
        args.epochs, args.rounds = 1, 1
    wandb_mode = os.environ.pop("WANDB_MODE", None)  # the tracked folds ask for offline runs themselves
    try:
        measure(args)
    finally:
        if wandb_mode is not None:
            os.environ["WANDB_MODE"] = wandb_mode


def measure(args: argparse.Namespace) -> None:
    """The folds trained with tracking off and on, and the table printed."""
    from competition.config import load_experiment
    from competition.tracking import fold_tracking
    from competition.observe import FoldObserver
    from competition.train import train_fold

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

    import psutil

    def service_cpu() -> float:
        """CPU seconds used so far by this process's children: wandb's service (wandb-core) among them."""
        return sum(sum(child.cpu_times()[:2]) for child in psutil.Process().children(recursive=True)
                   if child.is_running())

    overrides = [f"train.epochs={args.epochs}"]
    walls: dict[str, list[float]] = {"disabled": [], "offline": []}
    inside, background = [], []
    order = [mode for _ in range(args.rounds) for mode in ("disabled", "offline", "offline", "disabled")][:4 * args.rounds]
    with temporary_project("competition-tracking-overhead-", args.keep) as root:
        data = [*demo_slice(root), *TINY_CNN] if args.smoke else []
        load_experiment("default", data)  # the demo data and the cache are made before the first timed fold
        train_fold(load_experiment("default", [*data, "train.epochs=1", "tracking.wandb.mode=disabled"]), args.fold,
                   args.device, overwrite=True)
        for mode in order:
            exp = load_experiment("default", [*data, *overrides, f"tracking.wandb.mode={mode}"])
            log(f"=== tracking {mode}")
            with Stopwatch() as watch:
                if mode == "disabled":
                    train_fold(exp, args.fold, args.device, overwrite=True)
                else:
                    with fold_tracking(exp, args.fold) as observers:  # the run opens on the first event
                        timed = [Timed(observer) for observer in observers]
                        train_fold(exp, args.fold, args.device, overwrite=True, observers=timed)
                        used = service_cpu()  # before finishing: the service ends with the run
                        finishing = time.perf_counter()  # leaving the block finishes the run
                    inside.append(sum(t.seconds for t in timed) + time.perf_counter() - finishing)
                    background.append(used)
            walls[mode].append(watch.seconds)
        import wandb

        wandb.teardown()  # the service the tracked folds started ends here, not with the process that ran this
        runs = sorted(root.glob("wandb/offline-run-*"))
        log(f"offline runs written: {len(runs)}")
    off, on = median(walls["disabled"]), median(walls["offline"])
    print()
    print(f"## Offline W&B tracking on experiments/default, fold {args.fold}, {args.epochs} epochs, "
          f"{2 * args.rounds} folds per mode in ABBA order")
    print(f"Hardware: {hardware_line(args.device)}")
    print()
    rows = [["disabled", ", ".join(f"{w:.1f}" for w in walls["disabled"]), f"{off:.1f}", "-", "-"],
            ["offline", ", ".join(f"{w:.1f}" for w in walls["offline"]), f"{on:.1f}", f"{median(inside):.2f}",
             f"{median(background):.2f}"]]
    print(markdown_table(["tracking", "fold wall times (s)", "median (s)", "inside tracking calls (s)",
                          "wandb service CPU (s)"], rows))
    print()
    print(f"offline / disabled median wall time: {on / off:.3f} ({on / off - 1:+.1%}); tracking calls plus the "
          f"service's CPU time: {(median(inside) + median(background)) / on:.1%} of a tracked fold")


if __name__ == "__main__":
    main()
