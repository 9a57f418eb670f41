"""The job queue: many (experiment, fold) jobs at once, on local worker slots or as Ray tasks.

    python -m competition.run exp=res2next_224,effnet_b0 fold=all gpus=0,1,2,3,4   # one worker per GPU entry
    python -m competition.run exp=a,b fold=0,2,4 workers=2                         # two CPU jobs at a time
    python -m competition.run exp=a,b fold=all launcher=ray ray.address=auto       # Ray tasks on a running cluster

A job is one (experiment, fold) with the command line's config overrides, and running it is exactly
`python -m competition.run exp=<e> fold=<k> device=...` in a subprocess of its own (its own session, so Ctrl-C, a
crash or a stuck job stays its own), which calls `train_fold`: training, locking and the completion marker are never
re-implemented here. What must happen once per data set (decoding into the waveform cache, making or checking the fold
file) happens in this process before any job starts, so workers never race to decode the same clips.

Which jobs run at all is decided by `plan_fold`, the one decision function shared with the in-process runner
(`competition.run.run_folds`): current finished folds are skipped, stale ones are named and left alone, folds whose
predictions alone are out of date are re-predicted, interrupted folds need resume=true, and folds locked by another
process (host and pid named) are skipped.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from competition.cli import format_seconds
from competition.config import EXPERIMENTS_DIR, Experiment
from competition.errors import UserError
from competition.files import atomic_write_text
from competition.foldrun import (DONE, FoldBusy, can_resume, fold_list, fold_lock, is_finished, partial_dir,
                                 resume_command, retrain_command, run_command, staleness, timestamp)

# Testing aid: COMPETITION_FAKE_GPUS=4 makes gpus= believe 4 GPUs are visible on a machine without CUDA. Each worker
# still gets its CUDA_VISIBLE_DEVICES (and records it in DONE) but trains on the CPU, so the GPU assignment can be
# tested anywhere. Not for users: real GPUs are counted by torch.
FAKE_GPUS_ENV = "COMPETITION_FAKE_GPUS"
JOB_ENV = "COMPETITION_QUEUE_JOB"  # set in a job's environment: `run` then reports a busy fold by EXIT_BUSY
EXIT_BUSY = 75  # a job's exit code when its fold is locked by another process (EX_TEMPFAIL)
EXIT_SKIPPED = 76  # a job's exit code when another process finished its fold, current, after the queue planned it
GRACE_SECONDS = 30.0  # after Ctrl-C, how long jobs get to stop cleanly before they are killed (a second Ctrl-C kills
# at once): a job's clean stop takes about 4 s on 2 idle cores, and measured over 10 s on a loaded machine
POLL_SECONDS = 0.2
TAIL_LINES = 20
RAY_INSTALL = "pip install -r requirements-extra.txt (or pip install 'ray[default]>=2.40')"
SUMMARY_FILE = "queue-summary.csv"
REPO = Path(__file__).resolve().parents[1]  # put on a job's PYTHONPATH, so the job imports this very package

EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/(\d+) \| train loss \S+ \| val loss \S+ (\S+) (\S+) \|.*\| eta (\S+)")
RESUMING_LINE = re.compile(r"resuming after epoch (\d+)")
TRAINING_LINE = re.compile(r".* fold \d+: \d+ train, \d+ validation, ")


# --- what to do with a fold -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What to do with one fold now, decided from its folder and the current inputs; `note` says why (empty for a
    plain training run). Only `train` and `repredict` run anything."""

    action: str  # train | repredict | skip | stale | interrupted | busy
    note: str = ""
    resume: bool = False  # train: continue the interrupted work folder

    @property
    def runs(self) -> bool:
        return self.action in ("train", "repredict")


def plan_fold(exp: Experiment, fold: int, data: Any, overwrite: bool, resume: bool) -> Plan:
    """Bring a fold up to date with the current inputs (`data.inputs`), touching no finished fold that is not asked
    for: the one decision used by the in-process runner and by every queue launcher."""
    fold_dir, title = exp.fold_dir(fold), f"{exp.name} fold {fold}"
    try:  # first: a fold another process works on has a work folder that looks interrupted, or is being finished
        with fold_lock(fold_dir):  # only a look: the job takes the lock itself
            pass
    except FoldBusy as exc:
        return Plan("busy", f"{title}: skipped: {exc}")
    if can_resume(fold_dir) and not overwrite:  # an interrupted run, possibly retraining a finished fold
        why = staleness(partial_dir(fold_dir), data.inputs)
        if not resume or why.model:
            reason = f"{why.describe()} since it started" if resume else "interrupted"
            return Plan("interrupted", f"{title}: {reason}, left as it is ({partial_dir(fold_dir)})")
    elif is_finished(fold_dir) and not overwrite:
        why = staleness(fold_dir, data.inputs)
        if not why:
            return Plan("skip", f"{title}: already finished, skipped ({fold_dir})")
        if why.model:
            return Plan("stale", f"{title}: stale, not used: {why.describe()} since it was trained")
        return Plan("repredict", f"{title}: {why.describe()}; re-predicting with the trained model (no retraining)")
    return Plan("train", resume=resume and can_resume(fold_dir))


def fold_problems(exp: Experiment, stale: list[int], interrupted: list[int], failed: list[int], busy: list[int],
                  failed_hint: str = "") -> list[str]:
    """What keeps an experiment's folds from being complete, each with the command that fixes exactly those folds
    with the overrides they are made with; folds busy in other processes are only mentioned (they are being done)."""
    problems = []
    if stale:
        problems.append(f"folds {fold_list(stale)} are stale and were left out; retrain exactly them with "
                        f"{retrain_command(exp.name, stale, exp.overrides)}")
    if interrupted:
        problems.append(f"folds {fold_list(interrupted)} are interrupted; continue them with "
                        f"{resume_command(exp, interrupted)}, or restart exactly them with "
                        f"{retrain_command(exp.name, interrupted, exp.overrides)}")
    if failed:
        problems.append(f"folds {fold_list(failed)} failed{failed_hint}; rerun them with "
                        f"{run_command(exp.name, failed, exp.overrides)}")
    if busy:
        print(f"{exp.name}: folds {fold_list(busy)} are being trained by other processes", file=sys.stderr)
    return problems


# --- where jobs run ---------------------------------------------------------------------------------------------------

@dataclass
class Slot:
    """A local worker: runs one job at a time with its own environment (GPU pinning, thread counts)."""

    index: int
    label: str  # "gpu 3", "cpu 1"
    device: str  # the job's device= argument
    env: dict[str, str]


@dataclass
class QueueOptions:
    launcher: str  # local | ray
    slots: list[Slot] = field(default_factory=list)
    ray_address: str = "auto"
    ray_cpus: float = 1.0
    ray_gpus: str = "auto"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    """Set in a job's environment, so torch starts with its share of the cores and N jobs do not oversubscribe."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def visible_gpus(key: str) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES values: gpus=<i> picks the i-th of them."""
    fake = os.environ.get(FAKE_GPUS_ENV)
    if fake:
        return [str(i) for i in range(int(fake))]
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{key}: CUDA is not available here (torch sees no GPU); use workers=N to run N jobs at once "
                        "on the CPU")
    count = torch.cuda.device_count()
    listed = [item.strip() for item in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if item.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def parse_positive(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UserError(f"{key}={value}: expected a positive whole number (how many jobs run at once)")
    return number


def local_slots(gpus: str, workers: str, device: str) -> list[Slot]:
    """One slot per gpus= entry (gpus=0,0,1 runs two jobs on GPU 0 and one on GPU 1), or workers=N CPU slots."""
    cores = cpu_cores()
    if gpus:
        if device not in ("auto", "cuda"):
            raise UserError(f"device={device} together with gpus={gpus}: each worker trains on its own GPU; drop "
                            "device= (or use workers=N for CPU jobs)")
        entries = [item.strip() for item in gpus.split(",")]
        if not all(item.isdigit() for item in entries):
            raise UserError(f"gpus={gpus}: expected GPU numbers separated by commas, e.g. gpus=0,1,2,3")
        visible = visible_gpus(f"gpus={gpus}")
        missing = sorted({int(item) for item in entries if int(item) >= len(visible)})
        if missing:
            raise UserError(f"gpus={gpus}: there is no GPU {', '.join(map(str, missing))} here; the visible GPUs are "
                            f"{', '.join(map(str, range(len(visible)))) or 'none'}")
        threads = max(1, cores // len(entries))
        on_cpu = bool(os.environ.get(FAKE_GPUS_ENV))  # the testing aid: pinned, but trained on the CPU
        return [Slot(i, f"gpu {item}", "cpu" if on_cpu else "cuda",
                     {"CUDA_VISIBLE_DEVICES": visible[int(item)], **thread_env(threads)})
                for i, item in enumerate(entries)]
    count = parse_positive("workers", workers) if workers else 1
    threads = max(1, cores // count)
    return [Slot(i, f"{device if device != 'auto' else 'worker'} {i}", device, thread_env(threads))
            for i in range(count)]


def queue_options(options: dict[str, str]) -> QueueOptions | None:
    """The queue's settings from the command's keys, or None when none of gpus=, workers=, launcher= was given (jobs
    then run one after another in this process). Mistakes are refused here, before any audio is decoded."""
    gpus, workers, launcher = options["gpus"].strip(), options["workers"].strip(), options["launcher"].strip()
    if not (gpus or workers or launcher):
        return None
    launcher = launcher or "local"
    if launcher not in ("local", "ray"):
        raise UserError(f"launcher={launcher}: choose local (worker processes on this machine) or ray")
    if gpus and workers:
        raise UserError(f"gpus={gpus} together with workers={workers}: gpus= starts one worker per entry (repeat a "
                        "GPU to run several jobs on it, e.g. gpus=0,0,1,1); workers= is for CPU jobs")
    if launcher == "ray":
        if gpus or workers:
            raise UserError(f"{'gpus' if gpus else 'workers'}= is for local workers; with launcher=ray each job asks "
                            "Ray for ray.gpus GPUs and ray.cpus CPUs, and Ray decides where and how many run at once")
        try:
            cpus = float(options["ray.cpus"])
        except ValueError:
            cpus = 0.0
        if cpus <= 0:
            raise UserError(f"ray.cpus={options['ray.cpus']}: expected a positive number of CPUs per job")
        if options["ray.gpus"] not in ("auto", "0", "1"):
            raise UserError(f"ray.gpus={options['ray.gpus']}: expected auto (one GPU per job when the cluster has "
                            "GPUs), 1 or 0")
        return QueueOptions("ray", ray_address=options["ray.address"], ray_cpus=cpus, ray_gpus=options["ray.gpus"])
    return QueueOptions("local", local_slots(gpus, workers, options["device"]))


# --- a job ------------------------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One (experiment, fold), what was decided for it, and how it went."""

    exp: Experiment
    spec: str  # exp= as the user gave it, so the job finds the very same experiment
    fold: int
    plan: Plan
    status: str = ""  # done | re-predicted | skipped | stale | failed | busy | interrupted | not started
    device: str = ""
    seconds: float | None = None
    note: str = ""
    progress: str = "starting"
    started: float = 0.0  # wall clock, as seen by the queue
    finished: float = 0.0
    log_offset: int = 0
    _partial_line: str = ""

    @property
    def title(self) -> str:
        return f"{self.exp.name} fold {self.fold}"

    @property
    def fold_dir(self) -> Path:
        return self.exp.fold_dir(self.fold)

    @property
    def log(self) -> Path:
        """`experiments/<exp>/fold_<k>.log`, beside the fold folder rather than in it: the fold folder is replaced in
        one rename when the fold is published, and a failed fold's work folder is removed, so a log inside either
        would be lost exactly when it is needed. Each run appends, under a header line."""
        return self.exp.dir / f"fold_{self.fold}.log"

    def args(self, device: str, overrides: list[str], overwrite: bool) -> list[str]:
        args = [f"exp={self.spec}", f"fold={self.fold}", f"device={device}", *overrides]
        if overwrite:
            args.append("overwrite=true")
        if self.plan.resume:
            args.append("resume=true")
        return args

    def header(self, args: list[str], where: str) -> str:
        return f"==== {timestamp()} {where}: python -m competition.run {' '.join(args)}\n"

    def follow(self) -> None:
        """Read what the job logged since it started and turn its latest epoch line into the live progress."""
        try:
            with open(self.log, "rb") as handle:
                handle.seek(self.log_offset)
                chunk = handle.read()
        except OSError:
            return
        self.log_offset += len(chunk)
        text = self._partial_line + chunk.decode("utf-8", "replace")
        *lines, self._partial_line = text.split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1].strip()
            epoch = EPOCH_LINE.match(line)
            if epoch:
                done, total, metric, value, eta = epoch.groups()
                self.progress = f"epoch {done}/{total} | {metric} {value} | eta {eta}"
            elif TRAINING_LINE.match(line):
                self.progress = "training"
            elif RESUMING_LINE.search(line):
                self.progress = f"resumed after epoch {RESUMING_LINE.search(line).group(1)}"
            elif line.startswith("fitted "):
                self.progress = "fitted exactly, predicting"
            elif "re-predicting with the trained model" in line:
                self.progress = "re-predicting"

    def tail(self, start: int) -> str:
        """The last lines the job logged in this run (from byte `start`)."""
        try:
            with open(self.log, "rb") as handle:
                handle.seek(start)
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()]
        return "\n".join(f"    {line}" for line in lines[-TAIL_LINES:])

    def error_line(self, start: int) -> str:
        lines = [line for line in self.tail(start).splitlines() if line.strip().startswith("error:")]
        return lines[-1].strip() if lines else ""

    def done_summary(self) -> dict:
        try:
            return json.loads((self.fold_dir / DONE).read_text())
        except (OSError, ValueError):
            return {}


def job_env(extra: dict[str, str]) -> dict[str, str]:
    """A job's environment: ours, this package importable, unbuffered output (the log is live), marked as a job."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", JOB_ENV: "1", **extra}


# --- the terminal -----------------------------------------------------------------------------------------------------

class LiveLines:
    """One line per worker: redrawn in place on a terminal; printed only when it changes otherwise (a log, CI)."""

    def __init__(self, stream: io.TextIOBase | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lines: dict[Any, str] = {}
        self.drawn = 0

    def say(self, text: str, err: bool = False) -> None:
        """A message above the live lines."""
        self._clear()
        print(text, file=sys.stderr if err else self.stream, flush=True)
        self._draw()

    def show(self, lines: dict[Any, tuple[str, str]]) -> None:
        """Each worker's (line, elapsed time): off a terminal a line is printed when it changes, not the time."""
        if self.tty:
            shown = {key: f"{text} | {elapsed}" if elapsed else text for key, (text, elapsed) in lines.items()}
            if shown != self.lines:
                self._clear()
                self.lines = shown
                self._draw()
            return
        for key, (text, elapsed) in lines.items():
            if self.lines.get(key) != text and elapsed:
                print(f"{text} | {elapsed}", file=self.stream, flush=True)
        self.lines = {key: text for key, (text, _) in lines.items()}

    def close(self) -> None:
        self._clear()
        self.lines = {}

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.stream.flush()
        self.drawn = 0

    def _draw(self) -> None:
        if not self.tty or not self.lines:
            return
        width = shutil.get_terminal_size().columns - 1
        for text in self.lines.values():
            self.stream.write(text[:width] + "\n")
        self.stream.flush()
        self.drawn = len(self.lines)


class Stopper:
    """Ctrl-C (SIGINT) or SIGTERM while jobs run: forward the signal to every running job, give them GRACE_SECONDS
    to stop cleanly (an interrupted fold keeps its last epoch's checkpoint), then kill them; a second signal kills at
    once. Installed only for the queue's run loop, and only from the main thread."""

    def __init__(self, forward: Callable[[int], None], grace: float = GRACE_SECONDS) -> None:
        self.forward, self.grace = forward, grace
        self.signal: int | None = None
        self.deadline = 0.0
        self.killed = False
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.saved[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.saved.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        if self.signal is None:
            self.signal, self.deadline = number, time.time() + self.grace
            self.forward(number)
        else:
            self.kill_now()

    def kill_now(self) -> None:
        self.killed = True
        self.deadline = 0.0
        self.forward(signal.SIGKILL)

    def overdue(self) -> bool:
        return self.signal is not None and not self.killed and time.time() > self.deadline


# --- running the queue ------------------------------------------------------------------------------------------------

def run_queue(jobs: list[Job], options: QueueOptions, overrides: list[str], device: str, overwrite: bool) -> None:
    """Run every job that needs running, report every job, write the summary; raise UserError (exit 2) if any job
    failed, is stale or interrupted, and KeyboardInterrupt after Ctrl-C."""
    display = LiveLines()
    for job in jobs:
        if not job.plan.runs:
            job.status = {"skip": "skipped"}.get(job.plan.action, job.plan.action)
            display.say(job.plan.note, err=job.plan.action != "skip")
        elif job.plan.action == "repredict":
            display.say(job.plan.note, err=True)
    todo = [job for job in jobs if job.plan.runs]
    stopped = None
    if todo:
        if options.launcher == "ray":
            stopped = _run_ray(todo, options, display, overrides, device, overwrite)
        else:
            display.say(f"{len(todo)} of {len(jobs)} jobs to run, {len(options.slots)} at a time; each logs beside its "
                        "fold folder (experiments/<exp>/fold_<k>.log)")
            stopped = _run_local(todo, options.slots, display, overrides, overwrite)
    display.close()
    write_summary(jobs)
    _conclude(jobs, stopped)


def _run_local(jobs: list[Job], slots: list[Slot], display: LiveLines, overrides: list[str],
               overwrite: bool) -> int | None:
    """Each slot pulls the next job until none is left; a job is a subprocess in a session of its own."""
    pending = deque(jobs)
    running: dict[int, tuple[Job, subprocess.Popen, int]] = {}  # slot -> job, process, log offset of this run

    def forward(number: int) -> None:
        for _, process, _ in running.values():
            try:
                os.killpg(process.pid, number)
            except ProcessLookupError:
                pass

    with Stopper(forward) as stopper:
        while pending or running:
            if stopper.signal is not None:  # stopping: what has not started never will, and is not waited for
                for job in pending:
                    job.status, job.note = "not started", "stopped before it started"
                pending.clear()
            for slot in slots:
                if slot.index not in running and pending and stopper.signal is None:
                    job = pending.popleft()
                    args = job.args(slot.device, overrides, overwrite)
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    with open(job.log, "ab") as log:
                        log.write(job.header(args, f"{socket.gethostname()} {slot.label}").encode())
                        start = log.tell()
                        process = subprocess.Popen([sys.executable, "-m", "competition.run", *args],
                                                   cwd=os.getcwd(), env=job_env(slot.env), stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                    job.device, job.started, job.log_offset, job.progress = slot.label, time.time(), start, "starting"
                    running[slot.index] = (job, process, start)
                    if stopper.signal is not None:  # the signal came while it was being started: forward it too
                        os.killpg(process.pid, stopper.signal)
                    display.say(f"{job.title}: started on {slot.label}, log {job.log}")
            for index, (job, process, start) in list(running.items()):
                job.follow()
                code = process.poll()
                if code is not None:
                    del running[index]
                    job.seconds = time.time() - job.started
                    _finish(job, code, start, stopper.signal is not None, display)
            if running and stopper.overdue():
                display.say(f"jobs still running {GRACE_SECONDS:.0f}s after the signal: killing them", err=True)
                stopper.kill_now()
            display.show({slot.index: _live_line(slot.label, running.get(slot.index, (None,))[0]) for slot in slots})
            if pending or running:
                time.sleep(POLL_SECONDS)
    return stopper.signal


def _live_line(label: str, job: Job | None) -> tuple[str, str]:
    """A worker's live line: the job, its last epoch (x/y, metric, ETA) from the log, and how long it has run."""
    if job is None:
        return f"[{label}] idle", ""
    return f"[{label}] {job.title}: {job.progress}", format_seconds(time.time() - job.started)


def _finish(job: Job, code: int, start: int, stopping: bool, display: LiveLines, where: str = "") -> None:
    """Classify an ended job from its exit code and what it left on disk; a failure prints the tail of its log."""
    job.follow()
    job.finished = time.time()
    if code == 0 and (is_finished(job.fold_dir) or job.plan.action == "repredict"):
        job.status = "re-predicted" if job.plan.action == "repredict" else "done"
        summary = job.done_summary()
        metric = job.exp.cfg.train.metric
        score = summary.get(f"val_{metric}")
        job.note = "resumed" if job.plan.resume else ""
        display.say(f"{job.title}: {job.status} in {format_seconds(job.seconds)}"
                    + (f", best epoch {summary.get('best_epoch')}, validation {metric} {score:.4f}"
                       if isinstance(score, (int, float)) else ""))
    elif code == EXIT_BUSY:
        job.status, job.note = "busy", job.error_line(start).removeprefix("error: ")
        display.say(f"{job.title}: skipped: {job.note}", err=True)
    elif code == EXIT_SKIPPED:
        job.status, job.note = "skipped", "finished by another process meanwhile, from the current inputs"
        display.say(f"{job.title}: skipped: {job.note} ({job.fold_dir})")
    elif stopping or code in (130, -signal.SIGINT, -signal.SIGTERM):
        job.status = "interrupted"
        job.note = ("resume=true continues it" if can_resume(job.fold_dir)
                    else "stopped before its first checkpoint: it starts over")
        display.say(f"{job.title}: interrupted ({job.note})", err=True)
    else:
        job.status = "failed"
        job.note = job.error_line(start).removeprefix("error: ") or f"exit code {code}"
        display.say(f"{job.title}: FAILED{where} ({job.note}); the end of its log {job.log}:\n{job.tail(start)}",
                    err=True)


def write_summary(jobs: list[Job]) -> Path:
    """Print the summary table and write it as experiments/queue-summary.csv (atomically)."""
    rows = []
    for job in jobs:
        summary = job.done_summary() if job.status in ("done", "re-predicted", "skipped") else {}
        metric = job.exp.cfg.train.metric
        score = summary.get(f"val_{metric}")
        rows.append({"experiment": job.exp.name, "fold": job.fold, "status": job.status, "device": job.device or "-",
                     "seconds": "" if job.seconds is None else f"{job.seconds:.1f}",
                     "best_epoch": summary.get("best_epoch", ""), "metric": metric,
                     "score": "" if score is None else f"{score:.4f}",
                     "started_at": timestamp(job.started) if job.started else "",
                     "finished_at": timestamp(job.finished) if job.finished else "",
                     "log": str(job.log) if job.device else "",
                     "note": job.note or (job.plan.note.split(": ", 1)[-1] if job.plan.note else "")})
    table = [("job", "device", "wall", "best epoch", "validation", "status")]
    for job, row in zip(jobs, rows):
        table.append((job.title, row["device"], format_seconds(job.seconds), str(row["best_epoch"] or "-"),
                      f"{row['metric']} {row['score']}" if row["score"] else "-", row["status"]))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    print()
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    parents = {job.exp.dir.parent for job in jobs}
    path = (parents.pop() if len(parents) == 1 else EXPERIMENTS_DIR) / SUMMARY_FILE
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    print(f"summary: {path}", flush=True)
    return path


def _conclude(jobs: list[Job], stopped: int | None) -> None:
    by_exp: dict[str, tuple[Experiment, dict[str, list[int]]]] = {}
    for job in jobs:
        _, outcome = by_exp.setdefault(job.exp.name, (job.exp, {"stale": [], "interrupted": [], "failed": [],
                                                                 "busy": []}))
        if job.status in outcome:
            outcome[job.status].append(job.fold)
    problems = []
    for name, (exp, outcome) in by_exp.items():
        logs = ", ".join(str(job.log) for job in jobs if job.exp.name == name and job.status == "failed")
        found = fold_problems(exp, **outcome, failed_hint=f" (logs: {logs})" if logs else "")
        problems += [f"{name}: {problem}" for problem in found] if len(by_exp) > 1 else found
    if stopped is not None:
        for problem in problems:
            print(problem, file=sys.stderr)
        print("stopped; the same command with resume=true continues: finished folds are skipped, interrupted ones "
              "resumed, jobs not started yet run", file=sys.stderr)
        raise KeyboardInterrupt
    if problems:
        raise UserError("; ".join(problems))


# --- Ray --------------------------------------------------------------------------------------------------------------

def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"launcher=ray needs Ray, an optional dependency: {RAY_INSTALL}") from None
    return ray


HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _reachable(address: str, key: str) -> None:
    """Ray waits many minutes for an address where no Ray cluster answers, printing its raw connection warnings
    meanwhile: first try a plain TCP connection, then the HTTP/2 greeting that every gRPC server (Ray's GCS, its client
    server) answers with a SETTINGS frame, for 3 seconds each."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{key}: expected host:port (e.g. 10.0.0.5:6379), auto or local")
    try:
        connection = socket.create_connection((host, int(port)), timeout=3)
    except OSError as exc:
        raise UserError(f"{key}: cannot reach a Ray cluster at {host}:{port} ({exc.strerror or exc}); start one with "
                        "`ray start --head` or give the head node's address") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):  # a TLS cluster answers only a handshake
            return
        reply = b""
        try:
            connection.sendall(HTTP2_GREETING)
            while len(reply) < 9:
                chunk = connection.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
        except OSError:  # no answer within the timeout, or the connection was reset
            pass
    if len(reply) < 9 or reply[3] != 0x04:
        raise UserError(f"{key}: {host}:{port} answers, but not as a Ray cluster does (no gRPC reply within 3 s); "
                        "give the Ray head node's address (port 6379 unless `ray start --head --port` chose another)")


def _asks_for_token(address: str) -> bool:
    """Whether the cluster's GCS at `address` refuses a caller without Ray's token, as a new cluster does by Ray's
    default. Ray sends the token to an address it was given only when RAY_AUTH_MODE=token, and without it retries for
    half a minute, printing its raw gcs_client lines; one call here, within 3 seconds, tells at once."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):  # not a plain channel's business
        return False
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # Ray moved its generated stubs: ray.init says what is wrong, later
        return False
    with grpc.insecure_channel(address) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(gcs_service_pb2.GetClusterIdRequest(),
                                                                              timeout=3)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def connect_ray(address: str) -> tuple[Any, bool]:
    """Ray, connected to the cluster at `address` (auto: the one `ray start` runs on this machine; local: a new one
    just for this command). Returns (ray, whether we connected and so must disconnect)."""
    ray = import_ray()
    if ray.is_initialized():  # the caller is already connected (a notebook, a test)
        return ray, False
    key = f"ray.address={address}"
    target: str | None = address
    if address == "local":
        target = None
    elif address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            _reachable(canonicalize_bootstrap_address_or_die("auto"), key)
        except ConnectionError:
            raise UserError(f"{key}: no running Ray cluster found on this machine; start one with `ray start --head`, "
                            "give ray.address=<head node>:6379, or ray.address=local for a cluster just for this "
                            "command") from None
        except (ImportError, ValueError):  # Ray moved its private helper, or an address it does not parse: let
            pass  # ray.init find the cluster and say what is wrong
    else:
        _reachable(address, key)
        if (not address.startswith("ray://") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token"
                and _asks_for_token(address)):
            raise UserError(f"{key}: the cluster asks for Ray's token: set RAY_AUTH_MODE=token (the token is read from "
                            "RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    import logging

    try:
        ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise UserError(f"{key}: cannot connect to Ray ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    return ray, True


def _ray_task() -> Callable[..., dict]:
    """The function a Ray task runs: the job's subprocess, its output appended to the job's log in the shared
    experiment folder. Defined inside a function and using only the standard library, so Ray ships it by value and a
    worker node needs nothing of ours importable except what the job's own command imports."""

    def run_job(args: list[str], cwd: str, env: dict[str, str], log_path: str, header: str, grace: float) -> dict:
        import os
        import signal
        import socket
        import subprocess
        import sys
        import time

        started = time.time()
        env = {**os.environ, **env}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # Ray pins a task's GPUs here
        result = {"host": socket.gethostname(), "visible_devices": visible, "started": started}
        if not os.path.isdir(cwd):
            result.update(returncode=-1, seconds=0.0,
                          error=f"{cwd} does not exist on {result['host']}: the experiment folder must be shared at "
                                "the same path on every node")
            return result
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(header.replace("{where}", f"{result['host']} ray").encode())
            log.flush()
            process = subprocess.Popen([sys.executable, "-m", "competition.run", *args], cwd=cwd, env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = None
                while code is None:  # in short waits: ray.cancel's KeyboardInterrupt comes only between them
                    try:
                        code = process.wait(0.2)
                    except subprocess.TimeoutExpired:
                        pass
            except KeyboardInterrupt:  # ray.cancel: stop the job as Ctrl-C would, then for good. By SIGTERM, which
                os.killpg(process.pid, signal.SIGTERM)  # a job takes for Ctrl-C: it inherits SIGINT blocked by Ray
                try:
                    code = process.wait(grace)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    code = process.wait()
        result.update(returncode=code, seconds=time.time() - started)
        return result

    return run_job


def _run_ray(jobs: list[Job], options: QueueOptions, display: LiveLines, overrides: list[str], device: str,
             overwrite: bool) -> int | None:
    """Every job as a Ray task asking for one GPU (when the cluster has GPUs, or ray.gpus=1) or ray.cpus CPUs; Ray
    decides where and how many run at once. Outputs and logs land in the shared experiment folder."""
    ray = import_ray()  # connected by the caller (connect_ray)
    gpus = (1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0) if options.ray_gpus == "auto" \
        else int(options.ray_gpus)
    task = ray.remote(num_cpus=options.ray_cpus, num_gpus=gpus, max_retries=0)(_ray_task())
    job_device = "cuda" if gpus else device
    env = {**thread_env(max(1, round(options.ray_cpus))), JOB_ENV: "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    refs: dict[Any, tuple[Job, int]] = {}
    for job in jobs:
        args = job.args(job_device, overrides, overwrite)
        job.log.parent.mkdir(parents=True, exist_ok=True)
        job.log.touch()
        start = job.log.stat().st_size
        job.log_offset, job.progress, job.device = start, "waiting for Ray", "ray"
        refs[task.remote(args, os.getcwd(), env, str(job.log.resolve()), job.header(args, "{where}"),
                         GRACE_SECONDS)] = (job, start)
    display.say(f"{len(jobs)} jobs submitted to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs, "
                f"{ray.cluster_resources().get('GPU', 0):g} GPUs); logs beside the fold folders, e.g. {jobs[0].log}")

    def forward(number: int) -> None:
        for ref in refs:
            ray.cancel(ref, force=number == signal.SIGKILL)

    with Stopper(forward, GRACE_SECONDS + 5) as stopper:  # a task itself kills its job after GRACE_SECONDS
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=POLL_SECONDS)
            for ref in ready:
                job, start = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # cancelled, or the worker died
                    if stopper.signal is not None and not job.started:
                        job.status, job.note = "not started", "stopped before it started"
                        continue
                    job.seconds = time.time() - job.started if job.started else None
                    display.say(f"{job.title}: the Ray task ended with {type(exc).__name__}", err=True)
                    _finish(job, -1, start, stopper.signal is not None, display, " on Ray")
                    continue
                job.seconds = result.get("seconds")
                visible = result.get("visible_devices")
                job.device = f"ray {result['host']}" + (f" gpu {visible}" if gpus and visible else "")
                if result.get("error"):
                    display.say(f"{job.title}: {result['error']}", err=True)
                _finish(job, result["returncode"], start, stopper.signal is not None, display, " on Ray")
            for job, start in refs.values():
                job.follow()
                if not job.started and job.log_offset > start:  # the task wrote its header: it runs
                    job.started, job.progress = time.time(), "starting"
            if stopper.overdue():
                display.say(f"Ray tasks still running {GRACE_SECONDS:.0f}s after the signal: cancelling them by "
                            "force", err=True)
                stopper.kill_now()
            display.show({id(job): _live_line("ray", job) for job, _ in refs.values() if job.started})
    return stopper.signal
