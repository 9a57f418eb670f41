"""Helpers shared by the benchmark scripts: the repository on the import path, the hardware line, tables, toolkit
commands run in subprocesses as a user runs them (or in this process for a smoke run), and a smoke run's data."""
from __future__ import annotations

import functools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/<name>.py` puts only benchmarks/ on the path
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def hardware_line(device: str = "cpu") -> str:
    """CPU model, core count, torch version and threads, and the device the numbers were taken on."""
    import torch

    line = (f"{cpu_model()}, {cores()} cores, Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), device {device}")
    if device.startswith("cuda") and torch.cuda.is_available():
        line += f" ({torch.cuda.get_device_name(torch.device(device))})"
    return line


def median(values: list[float]) -> float:
    return statistics.median(values)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def rate(value: float) -> str:
    """A throughput for a table: thousands separated, one decimal below 100."""
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


class Stopwatch:
    """`with Stopwatch() as w: ...` then `w.seconds`."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks still remove the temporary folders of a stopped run."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


TAIL_LINES = 40  # lines of a failed command's log printed


class ToolkitFailed(Exception):
    """A toolkit command a benchmark ran failed; the tail of its log was printed. args[0] is its exit code."""


def toolkit_env() -> dict[str, str]:
    """The environment of toolkit subprocesses: this checkout first on the import path, and no W&B dashboards
    unless WANDB_MODE asks for them."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"))


def toolkit(root: Path, name: str, args: list[str], env: dict[str, str], timeout: float | None = None) -> None:
    """`python -m <args>` in a subprocess with `root` as the working directory, its output in
    logs/<name>.<verb>.{out,err}; a failure prints the log's tail and raises ToolkitFailed. A command still running
    after `timeout` seconds is killed (subprocess.TimeoutExpired)."""
    out_path, err_path = log_paths(root, name, args)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        code = subprocess.call([sys.executable, "-m", *args], cwd=root, env=env, stdout=out, stderr=err,
                               timeout=timeout)
    check_exit(code, root, args, out_path, err_path)


def toolkit_here(root: Path, name: str, args: list[str]) -> None:
    """`python -m <args>` as toolkit runs it, but the verb's main in this process: no interpreter and torch start-up
    per command (about 8 s, most of a smoke run), the same code. The working directory and WANDB_MODE are set as
    toolkit sets them for the command and restored afterwards. A bug in the toolkit fails the command like a user's
    mistake, its traceback in the log; this benchmark's own SIGTERM (exit_cleanly_on_sigterm) passes through."""
    import importlib
    import traceback
    from contextlib import redirect_stderr, redirect_stdout

    from competition.cli import main_guard

    out_path, err_path = log_paths(root, name, args)
    main = importlib.import_module(args[0]).main
    before, wandb = os.getcwd(), os.environ.get("WANDB_MODE")
    os.environ.setdefault("WANDB_MODE", "disabled")  # as toolkit_env() sets it
    os.chdir(root)
    try:
        with open(out_path, "w") as out, open(err_path, "w") as err, redirect_stdout(out), redirect_stderr(err):
            try:
                main_guard(main, args[1:])
                code = 0
            except SystemExit as exc:
                if exc.code == 128 + 15:  # this benchmark stopped, not the command failing
                    raise
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(before)
        if wandb is None:
            os.environ.pop("WANDB_MODE")
    check_exit(code, root, args, out_path, err_path)


Command = Callable[[Path, str, list[str]], None]  # (project root, log name, `python -m` arguments)


def commands(in_process: bool) -> Command:
    """How a benchmark runs toolkit commands: in subprocesses as a user runs them, or, for a smoke run, in this
    process (toolkit_here)."""
    return toolkit_here if in_process else functools.partial(toolkit, env=toolkit_env())


def log_paths(root: Path, name: str, args: list[str]) -> tuple[Path, Path]:
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    verb = args[0].rsplit(".", 1)[-1]
    return logs / f"{name}.{verb}.out", logs / f"{name}.{verb}.err"


def check_exit(code: int, root: Path, args: list[str], out_path: Path, err_path: Path) -> None:
    """A failed command's log tail printed and ToolkitFailed raised; nothing for exit code 0."""
    if code != 0:
        tail = (err_path.read_text(errors="replace") or out_path.read_text(errors="replace")).splitlines()
        log(f"FAILED (exit {code}): {' '.join(args)}  (cwd {root})")
        log("\n".join("    " + line for line in tail[-TAIL_LINES:]))
        raise ToolkitFailed(code)


# A smoke run's CNN: the smallest that still runs every step of training and prediction.
TINY_CNN = ["model.name=resnet10t", "frontend.n_mels=32", "train.epochs=1"]


def dotlist_dict(overrides: list[str]) -> dict:
    """["a.b=c", ...] as the nested dict an experiment's config.yaml holds."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.from_dotlist(overrides))


def demo_slice(root: Path, words: int = 3, speakers: int = 10, test_clips: int = 6) -> list[str]:
    """A smoke run's slice of the keyword demo (generated on first use, as experiments/default generates it): the
    first `speakers` training voices saying the first `words` words, and `test_clips` test clips of those words,
    symlinked under root/demo; returned: the overrides that point experiments/default at them, its waveform cache in
    root. Ten voices are the fewest its folds accept: a tenth of them is held out."""
    import pandas as pd

    from competition.demo import ensure_demo

    source, target = ensure_demo() / "words", root / "demo"
    chosen = sorted(path.name for path in (source / "train").iterdir())[:words]
    for word in chosen:
        (target / "train" / word).mkdir(parents=True)
        for clip in sorted((source / "train" / word).iterdir())[:speakers]:
            (target / "train" / word / clip.name).symlink_to(clip)
    answers = pd.read_csv(source / "test_answers.csv", dtype=str)
    (target / "test").mkdir()
    for name in answers.loc[answers["label"].isin(chosen), "fname"].head(test_clips):
        (target / "test" / name).symlink_to(source / "test" / name)
    return [f"data.train.path={target / 'train'}", f"data.test.path={target / 'test'}",
            f"data.cache_dir={root / 'cache'}"]


@contextmanager
def project_root(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary project root for a benchmark's files, removed afterwards unless `keep` (then printed). A failed
    toolkit command ends the run with its exit code, the root kept or named for its logs."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    failed = None
    try:
        yield root
    except ToolkitFailed as exc:
        failed = exc.args[0] or 1
    finally:
        if keep or failed:
            log(f"kept {root}" if keep else f"project root {root} (removed; --keep keeps it)")
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if failed:
        sys.exit(failed)
