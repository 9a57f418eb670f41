"""Overhead of the real training loop against a bare timm loop on precomputed tensors, in samples per second.

    python benchmarks/trainer_overhead.py [--steps 20] [--repeats 7] [--device cpu|cuda|auto] [--threads N]
                                          [--root <project folder>] [--exp <experiment>]
    python benchmarks/trainer_overhead.py --smoke   # the same loops, tiny (the test suite runs this)

ours  competition.train._train_epoch, the loop competition.run trains with, on the default experiment's real fold-0
      data (load_data) whose training part is cut to steps x batch clips: waveform-cache crops, the
      experiment's batched augmentation (none in experiments/default), torch log-mel, one-hot targets, the model,
      soft cross-entropy, backward, AdamW, the one-cycle schedule, the loss read back every step, the tqdm bar.
bare  the same timm model (competition.models.create_model: resnet18, in_chans=1), the same batch and input size
      (64 mels x 101 frames), torch.randn inputs made beforehand: model(x) in the same precision and memory format as
      ours (competition.compute: on CUDA per train.amp, on the CPU per train.precision, bf16 only where the CPU has it
      in hardware), cross_entropy, backward, AdamW step.
Both run in this one process with the same torch thread count; after one untimed warm-up epoch each, they
alternate (ours first on odd repeats, bare first on even ones). Reported: median samples/s of each and the median
of the per-repeat ratios ours / bare. Validation is not part of either (the fold's per-epoch evaluation is
separate from the training loop). --smoke times one step of 8 clips, once, with resnet10t on 32 mels, in a temporary
copy of the project on a slice of the demo (benchmarks/common.demo_slice).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

from accuracy_fsdd import temporary_project
from common import REPO, TINY_CNN, Stopwatch, demo_slice, hardware_line, log, markdown_table, median, rate

import numpy as np
import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps (batches of 32) per timed epoch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both loops (0: torch's default)")
    parser.add_argument("--exp", default="default", help="experiment whose recipe and fold 0 are used")
    parser.add_argument("--root", default=str(REPO), help="the project folder holding experiments/ (and folds/)")
    parser.add_argument("--smoke", action="store_true",
                        help="smoke run: 1 step of 8 clips, 1 repeat, resnet10t on 32 mels, a slice of the demo")
    args = parser.parse_args(argv)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.smoke:
            args.steps, args.repeats = 1, 1
            with temporary_project("competition-trainer-overhead-", keep=False) as root:
                measure(args, [*demo_slice(root), *TINY_CNN, "train.batch_size=8"])
        else:
            os.chdir(args.root)  # the experiment and its fold file are found relative to the project root
            measure(args, [])
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def measure(args: argparse.Namespace, overrides: list[str]) -> None:
    """Both loops timed and the table printed, in the project folder that is the working directory."""
    from timm.utils import ModelEmaV3

    from competition.augment import Augmenter, HeavyAugment
    from competition.augment_params import heavy_enabled
    from competition.compute import autocast, training_memory_format, training_precision
    from competition.config import load_experiment
    from competition.frontend import LogMel
    from competition.models import create_model
    from competition.train import Part, TrainState, _train_epoch, crop_samples, load_data, make_scheduler, resolve_device

    device = resolve_device(args.device)
    # enough scheduled epochs that the one-cycle schedule never runs out of steps during the benchmark
    exp = load_experiment(args.exp, [*overrides, f"train.epochs={args.repeats + 2}"])
    cfg, t = exp.cfg, exp.cfg.train
    with Stopwatch() as watch:
        data = load_data(exp).fold(0)
    n = args.steps * t.batch_size
    if len(data.train) < n:
        raise SystemExit(f"fold 0 has only {len(data.train)} training clips; use --steps {len(data.train) // t.batch_size}")
    pick = np.sort(np.random.default_rng(0).choice(len(data.train), n, replace=False))
    train = Part(data.train.ids[pick], data.train.cache, data.train.rows[pick], data.train.y[pick])
    data = dataclasses.replace(data, train=train)
    n_classes = len(data.classes)
    log(f"fold 0 data ready in {watch.seconds:.1f}s: {n} of its training clips, {n_classes} classes, "
        f"{cfg.model.name}, batch {t.batch_size}, {torch.get_num_threads()} threads, {device}")

    # ours: the real loop, with its state built as competition.train._fit builds it
    torch.manual_seed(t.seed)
    precision, memory_format = training_precision(t, device), training_memory_format(t, cfg.model.name)
    model = create_model(cfg, n_classes).to(device, memory_format=memory_format)
    frontend = LogMel.from_config(cfg).to(device)
    augmenter = Augmenter(cfg.augment, cfg.audio.sample_rate, device)
    heavy = HeavyAugment(cfg.augment, cfg.audio.sample_rate) if heavy_enabled(cfg.augment) else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps = len(train) // t.batch_size
    state = TrainState(
        model=model, ema=ModelEmaV3(model, decay=t.ema) if t.ema else None, optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, steps),
        scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"),
        rng=np.random.default_rng([t.seed, 0]), generator=torch.Generator(device).manual_seed(t.seed * 1000))
    shape = (t.batch_size, 1, cfg.frontend.n_mels, frontend.frames(crop_samples(cfg)))
    epoch_counter = iter(range(1, 10**6))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ours() -> float:
        sync()
        started = time.perf_counter()
        _train_epoch(cfg, state, data, frontend, augmenter, heavy, next(epoch_counter), steps, device, precision,
                     0, [])
        sync()
        return steps * t.batch_size / (time.perf_counter() - started)

    # bare: the same backbone on tensors made beforehand
    torch.manual_seed(t.seed)
    bare_model = create_model(cfg, n_classes).to(device, memory_format=memory_format).train()
    bare_optimizer = torch.optim.AdamW(bare_model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    xs = torch.randn((steps, *shape), device=device)
    ys = torch.randint(0, n_classes, (steps, t.batch_size), device=device)

    def bare() -> float:
        sync()
        started = time.perf_counter()
        for x, y in zip(xs, ys):
            with autocast(device, precision):
                logits = bare_model(x)
            loss = F.cross_entropy(logits, y)
            bare_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bare_optimizer.step()
        sync()
        return steps * t.batch_size / (time.perf_counter() - started)

    log(f"input {tuple(shape)} in {precision}, {memory_format}; warm-up epoch of each")
    ours(), bare()
    results = {"ours": [], "bare": []}
    for r in range(args.repeats):
        for name, run in ((("ours", ours), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("ours", ours))):
            results[name].append(run())
            log(f"repeat {r + 1}/{args.repeats} | {name:<4} {results[name][-1]:7.1f} samples/s")
    ratios = [a / b for a, b in zip(results["ours"], results["bare"])]
    ratio = median(ratios)

    print()
    print(f"## Training-loop overhead ({cfg.model.name}, batch {t.batch_size}, input {shape[2]} mels x {shape[3]} "
          f"frames, {steps} steps per timed epoch, median of {args.repeats})")
    print()
    print(f"Hardware: {hardware_line(str(device))}")
    print()
    print(markdown_table(
        ["loop", "samples/s", "per repeat"],
        [["ours: competition.train._train_epoch on real fold data (cache crops + log-mel + step)",
          rate(median(results["ours"])), ", ".join(f"{v:.1f}" for v in results["ours"])],
         ["bare: timm model on precomputed torch.randn tensors", rate(median(results["bare"])),
          ", ".join(f"{v:.1f}" for v in results["bare"])],
         ["**ratio ours / bare**", f"**{ratio:.2f}**", ", ".join(f"{v:.2f}" for v in ratios)]]))
    print()
    print(f"Goal ours / bare >= 0.9: {ratio:.2f} ({'met' if ratio >= 0.9 else 'NOT met'}).")


if __name__ == "__main__":
    main()
