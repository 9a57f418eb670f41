"""W&B mirrors of folds, trials and blends, written offline and read back from the run files on disk.

wandb writes an offline run as `wandb/offline-run-*/run-<id>.wandb`: a LevelDB-style log of its protobuf `Record`
messages (a 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header), read here record by record.
wandb's service process writes that file on its own time: a run finished in this process may not be on disk yet (the
process's exit waits for it), so a run is read once its exit record is there, polling with a deadline."""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import yaml

from competition import blend, run, tracking, train, tune
from conftest import run_verb as cli, write_tones_data, write_tones_experiment

QUICK = dict(train={"epochs": 2, "lr": 0.015}, tracking={"wandb": {"mode": "offline", "images": 2}})


@dataclass
class OfflineRun:
    name: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: dict[int, dict] = field(default_factory=dict)  # by step
    summary: dict = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    exit_code: int | None = None


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:  # zero padding up to the next block
            position += left
            continue
        if position + 7 + length > len(data):  # a chunk still being written: the records before it are all there is
            return
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> OfflineRun:
    found = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found.name, found.project, found.group, found.job_type = (
                record.run.display_name, record.run.project, record.run.run_group, record.run.job_type)
            found.config.update({key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            found.config.update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {key(i): json.loads(i.value_json) for i in record.history.item}
            found.history.setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            found.summary.update({key(i): json.loads(i.value_json) for i in record.summary.update if key(i)})
        elif kind == "artifact":
            found.artifacts.append(record.artifact.name)
        elif kind == "exit":
            found.exit_code = record.exit.exit_code
    return found


def offline_runs(root: Path, *names: str, seconds: float = 60) -> dict[str, OfflineRun]:
    """The offline runs under `root` by name, read again until each of `names` is there with its exit record (or the
    deadline passes, and the test says which is missing)."""
    deadline = time.monotonic() + seconds
    while True:
        runs = {r.name: r for r in map(read_run, sorted(root.glob("wandb/offline-run-*/run-*.wandb")))}
        if all(name in runs and runs[name].exit_code is not None for name in names) or time.monotonic() > deadline:
            return runs
        time.sleep(0.1)


@pytest.fixture
def contest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path, "t", **QUICK, tune={"space": {"train.lr": {"choices": [0.015, 0.03]}}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE")  # conftest turns tracking off for every other test
    monkeypatch.setenv(tracking.UNREACHABLE_ENV, "")  # a command's decision, undone after each test as after a process
    return tmp_path


def test_a_fold_is_an_offline_run_that_mirrors_its_files_and_so_is_a_blend(contest: Path, capsys) -> None:
    code, _, err = cli(capsys, run, "exp=t", "fold=0", "device=cpu")  # in this process: no torch start-up of its own
    assert code == 0, err
    fold_dir = contest / "experiments" / "t" / "fold_0"
    mirrored = offline_runs(contest, "t/fold_0")["t/fold_0"]
    assert (mirrored.project, mirrored.group, mirrored.job_type, mirrored.exit_code) == ("tones", "t", "fold", 0)
    config = yaml.safe_load((fold_dir / "config.yaml").read_text())
    assert {k: v for k, v in mirrored.config.items() if not k.startswith("_wandb")} == config
    done = json.loads((fold_dir / "DONE").read_text())
    for name, value in done.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert mirrored.summary[name] == pytest.approx(value), name
    metrics = pd.read_csv(fold_dir / "metrics.csv")
    for row in metrics.to_dict("records"):
        logged = mirrored.history[int(row["epoch"])]
        for name, value in row.items():
            assert logged[name] == pytest.approx(value, rel=1e-5), name
    assert any("augmented inputs" in k for step in mirrored.history.values() for k in step)
    assert "t-fold_0-predictions" in mirrored.artifacts

    code, out, err = cli(capsys, blend, "exps=t", "method=soft")
    assert code == 0, err
    report = json.loads(next((contest / "submissions").glob("*.json")).read_text())
    mirrored = offline_runs(contest, report["name"])[report["name"]]
    assert (mirrored.project, mirrored.job_type, mirrored.exit_code) == ("tones", "blend", 0)  # with its folds
    assert mirrored.summary["method"] == "soft"
    assert mirrored.summary[f"oof_{report['metric']}"] == pytest.approx(report["scores"]["oof"])
    assert mirrored.config["weights"] == report["weights"]


def test_a_study_has_a_run_per_trial_and_one_for_the_study(contest: Path, capsys) -> None:
    code, out, err = cli(capsys, tune, "exp=t", "n_trials=2", "device=cpu", "train.epochs=1")
    assert code == 0, err
    trials = pd.read_csv(contest / "experiments" / "t" / "tune" / "t" / "trials.csv")
    runs = offline_runs(contest, "t/t", *(f"t/t/trial_{number}" for number in trials["number"]))
    for trial in trials.to_dict("records"):
        mirrored = runs[f"t/t/trial_{trial['number']}"]
        assert (mirrored.project, mirrored.group, mirrored.job_type, mirrored.exit_code) == (
            "tones", "t/tune/t", "trial", 0)
        assert mirrored.config["trial"]["params"] == {"train.lr": trial["train.lr"]}
        assert mirrored.summary["state"] == trial["state"].lower()
        if trial["state"] == "COMPLETE":  # trials.csv keeps 6 significant digits
            assert mirrored.summary["value"] == pytest.approx(trial["value"], rel=1e-5)
    study = runs["t/t"]
    assert (study.project, study.job_type) == ("tones", "study")
    assert study.summary["best_accuracy"] == pytest.approx(trials["value"].max(), rel=1e-5)


@pytest.fixture(params=["hung", "closed"])
def unreachable(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a W&B server on loopback that never answers: a port that accepts connections and then says nothing,
    or one that refuses them."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        if request.param == "hung":
            server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_an_unreachable_server_is_decided_once_before_any_fold_and_the_runs_kept_offline(
        contest: Path, capsys, monkeypatch, unreachable: str) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", unreachable)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    started, fold_starts = time.monotonic(), []
    real_fold_tracking = run.fold_tracking

    def fold_tracking(*args, **kwargs):
        fold_starts.append(time.monotonic() - started)
        # undecided, wandb would try its server (maybe not this one: its settings outlive a command in this process)
        assert os.environ.get(tracking.UNREACHABLE_ENV) == unreachable, "no decision before the fold"
        return real_fold_tracking(*args, **kwargs)

    monkeypatch.setattr(run, "fold_tracking", fold_tracking)
    code, out, err = cli(capsys, run, "exp=t", "fold=0,1", "device=cpu", "train.epochs=1", "tracking.wandb.mode=online")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and unreachable in warnings[0] and "offline under wandb/" in warnings[0], err
    assert len(fold_starts) == 2 and fold_starts[0] < 30, fold_starts  # PROBE_SECONDS, not 60 s per run in wandb
    runs = offline_runs(contest, "t/fold_0", "t/fold_1")
    assert [runs[f"t/fold_{fold}"].exit_code for fold in (0, 1)] == [0, 0]
    assert all((contest / "experiments" / "t" / f"fold_{fold}" / "DONE").is_file() for fold in (0, 1))


def test_a_fold_opens_its_run_before_its_first_timed_epoch(contest: Path, capsys, monkeypatch) -> None:
    events: list[str] = []
    real_open, real_epoch = tracking.WandbRun._open, train._train_epoch

    def _open(self: tracking.WandbRun) -> None:
        events.append("open")
        real_open(self)

    def _train_epoch(*args, **kwargs) -> dict:
        events.append("epoch")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(tracking.WandbRun, "_open", _open)
    monkeypatch.setattr(train, "_train_epoch", _train_epoch)
    code, _, err = cli(capsys, run, "exp=t", "fold=0", "device=cpu")
    assert code == 0, err
    assert events == ["open", "epoch", "epoch"], events  # opening (seconds, online) is never an epoch's time
    code, _, err = cli(capsys, run, "exp=t", "fold=0", "device=cpu")
    assert code == 2 and "already finished" in err, err
    assert events == ["open", "epoch", "epoch"], events  # a refused fold leaves no run behind


def test_a_tracking_failure_is_one_warning_and_the_fold_finishes(contest: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails, as without the package
    code, out, err = cli(capsys, run, "exp=t", "fold=0", "device=cpu", "train.epochs=1")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tracking off for t/fold_0" in warnings[0], err
    assert (contest / "experiments" / "t" / "fold_0" / "DONE").is_file()


def test_disabled_tracking_writes_nothing(contest: Path, capsys) -> None:
    code, _, err = cli(capsys, run, "exp=t", "fold=0", "device=cpu", "train.epochs=1", "tracking.wandb.mode=disabled")
    assert code == 0, err
    assert (contest / "experiments" / "t" / "fold_0" / "DONE").is_file()
    assert not (contest / "wandb").exists()
