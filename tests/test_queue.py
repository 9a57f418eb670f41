"""The job queue: many (experiment, fold) jobs on local workers or Ray, on the CPU, with the tones contest.

Four short jobs (experiments a and b, folds 0 and 1) are trained once for the module by `workers=2`; the tests that
need trained folds work on copies of that tree. GPU pinning is checked from what each job recorded in its DONE, with
COMPETITION_FAKE_GPUS standing in for the GPUs."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from competition import run
from competition.config import load_experiment
from competition.foldrun import can_resume, fold_lock, is_finished
from competition.queue import (FAKE_GPUS_ENV, GRACE_SECONDS, Job, QueueOptions, cpu_cores, local_slots, plan_fold,
                               run_queue)
from competition.train import load_data
from conftest import error_line, require_extra, run_here, run_verb as cli, write_tones_data, write_tones_experiment
from test_train import REPO, run_cli

FAST = dict(audio={"duration": 0.3}, frontend={"n_mels": 16, "hop_length": 128}, train={"epochs": 1})
JOBS = [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
WHERE_AND_WHEN = {"started_at", "finished_at", "host", "pid", "visible_devices", "threads", "seconds"}


def require_ray():
    return require_extra("ray", what="Ray")[0]


@contextmanager
def ray_cluster(cpus: int) -> Iterator[str]:
    """A local Ray cluster started by a driver process of its own, as a user's cluster is: its GCS address. A driver in
    pytest's process would leave Ray's threads behind, and its SIGSEGV handler in place of faulthandler's, for every
    later test."""
    script = (f"import ray, sys; ray.init(num_cpus={cpus}, include_dashboard=False, object_store_memory=100 * 1024**2,"
              " log_to_driver=False); print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as driver:
        try:
            address = driver.stdout.readline().strip()
            assert address, f"the Ray cluster's driver ended with {driver.wait()} before it gave an address"
            yield address
        finally:
            driver.stdin.close()  # the driver shuts its cluster down and ends
            driver.wait(timeout=120)


def write_contest(root: Path) -> None:
    """The tones contest with two quick experiments, a and b (another seed)."""
    write_tones_data(root)
    write_tones_experiment(root, "a", **FAST)
    write_tones_experiment(root, "b", **{**FAST, "train": {"epochs": 1, "seed": 7}})


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Four jobs, two experiments x two folds, trained by the command a user types, two at a time."""
    root = tmp_path_factory.mktemp("grid")
    write_contest(root)
    # the queue in this process (each job is a process of its own all the same): one torch start-up less
    result = run_here("competition.run", "exp=a,b", "fold=0,1", "workers=2", "device=cpu", cwd=root)
    return root, result


def copy_of(grid: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, outputs: bool = True) -> Path:
    root = tmp_path / "copy"
    skip = ("cache",) if outputs else ("cache", "fold_*", ".fold_*", "queue-summary.csv")
    shutil.copytree(grid[0], root, ignore=shutil.ignore_patterns(*skip))
    return root


def done(root: Path, exp: str, fold: int) -> dict:
    return json.loads((root / "experiments" / exp / f"fold_{fold}" / "DONE").read_text())


def summary(root: Path) -> dict[tuple[str, int], dict]:
    frame = pd.read_csv(root / "experiments" / "queue-summary.csv", dtype={"experiment": str}, keep_default_na=False)
    return {(row["experiment"], int(row["fold"])): row for row in frame.to_dict("records")}


def most_at_once(intervals: list[tuple[str, str]]) -> int:
    """The largest number of (start, end) intervals, ISO times, that overlap at one moment."""
    events = sorted([(datetime.fromisoformat(start), 1) for start, _ in intervals] +
                    [(datetime.fromisoformat(end), -1) for _, end in intervals], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def log_sizes(root: Path) -> dict[str, int]:
    return {str(path): path.stat().st_size for path in root.glob("experiments/*/fold_*.log")}


def test_four_jobs_on_two_workers_never_run_three_at_once_and_a_rerun_skips_them(
        grid: tuple[Path, subprocess.CompletedProcess], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root, result = grid
    assert result.returncode == 0, result.stdout + result.stderr
    for exp, fold in JOBS:
        assert is_finished(root / "experiments" / exp / f"fold_{fold}")
        assert done(root, exp, fold)["threads"] == max(1, cpu_cores() // 2)  # each job got its share of the cores
        log = root / "experiments" / exp / f"fold_{fold}.log"
        assert "epoch   1/1 |" in log.read_text() and f"log experiments/{exp}/fold_{fold}.log" in result.stdout
    # the jobs' own record (DONE) and the queue's (the summary) agree: never more than two at once...
    assert most_at_once([(done(root, e, k)["started_at"], done(root, e, k)["finished_at"]) for e, k in JOBS]) <= 2
    rows = summary(root)
    assert [rows[job]["status"] for job in JOBS] == ["done"] * 4
    # ...and two did run at once: the workers are really parallel (a subprocess per job, as the queue saw them)
    assert most_at_once([(rows[job]["started_at"], rows[job]["finished_at"]) for job in JOBS]) == 2
    assert {rows[job]["device"] for job in JOBS} == {"cpu 0", "cpu 1"}
    assert "job" in result.stdout and "best epoch" in result.stdout and "summary: experiments/queue-summary.csv" in \
        result.stdout

    monkeypatch.chdir(root)
    before, started = log_sizes(root), time.time()
    code, out, err = cli(capsys, run, "exp=a,b", "fold=0,1", "workers=2", "device=cpu")
    assert code == 0, err
    assert time.time() - started < 30 and out.count("already finished, skipped") == 4
    assert log_sizes(root) == before  # no job was started
    assert [summary(root)[job]["status"] for job in JOBS] == ["skipped"] * 4


def test_a_failing_job_leaves_the_others_finished_and_fails_the_command(
        grid: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root = copy_of(grid, tmp_path)
    shutil.rmtree(root / "experiments" / "a" / "fold_1")  # to be trained alongside the failing job
    write_tones_experiment(root, "bad", **{**FAST, "train": {"epochs": 1, "lr": 1e9, "schedule": "constant"}})
    monkeypatch.chdir(root)
    code, _, err = cli(capsys, run, "exp=a,bad", "fold=1", "workers=2", "device=cpu")
    assert code == 2
    # the failure is the real thing: the loss went NaN, and the failed fold left nothing behind
    assert "training diverged at epoch 1" in (root / "experiments" / "bad" / "fold_1.log").read_text()
    assert not (root / "experiments" / "bad" / "fold_1").exists()
    assert not (root / "experiments" / "bad" / "fold_1.partial").exists()
    assert "bad fold 1: FAILED" in err and "the end of its log experiments/bad/fold_1.log" in err
    assert "    error: training diverged" in err  # the tail of the log, shown
    assert is_finished(root / "experiments" / "a" / "fold_1")  # trained while the other one failed
    rows = summary(root)
    assert {job: rows[job]["status"] for job in rows} == {("a", 1): "done", ("bad", 1): "failed"}
    assert "training diverged" in rows[("bad", 1)]["note"]
    assert "bad: folds 1 failed (logs: experiments/bad/fold_1.log); rerun them with python -m competition.run " \
        "exp=bad fold=1" in error_line(err)


def test_stale_jobs_are_reported_not_skipped_as_done_and_busy_ones_left_to_their_owner(
        grid: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root = copy_of(grid, tmp_path)
    model = (root / "experiments" / "b" / "fold_0" / "model.pt").read_bytes()
    write_tones_experiment(root, "b", **{**FAST, "train": {"epochs": 1, "seed": 7, "lr": 0.02}})
    monkeypatch.chdir(root)
    before = log_sizes(root)
    with fold_lock(root / "experiments" / "a" / "fold_2"), fold_lock(root / "experiments" / "b" / "fold_2"):
        code, out, err = cli(capsys, run, "exp=a,b", "fold=all", "workers=2", "device=cpu")  # "others" train fold 2
    assert code == 2
    assert "b fold 0: stale, not used: config changed: train.lr 0.01 -> 0.02" in err
    assert out.count("already finished, skipped") == 2 and "b fold 0: already finished" not in out
    assert "b: folds 0,1 are stale" in error_line(err)
    assert "python -m competition.run exp=b fold=0,1 overwrite=true" in error_line(err)
    assert "a fold 2: skipped:" in err and "being trained by another process (host" in err
    rows = summary(root)
    assert [rows[job]["status"] for job in JOBS] == ["skipped", "skipped", "stale", "stale"]
    assert rows[("a", 2)]["status"] == rows[("b", 2)]["status"] == "busy"
    assert f"pid {os.getpid()}" in rows[("a", 2)]["note"]
    assert log_sizes(root) == before  # neither reused nor retrained, and nothing started
    assert (root / "experiments" / "b" / "fold_0" / "model.pt").read_bytes() == model


def processes_in(folder: Path) -> list[int]:
    """Processes whose working directory is `folder`, this one aside: what the queue started there and left running."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(proc.name) != os.getpid() and Path(os.readlink(proc / "cwd")) == folder:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


EPOCHS = 12  # a fold long enough to be stopped in the middle


def start_queue(root: Path, *args: str) -> subprocess.Popen:
    """`python -m competition.run args` in a session of its own (as from a terminal), its output in root/queue.out."""
    with open(root / "queue.out", "w") as output:
        return subprocess.Popen([sys.executable, "-m", "competition.run", *args], cwd=root,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_checkpoint(queue: subprocess.Popen, root: Path, fold_dir: Path) -> None:
    """Until the fold's first epoch is checkpointed: the job is mid-training."""
    deadline = time.time() + 300
    while not (fold_dir.with_name(f"{fold_dir.name}.partial") / "last.pt").exists():
        assert queue.poll() is None and time.time() < deadline, (root / "queue.out").read_text()
        time.sleep(0.05)


def interrupt(queue: subprocess.Popen, root: Path, within: float = 60) -> tuple[int | None, float]:
    """Ctrl-C, as in the queue's terminal: its exit code (None: still running `within` seconds later, then killed
    with what it left running) and how long it took to exit."""
    os.kill(queue.pid, signal.SIGINT)
    signalled = time.time()
    try:
        return queue.wait(timeout=within), time.time() - signalled
    except subprocess.TimeoutExpired:
        for pid in [queue.pid, *processes_in(root)]:
            os.kill(pid, signal.SIGKILL)
        queue.wait()
        return None, time.time() - signalled


def test_ctrl_c_stops_the_jobs_leaves_no_finished_looking_fold_and_resume_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path, "long", **{**FAST, "train": {"epochs": EPOCHS}})
    fold_dir = tmp_path / "experiments" / "long" / "fold_0"
    queue = start_queue(tmp_path, "exp=long", "fold=0", "workers=2", "device=cpu")
    wait_for_checkpoint(queue, tmp_path, fold_dir)
    code, took = interrupt(queue, tmp_path)
    text = (tmp_path / "queue.out").read_text()
    assert code == 130, text
    assert took < GRACE_SECONDS and "killing them" not in text, text  # stopped cleanly, not killed
    assert processes_in(tmp_path) == []  # nothing left running
    assert not is_finished(fold_dir) and not (fold_dir.with_name("fold_0.partial") / "DONE").exists()
    assert can_resume(fold_dir)
    assert "long fold 0: interrupted (resume=true continues it)" in text
    assert "continue them with python -m competition.run exp=long fold=0 resume=true" in text
    assert summary(tmp_path)[("long", 0)]["status"] == "interrupted"
    assert done_epochs(fold_dir) < EPOCHS  # really stopped mid-training

    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, run, "exp=long", "fold=0", "workers=2", "device=cpu")
    assert code == 2 and "long fold 0: interrupted, left as it is" in err  # never restarted silently
    code, out, err = cli(capsys, run, "exp=long", "fold=0", "workers=2", "resume=true", "device=cpu")
    assert code == 0, err
    assert "resuming after epoch" in (tmp_path / "experiments" / "long" / "fold_0.log").read_text()
    assert is_finished(fold_dir) and done(tmp_path, "long", 0)["epochs_run"] == EPOCHS
    assert summary(tmp_path)[("long", 0)]["note"] == "resumed"


def done_epochs(fold_dir: Path) -> int:
    import torch

    return torch.load(fold_dir.with_name("fold_0.partial") / "last.pt", weights_only=False)["epoch"]


LONG = 200  # epochs: a fold still training whenever the test stops it


def test_ctrl_c_with_jobs_still_waiting_exits_at_once_and_a_second_queue_leaves_the_running_fold_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path, "long", **{**FAST, "train": {"epochs": LONG}})
    queue = start_queue(tmp_path, "exp=long", "fold=all", "workers=1", "device=cpu")  # three jobs, one at a time
    try:
        wait_for_checkpoint(queue, tmp_path, tmp_path / "experiments" / "long" / "fold_0")
        monkeypatch.chdir(tmp_path)  # a second queue for the fold meanwhile: it is the first one's, not interrupted
        code, _, err = cli(capsys, run, "exp=long", "fold=0", "workers=1", "device=cpu")
        assert code == 0 and "long fold 0: skipped:" in err and "being trained by another process (host" in err, err
        assert "interrupted" not in err and "resume=true" not in err
        assert summary(tmp_path)[("long", 0)]["status"] == "busy"
    finally:
        code, took = interrupt(queue, tmp_path)
    text = (tmp_path / "queue.out").read_text()
    assert code == 130 and took < GRACE_SECONDS, text  # the jobs still waiting are not waited for
    assert "still running" not in text and "long fold 0: interrupted (resume=true continues it)" in text
    rows = summary(tmp_path)
    assert [rows[("long", fold)]["status"] for fold in range(3)] == ["interrupted", "not started", "not started"]
    assert processes_in(tmp_path) == []


def test_a_job_whose_fold_another_process_finished_meanwhile_is_skipped_not_failed(
        grid: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root = copy_of(grid, tmp_path)
    monkeypatch.chdir(root)
    fold_dir, elsewhere = root / "experiments" / "a" / "fold_1", tmp_path / "elsewhere"
    model = (fold_dir / "model.pt").read_bytes()
    fold_dir.rename(elsewhere)
    exp = load_experiment("a")
    job = Job(exp, "a", 1, plan_fold(exp, 1, load_data(exp), overwrite=False, resume=False))
    assert job.plan.action == "train"
    elsewhere.rename(fold_dir)  # another process finishes the fold, from the same inputs, before the job starts
    run_queue([job], QueueOptions("local", local_slots("", "1", "cpu")), [], "cpu", overwrite=False)
    out, err = capsys.readouterr()
    assert job.status == "skipped" and "a fold 1: skipped: finished by another process meanwhile" in out, out + err
    assert "FAILED" not in err and (fold_dir / "model.pt").read_bytes() == model
    assert summary(root)[("a", 1)]["status"] == "skipped"


def test_every_hint_carries_the_overrides_the_command_was_run_with(
        grid: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root = copy_of(grid, tmp_path)
    monkeypatch.chdir(root)
    overrides = ["train.epochs=2", "tta.views=[plain,shift:0.1]"]  # folds 0 and 1 were trained with neither
    hint = "python -m competition.run exp=a fold={} overwrite=true train.epochs=2 'tta.views=[plain,shift:0.1]'"
    for folds, how in (("0,1", ["workers=2"]), ("0,1", []), ("0", [])):  # on the queue, here, and a single fold
        code, _, err = cli(capsys, run, "exp=a", f"fold={folds}", *how, "device=cpu", *overrides)
        assert code == 2 and hint.format(folds) in error_line(err), err

    code, _, err = cli(capsys, run, *shlex.split(hint.format(0))[3:], "device=cpu")  # following the hint...
    assert code == 0, err
    code, out, err = cli(capsys, run, "exp=a", "fold=0", "workers=1", "device=cpu", *overrides)
    assert code == 0 and "a fold 0: already finished, skipped" in out, err  # ...made the fold that command uses


def test_gpus_pin_each_worker_through_cuda_visible_devices(grid: tuple[Path, subprocess.CompletedProcess],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    root = copy_of(grid, tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setenv(FAKE_GPUS_ENV, "4")  # four "GPUs"; the workers still train on the CPU
    code, out, err = cli(capsys, run, "exp=a", "fold=all", "gpus=0,0,1", "overwrite=true")
    assert code == 0, err
    recorded = {fold: done(root, "a", fold) for fold in range(3)}
    assert [recorded[fold]["visible_devices"] for fold in range(3)] == ["0", "0", "1"]  # one job per worker, in order
    assert all(record["threads"] == max(1, cpu_cores() // 3) for record in recorded.values())
    assert [summary(root)[("a", fold)]["device"] for fold in range(3)] == ["gpu 0", "gpu 0", "gpu 1"]


def test_ray_runs_the_same_jobs_into_the_same_files(grid: tuple[Path, subprocess.CompletedProcess],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_ray()
    local = grid[0]
    root = copy_of(grid, tmp_path, outputs=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's defaults, for the cluster and for the queue
    with ray_cluster(cpus=2) as address:  # a cluster the user already runs; the queue connects to it by address
        # a new cluster asks for Ray's token (~/.ray/auth_token), which goes to an address only with RAY_AUTH_MODE=token
        tokenless = run_cli("competition.run", "exp=a", "fold=0,1", "launcher=ray", f"ray.address={address}",
                            "device=cpu", cwd=root)
        assert tokenless.returncode == 2, tokenless.stderr
        # one line, at once: not Ray's half a minute of raw gcs_client retries
        assert tokenless.stderr.splitlines() == [f"error: ray.address={address}: the cluster asks for Ray's token: "
                                                 "set RAY_AUTH_MODE=token (the token is read from RAY_AUTH_TOKEN or "
                                                 "~/.ray/auth_token)"]
        result = run_cli("competition.run", "exp=a", "fold=0,1", "launcher=ray", f"ray.address={address}",
                         "device=cpu", cwd=root, RAY_AUTH_MODE="token")  # two jobs at once on Ray's two CPUs
    assert result.returncode == 0, result.stdout + result.stderr
    rows = summary(root)
    for exp, fold in JOBS[:2]:
        ours, theirs = root / "experiments" / exp / f"fold_{fold}", local / "experiments" / exp / f"fold_{fold}"
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
        mine, reference = done(root, exp, fold), done(local, exp, fold)
        assert set(mine) == set(reference)
        assert {k: v for k, v in mine.items() if k not in WHERE_AND_WHEN} == \
            {k: v for k, v in reference.items() if k not in WHERE_AND_WHEN}
        assert mine["threads"] == 1  # ray.cpus=1 per job
        for name in ("oof.csv", "holdout.csv", "test.csv"):
            pd.testing.assert_frame_equal(pd.read_csv(ours / name), pd.read_csv(theirs / name))
        assert "epoch   1/1 |" in (root / "experiments" / exp / f"fold_{fold}.log").read_text()
        assert rows[(exp, fold)]["status"] == "done" and rows[(exp, fold)]["device"].startswith("ray ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("args,fake_gpus,expected", [
    (["gpus=0,7"], "4", "gpus=0,7: there is no GPU 7 here; the visible GPUs are 0, 1, 2, 3"),
    (["gpus=0"], None, "gpus=0: CUDA is not available here"),
    (["exp=tones,tonez", "workers=2"], None, "experiment 'tonez' not found (looked for "
                                             "experiments/tonez/config.yaml); did you mean tones?"),
    (["exp=tones,tones", "workers=2"], None, "exp=tones,tones lists tones twice"),
    (["workers=0"], None, "workers=0: expected a positive whole number"),
    (["workers=-2"], None, "workers=-2: expected a positive whole number"),
    (["gpus=0,1", "workers=2"], "4", "gpus=0,1 together with workers=2"),
    (["gpus=0", "device=cpu"], "4", "device=cpu together with gpus=0"),
    (["launcher=slurm"], None, "launcher=slurm: choose local"),
    (["launcher=ray", "workers=2"], None, "workers= is for local workers"),
])
def test_bad_queue_input_is_one_line_before_any_decoding(tones: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, args: list[str],
                                                         fake_gpus: str | None, expected: str) -> None:
    if fake_gpus:
        monkeypatch.setenv(FAKE_GPUS_ENV, fake_gpus)
    else:
        monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    if args == ["gpus=0"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    if not any(arg.startswith("exp=") for arg in args):
        args = ["exp=tones", *args]
    code, _, err = cli(capsys, run, "fold=all", *args)
    assert code == 2 and expected in error_line(err) and "Traceback" not in err
    assert not (tones / "cache").exists()


def test_ray_mistakes_are_one_line(tones: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
        code, _, err = cli(capsys, run, "exp=tones", "fold=all", "launcher=ray")
    assert code == 2 and "launcher=ray needs Ray" in error_line(err) and "pip install" in error_line(err)

    require_ray()
    port, started = free_port(), time.time()
    code, _, err = cli(capsys, run, "exp=tones", "fold=all", "launcher=ray", f"ray.address=127.0.0.1:{port}")
    assert code == 2 and f"ray.address=127.0.0.1:{port}: cannot reach a Ray cluster" in error_line(err)
    assert time.time() - started < 15 and not (tones / "cache").exists()


def test_ray_at_an_address_where_no_ray_answers_is_one_line_at_once(tmp_path: Path) -> None:
    """Something listens there, but not Ray: Ray itself would wait many minutes, printing its raw gcs_client lines."""
    require_ray()
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "competition.run", "exp=tones", "fold=all", "launcher=ray",
                                 f"ray.address=127.0.0.1:{port}"], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 2 and [line for line in result.stderr.splitlines() if line.strip()] == [
        error_line(result.stderr)], result.stderr
    assert f"ray.address=127.0.0.1:{port}: 127.0.0.1:{port} answers, but not as a Ray cluster does" in result.stderr
    assert not (tmp_path / "cache").exists()
