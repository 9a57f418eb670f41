"""Helpers shared by the benchmark scripts: the repository on the import path, the hardware line, tables, and
toolkit commands run in subprocesses as a user runs them."""
from __future__ import annotations

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
from typing import Iterator

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


def toolkit(root: Path, name: str, args: list[str], env: dict[str, str]) -> None:
    """`python -m <args>` in a subprocess with `root` as the working directory, its output in
    logs/<name>.<verb>.{out,err}; a failure prints the log's tail and raises ToolkitFailed."""
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    verb = args[0].rsplit(".", 1)[-1]
    out_path, err_path = logs / f"{name}.{verb}.out", logs / f"{name}.{verb}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        code = subprocess.call([sys.executable, "-m", *args], cwd=root, env=env, stdout=out, stderr=err)
    if code != 0:
        tail = (err_path.read_text(errors="replace") or out_path.read_text(errors="replace")).splitlines()
        log(f"FAILED (exit {code}): {' '.join(args)}  (cwd {root})")
        log("\n".join("    " + line for line in tail[-TAIL_LINES:]))
        raise ToolkitFailed(code)


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
