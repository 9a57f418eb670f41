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
from competition.config import CHOICES, load_experiment
from competition.errors import UserError
from conftest import error_line, require_extra, run_here, run_verb as cli, write_tones_data, write_tones_experiment

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
    # the command in this process (its two workers are processes of their own): one torch start-up less
    result = run_here("competition.tune", "exp=t", "n_trials=3", "workers=2", "train.epochs=1", "tune.keep_best=1",
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
    (["exp=plain"], "has no tune.space to search"),
    (["study=../s"], "study=../s: give the study a plain name"),
])
def test_bad_tune_commands_are_one_line(contest: Path, capsys, args: list[str], expected: str) -> None:
    write_tones_experiment(contest, "plain", **QUICK)
    code, _, err = cli(capsys, tune, *(["exp=t"] if not args[0].startswith("exp=") else []), *args)
    assert code == 2 and expected in error_line(err), err


NOBODY = "postgresql://nobody@127.0.0.1:9/none"  # nothing listens on port 9


def test_a_postgresql_storage_without_its_driver_says_how_to_install_it(contest: Path, capsys,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh clone has no psycopg (requirements-extra.txt): importing it fails there, as it does here with the
    import blocked (None in sys.modules makes `import psycopg` raise ImportError)."""
    for driver in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, driver, None)
    code, _, err = cli(capsys, tune, "exp=t", f"storage={NOBODY}")
    assert code == 2 and error_line(err) == (f"error: storage={NOBODY}: the database driver is not installed "
                                             "(psycopg); for PostgreSQL: pip install 'psycopg[binary]'"), err


def test_a_postgresql_server_that_does_not_answer_is_one_line(contest: Path, capsys) -> None:
    require_extra("psycopg", what="the PostgreSQL driver (psycopg, which SQLAlchemy uses for postgresql:// URLs)")
    code, _, err = cli(capsys, tune, "exp=t", f"storage={NOBODY}")
    assert code == 2 and error_line(err).startswith(f"error: storage={NOBODY}: cannot open it ("), err


@pytest.mark.parametrize("space, args, blamed, expected", [
    ({"frontend.n_mels": {"choices": [0, 32]}}, [], "file",
     "'tune.space.frontend.n_mels' value 0 makes an invalid config: 'frontend.n_mels' must be positive, got 0"),
    ({"model.name": {"choices": ["resnet10t", "resnet_tiny"]}}, ["tune.pruner=median"], "file",
     "'tune.space.model.name' value 'resnet_tiny' makes an invalid config: model.name 'resnet_tiny' is not a timm "
     "model"),
    ({}, ["tune.space.frontend.n_mels={choices: [0, 32]}"], "command line",  # a dotted space key, understood
     "'tune.space.frontend.n_mels' value 0 makes an invalid config: 'frontend.n_mels' must be positive, got 0"),
    ({"train.lr": {"choices": [0.01]}}, ["tune.space.train.lr.choices=[0.01,-1.0]"], "command line",
     "'tune.space.train.lr' value -1.0 makes an invalid config: 'train.lr' must be positive, got -1.0"),
])
def test_a_bad_searched_value_is_blamed_where_it_was_set(contest: Path, capsys, space: dict, args: list[str],
                                                          blamed: str, expected: str) -> None:
    folder = write_tones_experiment(contest, "bad", **QUICK, tune={"space": space})
    code, _, err = cli(capsys, tune, "exp=bad", "n_trials=1", *args)
    where = "command line" if blamed == "command line" else str((folder / "config.yaml").resolve())
    assert code == 2 and error_line(err).startswith(f"error: {where}: {expected}"), err


@pytest.mark.parametrize("args, expected", [
    (["tune.space={}"], "command line: tune.space={} leaves no key to search; leave it out to search the config's "
                        "tune.space, or name keys, e.g. 'tune.space.train.lr={low: 1.0e-4, high: 3.0e-3, log: true}'"),
    (["tune.pruner=wilcoxon"], "command line: 'tune.pruner' is wilcoxon, which compares trials fold by fold, but "
                               "tune.folds has one fold (0), so it could never prune; use tune.pruner=median (or "
                               "auto), or score trials on several folds, e.g. tune.folds=[0,1,2]"),
])
def test_a_search_that_could_not_do_what_it_says_is_refused(contest: Path, capsys, args: list[str],
                                                            expected: str) -> None:
    """tune.space={} was ignored (the file's space searched, then reported as tuned); wilcoxon on one fold never
    prunes. Either ran a whole study; one epoch and one trial keep that short where it still does."""
    code, _, err = cli(capsys, tune, "exp=t", "n_trials=1", "device=cpu", "train.epochs=1", *args)
    assert code == 2 and error_line(err) == f"error: {expected}", err
    assert not (contest / "experiments" / "t" / "tune").exists()


def finished_study(lr: float) -> optuna.Study:
    """An in-memory study with one complete trial of train.lr=lr: what report() sees at the end of a real one."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"train.lr": lr}, value=0.9,
        distributions={"train.lr": optuna.distributions.CategoricalDistribution(SPACE["train.lr"]["choices"])}))
    return study


def test_each_study_writes_its_own_tuned_experiment(contest: Path, capsys) -> None:
    """A second study (study=s2) replaced experiments/t_tuned/config.yaml, the first study's result, without a word."""
    exp = load_experiment("t")
    for name, lr in (("t", 0.015), ("s2", 0.03)):  # the default study is named after the experiment
        tune.report(exp, finished_study(lr), name, contest / "experiments" / "t" / "tune" / name, "memory")
    out = capsys.readouterr().out
    assert "wrote experiments/t_tuned/config.yaml (study t's best values)" in out
    assert "wrote experiments/t_s2_tuned/config.yaml (study s2's best values)" in out
    assert "python -m competition.run exp=t_s2_tuned fold=all" in out
    for tuned, lr in (("t_tuned", 0.015), ("t_s2_tuned", 0.03)):
        body = yaml.safe_load((contest / "experiments" / tuned / "config.yaml").read_text())
        assert body == {"base": "../t/config.yaml", "train": {"lr": lr}}
        assert load_experiment(tuned).cfg.train.lr == lr
    other = contest / "experiments" / "t_s3_tuned" / "config.yaml"  # experiment t_s3's own default study wrote it
    other.parent.mkdir()
    other.write_text("# t_s3 tuned by competition.tune: study t_s3, trial 4, validation accuracy 0.5000 on folds 0\n")
    with pytest.raises(UserError, match=r"t_s3_tuned/config\.yaml holds another result \(t_s3 tuned by competition\.tune"
                                        r": study t_s3, trial 4, .*\), which is kept; give this study another name"):
        tune.report(exp, finished_study(0.03), "s3", contest / "experiments" / "t" / "tune" / "s3", "memory")
    assert other.read_text().startswith("# t_s3 tuned")


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
