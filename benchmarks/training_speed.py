"""Training speed on this machine's CPU by precision and memory format, per backbone family, side by side.

    python benchmarks/training_speed.py [--steps 3] [--repeats 3] [--batch 16] [--models resnet18,res2next50,...]
    python benchmarks/training_speed.py --smoke      # one tiny backbone, one step of each arm (the suite runs this)

For each backbone (at its recipe's input size: the default experiment's 64 mels x 101 frames, res2next_224's 224 mels
x 223 frames for res2next50) and each arm, training steps as competition.train takes them: the toolkit's model
(competition.models.create_model, one-channel stem), its autocast (competition.compute.autocast), cross-entropy in
fp32, backward, AdamW. Arms: fp32 and bf16 autocast, each in the default and in channels_last memory format. After
an untimed warm-up step per arm, the arms alternate within each repeat (their order rotating), and the median
samples/s over the repeats is reported with its ratio to fp32 in the default format.

What it decides: competition.compute's train.precision=auto (bf16 only where the CPU has it in hardware) and
CHANNELS_LAST_FAMILIES (the families whose training is faster in channels_last). The last line says what `auto`
picks here.
"""
from __future__ import annotations

import argparse
import time

from common import REPO, hardware_line, log, markdown_table, median, rate

import torch
import torch.nn.functional as F

ARMS = {"fp32": ("fp32", False), "fp32 + channels_last": ("fp32", True), "bf16": ("bf16", False),
        "bf16 + channels_last": ("bf16", True)}
# backbone -> the experiment whose recipe gives its input size
MODELS = {"resnet18": "default", "res2next50": "res2next_224", "efficientnet_b0": "default",
          "mobilenetv3_large_100": "default"}
SMOKE_MODELS = {"resnet10t": "default"}


def step_function(model_name: str, exp_name: str, precision: str, channels_last: bool, batch: int):
    """One training step of `model_name` at `exp_name`'s input size, in the arm's precision and memory format."""
    from competition.compute import autocast
    from competition.config import load_config
    from competition.frontend import make_frontend
    from competition.models import create_model

    cfg = load_config(REPO / "experiments" / exp_name / "config.yaml", [f"model.name={model_name}"])
    torch.manual_seed(0)
    model = create_model(cfg, 30, pretrained=False)
    frontend = make_frontend(cfg)
    waves = torch.randn(batch, int(cfg.audio.sample_rate * cfg.audio.duration))
    with torch.no_grad():
        x = frontend(waves)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.randint(0, 30, (batch,))
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, tuple(x.shape[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps per arm per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="clips per step")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--smoke", action="store_true", help="smoke run: resnet10t, 1 step, 1 repeat, batch 2")
    args = parser.parse_args(argv)
    if args.smoke:
        models, args.steps, args.repeats, args.batch = SMOKE_MODELS, 1, 1, 2
    else:
        unknown = [m for m in args.models.split(",") if m not in MODELS]
        if unknown:
            parser.error(f"--models: {', '.join(unknown)} not among {', '.join(MODELS)}")
        models = {m: MODELS[m] for m in args.models.split(",")}

    from competition.compute import CHANNELS_LAST_FAMILIES, family, native_bf16

    print(hardware_line())
    print(f"bf16 in hardware (AMX or AVX512-BF16): {'yes' if native_bf16() else 'no'}; batch {args.batch}, "
          f"{args.steps} steps per arm, {args.repeats} repeats, medians\n")
    rows, faster_in_channels_last = [], []
    for model_name, exp_name in models.items():
        steps, shapes = {}, {}
        for arm, (precision, channels_last) in ARMS.items():
            steps[arm], shapes[arm] = step_function(model_name, exp_name, precision, channels_last, args.batch)
            steps[arm]()  # warm-up: oneDNN picks its kernels on the first step
        seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
        order = list(ARMS)
        for repeat in range(args.repeats):
            for arm in order[repeat % len(order):] + order[:repeat % len(order)]:
                started = time.perf_counter()
                for _ in range(args.steps):
                    steps[arm]()
                seconds[arm].append(time.perf_counter() - started)
            log(f"{model_name}: repeat {repeat + 1}/{args.repeats} done")
        speed = {arm: args.steps * args.batch / median(seconds[arm]) for arm in ARMS}
        for arm in ARMS:
            rows.append([model_name, family(model_name), "x".join(map(str, shapes[arm][1:])), arm, rate(speed[arm]),
                         f"{speed[arm] / speed['fp32']:.2f}x"])
        if speed["fp32 + channels_last"] > speed["fp32"]:
            faster_in_channels_last.append(family(model_name))
    print(markdown_table(["backbone", "timm family", "input (mels x frames)", "arm", "samples/s", "vs fp32"], rows))
    print(f"\nFaster in channels_last (fp32) here: {', '.join(faster_in_channels_last) or 'none'}; "
          f"CHANNELS_LAST_FAMILIES: {', '.join(sorted(CHANNELS_LAST_FAMILIES)) or 'none'}")
    print(f"train.precision=auto trains in {'bf16' if native_bf16() else 'fp32'} on this CPU")


if __name__ == "__main__":
    main()
