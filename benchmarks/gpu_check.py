"""The CUDA paths end to end, one line per check, in a few minutes: run it on a machine with a GPU.

    python benchmarks/gpu_check.py [--keep]     # on a machine with a CUDA GPU; exit 0 when every check passed
    python benchmarks/gpu_check.py --smoke      # the same checks on the CPU, tiny (the test suite runs this)

Each check runs the commands a user runs (`python -m competition.<verb>`, each its own process) in a temporary project
on a generated contest (harmonic tones, one class per fundamental, one pitch per "speaker", 16 kHz, 1 s):
  cuda      torch sees the GPU: its name, memory and whether it does bf16
  train     one fold with `device=cuda` and mixed precision (train.amp: bf16 autocast where supported): finished, the
            device recorded in DONE, validation accuracy, seconds
  queue     `fold=all gpus=<each visible GPU, twice>`: every job pinned to its GPU (CUDA_VISIBLE_DEVICES in DONE)
  tune      `gpus=<each visible GPU>`: one tuning worker per GPU, n_trials finished
  predict   `device=cuda` against `device=cpu` on the same folds: the answer files agree, largest probability difference
            (--smoke: predicted once, on the CPU)
  overhead  benchmarks/trainer_overhead.py on the GPU: the real training loop's samples/s over a bare timm loop's
  demo      the README's first command, `python -m competition.run exp=default fold=0`, with device=cuda (not in
            --smoke: on the CPU it is the README's own four minutes)
Where no GPU is visible it says so in one line and exits 1; --smoke runs every check on the CPU instead (the queue and
the tuner pinned to two pretended GPUs by COMPETITION_FAKE_GPUS), which proves the script itself works. There each
command's main runs in this process (the queue's jobs and the tuner's workers still are processes of their own): an
interpreter and torch start-up per command would be most of the smoke run's time.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import soundfile
import yaml

from common import REPO, Command, exit_cleanly_on_sigterm, log_paths, toolkit, toolkit_env, toolkit_here

EXP = "gpucheck"
COMMAND_TIMEOUT = 600  # seconds: a command that hangs on the GPU fails its check instead of holding the machine


def write_contest(root: Path, classes: int, speakers: int, takes: int, rng: np.random.Generator) -> None:
    """Harmonic tones at 16 kHz, class = fundamental, speaker = a pitch factor, in class folders; a test folder."""
    rate, t = 16000, np.arange(16000) / 16000

    def clip(label: int, speaker: int) -> np.ndarray:
        f0 = 180.0 * 1.25 ** label * (1 + 0.03 * (speaker % 5 - 2))
        wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 4)) * rng.uniform(0.1, 0.3)
        return (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)

    for label in range(classes):
        for speaker in range(speakers):
            for take in range(takes):
                path = root / "data" / "train" / f"c{label}" / f"s{speaker}_nohash_{take}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, clip(label, speaker), rate, subtype="PCM_16")
    (root / "data" / "test").mkdir(parents=True, exist_ok=True)
    for i in range(classes * 4):
        soundfile.write(root / "data" / "test" / f"t{i:03d}.wav", clip(i % classes, speakers + i), rate,
                        subtype="PCM_16")


def write_experiment(root: Path, smoke: bool) -> None:
    config = {
        "data": {"name": EXP, "train": {"path": "data/train", "layout": "class_folders",
                                         "filename_regex": r"(?P<group>[^_]+)_nohash_\d+"},
                 "test": {"path": "data/test"}, "cache_dir": str(root / "cache")},
        "audio": {"sample_rate": 16000, "duration": 1.0},
        "folds": {"n_splits": 2, "holdout": 0.0},
        "frontend": {"n_mels": 32 if smoke else 64, "hop_length": 160},
        "model": {"name": "resnet10t" if smoke else "resnet18"},
        "train": {"epochs": 1 if smoke else 6, "batch_size": 16 if smoke else 32, "lr": 0.002, "amp": True},
        "tta": {"views": ["plain", "shift:0.1"]},
        "tune": {"space": {"frontend.n_mels": {"choices": [32, 64]}}, "folds": [0], "pruner": "none"},
        "tracking": {"wandb": {"mode": "disabled"}},
    }
    folder = root / "experiments" / EXP
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


class Checks:
    """Runs the checks in order, printing one line each; a failing check prints the end of its output and the next
    check still runs."""

    def __init__(self, root: Path, run: Command, smoke: bool) -> None:
        self.root, self.run_command, self.smoke = root, run, smoke
        self.passed: list[str] = []
        self.failed: list[str] = []

    def command(self, *args: str, cwd: Path | None = None) -> str:
        """`python -m <args>` as a user types it, in the project: everything it printed (a failure raises, its
        output's end printed)."""
        where = cwd or self.root
        self.run_command(where, "check", list(args))
        return "".join(path.read_text() for path in log_paths(where, "check", list(args)))

    def script(self, name: str, *args: str) -> str:
        """`python benchmarks/<name>.py <args>`: what it printed. In a smoke run its main runs in this process."""
        if not self.smoke:
            result = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args], text=True,
                                    capture_output=True, timeout=COMMAND_TIMEOUT, env=toolkit_env())
            if result.returncode != 0:
                raise RuntimeError(f"{name}.py exited with {result.returncode}: {result.stderr.strip()[-800:]}")
            return result.stdout
        import importlib

        printed = io.StringIO()
        with redirect_stdout(printed):
            importlib.import_module(name).main(list(args))
        return printed.getvalue()

    def run(self, name: str, check: Callable[[], str]) -> None:
        started = time.perf_counter()
        try:
            detail, status = check(), "ok"
            self.passed.append(name)
        except Exception as exc:  # every check is reported, whatever fails
            detail, status = f"{type(exc).__name__}: {exc}", "FAIL"
            self.failed.append(name)
        print(f"{status:<4}  {name:<8}  {time.perf_counter() - started:6.1f}s  {detail}", flush=True)

    def done(self, fold_dir: Path) -> dict:
        path = self.root / fold_dir / "DONE"
        if not path.is_file():
            raise RuntimeError(f"{fold_dir} has no DONE: the fold did not finish")
        return json.loads(path.read_text())


def check_cuda() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return (f"{torch.cuda.device_count()} visible, {props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 "
            f"{'yes' if torch.cuda.is_bf16_supported() else 'no (fp16 with loss scaling)'}, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every check on the CPU, tiny (seconds)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project and print its path")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    import torch

    from competition.cache import environment

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False); run it on a machine with "
              "one, or with --smoke to run the checks on the CPU", file=sys.stderr)
        sys.exit(1)
    gpus = [str(i) for i in range(2 if args.smoke else torch.cuda.device_count())]
    device = "cpu" if args.smoke else "cuda"
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    settings = {"WANDB_MODE": "disabled", "COMPETITION_CACHE": str(root / "cache"),
                **({"COMPETITION_FAKE_GPUS": str(len(gpus))} if args.smoke else {})}
    run = toolkit_here if args.smoke else functools.partial(toolkit, env={**toolkit_env(), **settings},
                                                            timeout=COMMAND_TIMEOUT)
    checks = Checks(root, run, args.smoke)
    try:
        write_contest(root, *((3, 4, 3) if args.smoke else (8, 12, 5)), np.random.default_rng(0))
        write_experiment(root, args.smoke)
        if not args.smoke:
            checks.run("cuda", check_cuda)

        def train() -> str:
            checks.command("competition.run", f"exp={EXP}", "fold=0", f"device={device}")
            done = checks.done(Path("experiments", EXP, "fold_0"))
            if not done["device"].startswith(device):
                raise RuntimeError(f"DONE records device {done['device']}, not {device}")
            return (f"fold 0 on {done['device']} (train.amp: "
                    f"{'bf16' if device == 'cuda' and torch.cuda.is_bf16_supported() else 'fp16' if device == 'cuda' else 'off on the CPU'}), "
                    f"validation accuracy {done['val_accuracy']:.3f} after {done['epochs_run']} epochs, "
                    f"{done['seconds']:.1f}s in the fold")

        def demo() -> str:
            project = root / "demo"
            for config in (REPO / "experiments").glob("_*/*.yaml"):
                (project / config.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(config, project / config.relative_to(REPO))
            (project / "experiments" / "default").mkdir(parents=True)
            shutil.copy2(REPO / "experiments" / "default" / "config.yaml", project / "experiments" / "default")
            (project / "folds").mkdir()
            shutil.copy2(REPO / "folds" / "demo_words.csv", project / "folds")
            started = time.perf_counter()
            checks.command("competition.run", "exp=default", "fold=0", f"device={device}", cwd=project)
            done = json.loads((project / "experiments" / "default" / "fold_0" / "DONE").read_text())
            return (f"the README's first command (exp=default fold=0, demo generated on first use) with device=cuda: "
                    f"{time.perf_counter() - started:.0f}s in all, {done['seconds']:.0f}s in the fold, validation "
                    f"accuracy {done['val_accuracy']:.3f} on {done['device']}")

        def queue() -> str:
            entries = ",".join(gpus if args.smoke else gpus + gpus)
            checks.command("competition.run", f"exp={EXP}", "fold=all", f"gpus={entries}", "overwrite=true")
            pinned = {fold: checks.done(Path("experiments", EXP, f"fold_{fold}"))["visible_devices"] for fold in (0, 1)}
            if any(value not in gpus for value in pinned.values()):
                raise RuntimeError(f"jobs saw CUDA_VISIBLE_DEVICES {pinned}, expected one of {gpus} each")
            summary = pd.read_csv(root / "experiments" / "queue-summary.csv")
            if set(summary["status"]) != {"done"}:
                raise RuntimeError(f"queue statuses {summary['status'].tolist()}")
            return f"gpus={entries}: folds 0 and 1 done, pinned to CUDA_VISIBLE_DEVICES {pinned}"

        def tune() -> str:
            trials = len(gpus) if args.smoke else 2 * len(gpus)
            checks.command("competition.tune", f"exp={EXP}", f"n_trials={trials}", f"gpus={','.join(gpus)}")
            found = next((root / "experiments" / EXP / "tune").glob("*/trials.csv"), None)
            if found is None:
                raise RuntimeError("no trials.csv was written")
            table = pd.read_csv(found)
            finished = int(table["state"].isin(["COMPLETE", "PRUNED"]).sum())
            if finished != trials:
                raise RuntimeError(f"{finished} of {trials} trials finished: {table['state'].tolist()}")
            return f"gpus={','.join(gpus)}: {finished} trials finished, best value {table['value'].max():.3f}"

        def predict() -> str:
            runs = (("checked", device), ("reference", "cpu"))
            for name, on in runs[:1] if args.smoke else runs:  # on the CPU the reference would be the same run
                checks.command("competition.predict", f"exps={EXP}", "test=data/test", f"name={name}",
                               f"device={on}", "method=soft+tta")
            if args.smoke:
                answer = pd.read_csv(next((root / "submissions").glob("checked-*")))
                return f"device=cpu: {len(answer)} clips answered (the comparison with device=cpu needs a GPU)"
            answers = {name: pd.read_csv(next((root / "submissions").glob(f"{name}-*"))) for name in
                       ("checked", "reference")}
            agree = float((answers["checked"].iloc[:, 1] == answers["reference"].iloc[:, 1]).mean())
            probs = {name: pd.read_csv(root / "experiments" / EXP / "fold_0" / f"test-{name}.csv")
                     for name in ("checked", "reference")}
            numeric = probs["reference"].select_dtypes("number").columns
            largest = float((probs["checked"][numeric] - probs["reference"][numeric]).abs().max().max())
            if agree < 1.0:
                raise RuntimeError(f"device={device} and device=cpu answers agree on {agree:.1%} of the clips")
            return (f"device={device}: {len(answers['checked'])} clips, answers equal to device=cpu's, largest "
                    f"probability difference {largest:.1e} (fold 0, {len(numeric)} classes)")

        def overhead() -> str:
            out = checks.script("trainer_overhead", "--root", str(root), "--exp", EXP, "--device", device,
                                "--steps", "1" if args.smoke else "6", "--repeats", "1" if args.smoke else "3")
            rows = {line.split("|")[1].strip(): line.split("|")[2].strip(" *")
                    for line in out.splitlines() if line.startswith("| ")}
            ours, bare, ratio = (next(v for k, v in rows.items() if k.startswith(name)) for name in
                                 ("ours", "bare", "**ratio"))
            return f"ours {ours} samples/s, bare timm loop {bare}: ours / bare {ratio} (median of the repeats)"

        with environment(settings if args.smoke else {}):  # a smoke run's commands read them in this process
            for name, check in (("train", train), ("queue", queue), ("tune", tune), ("predict", predict),
                                ("overhead", overhead), *([] if args.smoke else [("demo", demo)])):
                checks.run(name, check)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"gpu_check: {len(checks.passed)} passed, {len(checks.failed)} failed"
          + (f" ({', '.join(checks.failed)})" if checks.failed else ""), flush=True)
    if checks.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
