"""Tuning with Optuna on the tones contest: real studies on a journal file and on a PostgreSQL server started here,
two-epoch trials of a small timm backbone on the CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from competition import run, tune
from competition.config import CHOICES
from conftest import error_line, require_extra, run_verb as cli, write_tones_data, write_tones_experiment
from test_train import run_cli

# Two epochs of resnet10t on the tones; lr 0.015 learns them, lr 1e-7 learns nothing (chance is 1/3).
QUICK = dict(train={"epochs": 2, "lr": 0.015})
SPACE = {"train.lr": {"choices": [0.015, 0.03, 1.0e-7]}}
TUNE = {"space": SPACE, "startup_trials": 1, "warmup_epochs": 1}


def journal(root: Path, exp: str = "t") -> optuna.storages.JournalStorage:
    path = root / "experiments" / exp / "tune" / tune.JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def trials(root: Path, study: str = "t", exp: str = "t") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=journal(root, exp)).trials


@pytest.fixture
def contest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path, "t", **QUICK, tune=TUNE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_study_prunes_a_hopeless_trial_and_its_tuned_config_trains(contest: Path, capsys) -> None:
    code, out, err = cli(capsys, tune, "exp=t", "n_trials=1", "device=cpu")
    assert code == 0, err
    assert "trial 0 is the experiment's own values" in out
    study = optuna.load_study(study_name="t", storage=journal(contest))
    assert [t.params for t in study.trials] == [{"train.lr": 0.015}]
    study.enqueue_trial({"train.lr": 1.0e-7})  # hopeless: worse than the baseline at epoch 2, so pruned there
    code, out, err = cli(capsys, tune, "exp=t", "n_trials=2", "device=cpu")
    assert code == 0, err
    done = trials(contest)
    assert [t.state for t in done] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert done[1].last_step == 2 and done[1].intermediate_values[2] < done[0].intermediate_values[2]
    study_dir = contest / "experiments" / "t" / "tune" / "t"
    assert not (study_dir / "trial_0001").exists()  # a pruned trial leaves nothing behind
    assert (study_dir / "trial_0000" / "fold_0" / "DONE").is_file()
    table = pd.read_csv(study_dir / "trials.csv")
    assert list(table["number"]) == [0, 1] and list(table["state"]) == ["COMPLETE", "PRUNED"]
    assert table.loc[0, "value"] == pytest.approx(done[0].value)
    for plot in ("history.png", "slice.png"):
        assert (study_dir / plot).read_bytes()[:4] == b"\x89PNG"
    tuned = contest / "experiments" / "t_tuned" / "config.yaml"
    body = yaml.safe_load(tuned.read_text())
    assert body == {"base": "../t/config.yaml", "train": {"lr": 0.015}}
    assert "exp=t_tuned fold=all" in out
    code, out, err = cli(capsys, run, "exp=t_tuned", "fold=0", "device=cpu")
    assert code == 0, err
    trained = json.loads((contest / "experiments" / "t_tuned" / "fold_0" / "DONE").read_text())
    assert trained["best_epoch"] >= 1
    assert yaml.safe_load((contest / "experiments" / "t_tuned" / "fold_0" / "config.yaml").read_text())[
        "train"]["lr"] == 0.015


def test_a_killed_study_resumes_and_retries_the_killed_trial(contest: Path, capsys) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "competition.tune", "exp=t", "n_trials=1", "device=cpu", "train.epochs=3"]
    process = subprocess.Popen(args, cwd=contest, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    checkpoint = contest / "experiments" / "t" / "tune" / "t" / "trial_0000" / "fold_0.partial" / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # mid-trial, as a power cut would
    process.wait()
    assert checkpoint.is_file()
    assert [t.state for t in trials(contest)] == [TrialState.RUNNING]
    code, out, err = cli(capsys, tune, "exp=t", "n_trials=1", "device=cpu", "train.epochs=3")
    assert code == 0, err
    assert "trial 0: its worker is gone; queued again with the same values" in out
    assert "resuming after epoch" in out + err  # the retry continued the killed trial's fold
    killed, retry = trials(contest)
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == killed.params and RetryHeartbeatStaleTrialCallback.retry_history(retry) == [0]
    assert (contest / "experiments" / "t" / "tune" / "t" / "trial_0001" / "fold_0" / "DONE").is_file()


def test_two_workers_share_the_default_storage_and_finish_exactly_n_trials(contest: Path) -> None:
    result = run_cli("competition.tune", "exp=t", "n_trials=3", "workers=2", "train.epochs=1", "tune.keep_best=1",
                     cwd=contest)
    assert result.returncode == 0, result.stdout + result.stderr
    run = [t for t in trials(contest) if not t.user_attrs.get("surplus")]
    assert len(run) == 3 and {t.state for t in run} <= {TrialState.COMPLETE, TrialState.PRUNED}, run
    surplus = [t for t in trials(contest) if t.user_attrs.get("surplus")]  # two workers finishing at the same moment
    assert all(t.state == TrialState.FAIL and not t.params for t in surplus) and len(surplus) <= 1, surplus  # never run
    logs = sorted((contest / "experiments" / "t" / "tune" / "t").glob("worker_*.log"))
    assert len(logs) == 2
    for log in logs:  # both joined the one study
        assert "study t (experiments/t/tune/optuna.journal)" in log.read_text()
    best = optuna.load_study(study_name="t", storage=journal(contest)).best_trial.number
    kept = sorted((contest / "experiments" / "t" / "tune" / "t").glob("trial_*/fold_0/model.pt"))
    assert [path.parent.parent.name for path in kept] == [f"trial_{best:04d}"]  # tune.keep_best=1
    assert "3/3 finished" in result.stdout


@pytest.fixture
def postgres(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PostgreSQL server of our own (pgserver's binaries), torn down afterwards; its URL."""
    pgserver, _ = require_extra("pgserver", "psycopg", what="a PostgreSQL server package and driver (psycopg, which "
                                "SQLAlchemy uses for postgresql:// URLs)")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def test_the_same_study_runs_on_a_postgresql_server_with_two_folds(contest: Path, postgres: str, capsys) -> None:
    code, out, err = cli(capsys, tune, "exp=t", "n_trials=2", "device=cpu", f"storage={postgres}", "train.epochs=1",
                         "tune.folds=[0,1]")
    assert code == 0, err
    study = optuna.load_study(study_name="t", storage=postgres)
    assert len(study.trials) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    for trial in study.trials:  # two folds, reported one by one to the fold-aware (Wilcoxon) pruner
        assert sorted(trial.intermediate_values) == [0, 1]
        assert trial.value == pytest.approx(sum(trial.intermediate_values.values()) / 2)
    assert not (contest / "experiments" / "t" / "tune" / tune.JOURNAL).exists()
    assert f"optuna-dashboard {postgres}" in out


def test_the_pruners_are_the_ones_the_config_offers() -> None:
    assert set(tune.PRUNERS) | {"auto"} == set(CHOICES["tune.pruner"])


@pytest.mark.parametrize("value, seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("600", 600)])
def test_timeouts_read_as_people_write_them(value: str, seconds: float) -> None:
    assert tune.parse_duration(value) == seconds


@pytest.mark.parametrize("space, expected", [
    ({"frontend.n_mel": {"choices": [32]}}, "'tune.space.frontend.n_mel' names no config key; did you mean frontend.n_mels"),
    ({"frontend.n_mels": {"choices": [32, "many"]}}, "bad value 'many' for 'frontend.n_mels'"),
    ({"frontend.n_mels": {"choices": []}}, "'tune.space.frontend.n_mels.choices' must be a non-empty list"),
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "'tune.space.train.lr' has low 0.1 > high 0.01"),
    ({"train.lr": {"low": 0.0, "high": 0.01, "log": True}}, "log scale, so low must be positive"),
    ({"train.lr": {"low": 0.001}}, "needs both low and high"),
    ({"audio.duration": {"choices": [0.5, 1.0]}}, "only recipe keys"),
    ({"frontend.n_mels": {"choices": [0, 32]}}, "value 0 makes an invalid config"),
    ({"model.name": {"choices": ["resnet10t", "resnet_tiny"]}}, "'resnet_tiny' is not a timm model"),
])
def test_a_bad_search_space_is_one_line_naming_the_key(contest: Path, capsys, space: dict, expected: str) -> None:
    write_tones_experiment(contest, "bad", **QUICK, tune={"space": space})
    code, _, err = cli(capsys, tune, "exp=bad", "n_trials=1")
    assert code == 2 and expected in error_line(err), err


@pytest.mark.parametrize("args, expected", [
    (["n_trials=0"], "n_trials=0: a study needs at least one trial"),
    (["timeout=soon"], "timeout=soon: expected a duration"),
    (["storage=postgresql://nobody@127.0.0.1:9/none"], "storage=postgresql://nobody@127.0.0.1:9/none: cannot open it"),
    (["exp=plain"], "has no tune.space to search"),
])
def test_bad_tune_commands_are_one_line(contest: Path, capsys, args: list[str], expected: str) -> None:
    write_tones_experiment(contest, "plain", **QUICK)
    code, _, err = cli(capsys, tune, *(["exp=t"] if not args[0].startswith("exp=") else []), *args)
    assert code == 2 and expected in error_line(err), err


def test_a_study_is_not_resumed_with_another_space_direction_or_inputs(contest: Path, capsys) -> None:
    study = optuna.create_study(study_name="t", storage=journal(contest))
    study.enqueue_trial({"train.lr": 0.1})
    code, _, err = cli(capsys, tune, "exp=t", "n_trials=1")
    assert code == 2 and "study 't' in " in err and "was not made by competition.tune" in error_line(err)
    code, _, err = cli(capsys, tune, "exp=t", "study=s", "n_trials=1", "device=cpu", "train.epochs=1")
    assert code == 0, err
    for args, expected in ((["tune.space={train.lr: {choices: [0.5]}}"], "searched another space"),
                           (["train.metric=log_loss"], "optimised accuracy (maximize), not log_loss (minimize)"),
                           (["train.batch_size=8"], "has trials made from other inputs: config changed: "
                                                    "train.batch_size 16 -> 8")):
        code, _, err = cli(capsys, tune, "exp=t", "study=s", "n_trials=2", "train.epochs=1", *args)
        assert code == 2 and expected in error_line(err), err
