"""Tune an experiment with Optuna: search the keys its `tune.space` names, prune hopeless trials, hand back a config.

    python -m competition.tune exp=default [n_trials=20] [timeout=2h] [study=<name>] [storage=<file or URL>]
                               [gpus=0,1,2,3 | workers=N] [device=cpu|cuda|auto] [train.epochs=8 ...]

A trial is the experiment's config with the trial's values of the searched keys (and the command line's overrides),
trained on the folds `tune.folds` names; its value is their mean validation metric, in the metric's direction. Every
trial reads the same fold file and the same waveform cache, decoded once before any trial starts. A trial's folds live
under `experiments/<exp>/tune/<study>/trial_<n>/`, apart from the experiment's own; pruned trials leave nothing there,
and only the best `tune.keep_best` trials keep their model checkpoints.

Pruning (`tune.pruner`): with one fold, each epoch's validation metric goes to a MedianPruner (or Hyperband); with
several, each fold's score goes to a WilcoxonPruner, so a trial is compared with others on the same folds only.

The study is kept in a storage: by default the journal file `experiments/<exp>/tune/optuna.journal`, which several
processes may share; any Optuna storage URL otherwise (postgresql://user@host/db for workers on several machines).
gpus= or workers= start that many worker processes on one study (logs in the study folder), and the same command
started on other machines joins it. All of them together stop at exactly n_trials finished (complete or pruned)
trials. Running the command again resumes the study. A trial whose worker died, or that was stopped by Ctrl-C, is
marked failed and tried again with the same values, continuing from its last finished epoch.

At the end: the best values as `experiments/<exp>_tuned/config.yaml` (its base is the experiment; it holds only the
tuned keys), ready for `python -m competition.run exp=<exp>_tuned fold=all`; a study other than the default one (which
is named after the experiment) writes `experiments/<exp>_<study>_tuned/`, so two studies never replace each other's
result. Also trials.csv and a table of the best trials; history.png, importances.png and slice.png in the study
folder. Watch a study live with `optuna-dashboard experiments/<exp>/tune/optuna.journal` (pip install
optuna-dashboard).
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import optuna
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from competition.cli import format_seconds, main_guard
from competition.config import (Experiment, command_line_keys, find_experiment, load_config, load_experiment,
                                parse_cli, set_by)
from competition.errors import UserError
from competition.files import atomic_write, atomic_write_text
from competition.foldrun import DONE, Inputs, can_resume, differences, is_finished, staleness
from competition.metrics import METRICS
from competition.queue import GRACE_SECONDS, Slot, Stopper, job_env, local_slots
from competition.tracking import FoldMirror, Runs, decide, mirror_study
from competition.observe import FoldObserver

if TYPE_CHECKING:
    from competition.train import DataSet

COMMAND_KEYS = {"exp": "default", "n_trials": "20", "timeout": "", "study": "", "storage": "", "gpus": "",
                "workers": "", "device": "auto"}
WORKER_ENV = "COMPETITION_TUNE_WORKER"  # set for the worker processes that gpus=/workers= start
JOURNAL = "optuna.journal"
TUNED_SUFFIX = "_tuned"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what n_trials counts
UNDER_WAY = (TrialState.RUNNING, TrialState.WAITING)
STARTING_SECONDS = 60.0  # a RUNNING trial that names no worker this long after it started lost its worker
FAILURES_IN_A_ROW = 3  # a worker stops after this many failed trials in a row: the cause is not the trial's values
TOP_TRIALS = 10
POLL_SECONDS = 1.0

# Pruners by name (tune.pruner); "auto" is median on one fold and wilcoxon on several. Per-epoch pruners see each
# epoch's validation metric at step (fold position x epochs + epoch); wilcoxon sees each fold's score at its position.
PRUNERS: dict[str, Callable[[DictConfig], optuna.pruners.BasePruner]] = {
    "median": lambda cfg: optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.startup_trials,
                                                      n_warmup_steps=cfg.tune.warmup_epochs + 1),  # steps from 1
    "hyperband": lambda cfg: optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.tune.warmup_epochs),
                                                            max_resource=cfg.train.epochs * len(cfg.tune.folds)),
    "wilcoxon": lambda cfg: optuna.pruners.WilcoxonPruner(n_startup_steps=2),
    "none": lambda cfg: optuna.pruners.NopPruner(),
}
PER_FOLD_PRUNERS = ("wilcoxon",)
# multivariate TPE, the Wilcoxon pruner and the retry helpers are marked experimental by Optuna; they are used on purpose
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Surplus(Exception):
    """A trial asked for after n_trials were already under way in other workers (a race between workers that
    finish at the same moment): it is not run, and is recorded as failed with user attribute `surplus`."""


class TrialFailed(Exception):
    """A trial whose own values made training fail (diverged, an impossible combination): recorded as failed with its
    reason as user attribute `error`, and the study goes on."""


def pruner_name(cfg: DictConfig) -> str:
    if cfg.tune.pruner != "auto":
        return cfg.tune.pruner
    return "wilcoxon" if len(cfg.tune.folds) > 1 else "median"


# --- the search space -------------------------------------------------------------------------------------------------

def search_space(exp: Experiment) -> dict[str, dict]:
    space = OmegaConf.to_container(exp.cfg.tune.space)
    if not space and "tune.space" in command_line_keys(exp.overrides):  # it replaced the config's space
        raise UserError("command line: tune.space={} leaves no key to search; leave it out to search the config's "
                        "tune.space, or name keys, e.g. 'tune.space.train.lr={low: 1.0e-4, high: 3.0e-3, log: true}'")
    if not space:
        raise UserError(f"{exp.dir / 'config.yaml'} has no tune.space to search; add e.g.\n  tune:\n    space:\n"
                        "      frontend.n_mels: {choices: [64, 128, 224]}\n"
                        "      train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}")
    return space


def suggest(trial: optuna.Trial, space: dict[str, dict], cfg: DictConfig) -> dict[str, Any]:
    """The trial's value of every searched key; a range is sampled as an int when the key is an int in the schema."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif isinstance(OmegaConf.select(cfg, key), int) and not isinstance(OmegaConf.select(cfg, key), bool):
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1),
                                            log=bool(spec.get("log")))
        else:
            values[key] = tidy(trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                                   log=bool(spec.get("log"))))
    return values


def tidy(value: Any) -> Any:
    """A float as people write it: a stepped range gives 0.6000000000000001 for 0.6."""
    return float(f"{value:.12g}") if isinstance(value, float) else value


def in_space(value: Any, spec: dict) -> bool:
    """Whether a value is one the space can sample (so the experiment's own values can be its first trial)."""
    if "choices" in spec:
        return value in spec["choices"]
    if not isinstance(value, (int, float)) or not spec["low"] <= value <= spec["high"]:
        return False
    steps = (value - spec["low"]) / spec["step"] if spec.get("step") else 0.0
    return abs(steps - round(steps)) < 1e-9


def as_overrides(values: dict[str, Any]) -> list[str]:
    """Command-line overrides (JSON values are YAML, which the override parser reads) for a trial's values."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def check_space_values(config_file: Path, overrides: list[str], space: dict[str, dict]) -> None:
    """Every choice and both ends of every range make a valid config, and every backbone named exists: checked before
    any trial runs, so a bad value fails now, with its key and the file (or command line) that set it, not hours
    later. A trial's values are applied as overrides, so the loader's 'command line' is not where this one came from."""
    for key, spec in space.items():
        for value in spec.get("choices") or [spec["low"], spec["high"]]:
            try:
                cfg = load_config(config_file, [*overrides, *as_overrides({key: value})])
                if key == "model.name":
                    from competition.models import check_backbone  # timm: only for a searched backbone

                    check_backbone(cfg.model.name)
            except UserError as exc:
                raise UserError(f"{set_by(config_file, overrides, 'tune', 'space', key)}: 'tune.space.{key}' value "
                                f"{value!r} makes an invalid config: {str(exc).removeprefix('command line: ')}") from None


# --- storage and study ------------------------------------------------------------------------------------------------

def default_storage(exp: Experiment) -> str:
    return str(exp.dir / "tune" / JOURNAL)


def open_storage(storage: str, cfg: DictConfig) -> optuna.storages.BaseStorage:
    """A URL opens Optuna's database storage with heartbeats (a trial whose worker stops beating is failed and
    retried); anything else is a journal file, which processes on one machine share without SQLite's locking errors."""
    if "://" in storage:
        kwargs = {"connect_args": {"connect_timeout": 10}} if storage.startswith("postgresql") else {}
        try:
            return optuna.storages.RDBStorage(
                storage, engine_kwargs=kwargs, heartbeat_interval=cfg.tune.heartbeat,
                grace_period=2 * cfg.tune.heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=cfg.tune.retries))
        except ImportError as exc:
            missing = getattr(exc.__cause__, "name", None) or "its driver"
            raise UserError(f"storage={storage}: the database driver is not installed ({missing}); for PostgreSQL: "
                            "pip install 'psycopg[binary]'") from None
        except Exception as exc:  # sqlalchemy's errors: a bad URL, a server that does not answer, bad credentials
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"storage={storage}: cannot open it ({detail})") from None
    path = Path(storage)
    if path.is_dir():
        raise UserError(f"storage={storage} is a folder; give a journal file (e.g. {path / JOURNAL}) or a database URL")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
    except OSError as exc:
        raise UserError(f"storage={storage}: cannot open it ({exc.strerror or exc})") from None
    return optuna.storages.JournalStorage(backend)


def study_record(exp: Experiment, data: DataSet, space: dict[str, dict]) -> dict:
    """What a study's trials are comparable on: the search space, the metric, the folds, and the inputs every trial
    shares (the config outside the searched keys, the fold file, the training clips)."""
    node = OmegaConf.create(OmegaConf.to_container(exp.cfg))
    for key in space:  # the base value of a searched key is never used by a trial
        OmegaConf.update(node, key, None)
    config = OmegaConf.to_container(node)
    return {"experiment": exp.name, "space": space, "metric": exp.cfg.train.metric, "folds": list(exp.cfg.tune.folds),
            "inputs": asdict(replace(data.inputs, config=config, test_data=None))}


def open_study(storage: optuna.storages.BaseStorage, name: str, where: str, exp: Experiment, data: DataSet,
               space: dict[str, dict], sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create the study, or load it and check that it searched the same space, in the same direction, on the same
    inputs: trials made from other ones are not comparable, so such a study is refused, saying what changed."""
    metric = METRICS[exp.cfg.train.metric]
    direction = "maximize" if metric.greater_is_better else "minimize"
    sampler = sampler or optuna.samplers.TPESampler(n_startup_trials=exp.cfg.tune.startup_trials, multivariate=True,
                                                    constant_liar=True)
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                pruner=PRUNERS[pruner_name(exp.cfg)](exp.cfg), load_if_exists=True)
    wanted = study_record(exp, data, space)
    recorded = study.user_attrs.get("made_from")
    again = f"give study=<another name> for a new study, or put the settings back to resume study '{name}'"
    if recorded is None:
        if study.trials:
            raise UserError(f"study '{name}' in {where} was not made by competition.tune ({len(study.trials)} trials); "
                            "give study=<another name>")
        study.set_user_attr("made_from", wanted)
        with warnings.catch_warnings():  # experimental in Optuna 3.x, stable since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric.name])  # dashboards label the objective axis with it, not "Objective 0"
        baseline = {key: OmegaConf.select(exp.cfg, key) for key in space}
        if all(in_space(value, space[key]) for key, value in baseline.items()):
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
            print("trial 0 is the experiment's own values (the baseline the others must beat)", flush=True)
        return study
    if study.direction.name.lower() != direction or recorded["metric"] != wanted["metric"]:
        raise UserError(f"study '{name}' in {where} optimised {recorded['metric']} ({study.direction.name.lower()}), "
                        f"not {wanted['metric']} ({direction}); {again}")
    if recorded["space"] != wanted["space"]:
        raise UserError(f"study '{name}' in {where} searched another space ({json.dumps(recorded['space'])}); {again}")
    if recorded["folds"] != wanted["folds"]:
        raise UserError(f"study '{name}' in {where} scored trials on folds {recorded['folds']}, not "
                        f"{wanted['folds']}; {again}")
    changed = differences(Inputs(**recorded["inputs"]), Inputs(**wanted["inputs"])).model
    if changed:
        raise UserError(f"study '{name}' in {where} has trials made from other inputs: {'; '.join(changed)}; {again}")
    return study


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Serialises, among this machine's workers, the look at the study that decides which trials lost their worker."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".study.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / f"trial_{number:04d}"


def worker_alive(worker: dict | None, started: float) -> bool:
    """Whether the worker running a trial still lives: a process on this machine is looked up by its pid; a worker
    elsewhere is trusted (database storages fail its trials when its heartbeat stops); a trial that names no worker
    lost it if it has not named one within STARTING_SECONDS."""
    if worker is None:
        return time.time() - started < STARTING_SECONDS
    if worker["host"] != socket.gethostname():
        return True
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def retry_failed(study: optuna.Study, study_dir: Path, retries: int) -> None:
    """Fail the RUNNING trials whose worker is gone, and queue every trial that failed so, or was stopped by Ctrl-C,
    once more with the same values (Optuna's RetryHeartbeatStaleTrialCallback); the retry takes over the trial's
    folder and resumes its fold. Database storages also fail trials whose heartbeat stopped, on any machine, and
    retry them the same way."""
    with study_lock(study_dir):
        trials = study.get_trials(deepcopy=False)
        retried = {number for t in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(t)}
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
                if worker_alive(trial.user_attrs.get("worker"), started):
                    continue
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                stopped = "its worker is gone"
            elif trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
                stopped = "it was interrupted"
            else:
                continue
            if trial.number not in retried:
                RetryHeartbeatStaleTrialCallback(max_retry=retries)(study, study.trials[trial.number])
                print(f"trial {trial.number}: {stopped}; queued again with the same values", flush=True)


# --- a trial ----------------------------------------------------------------------------------------------------------

class PruningReporter(FoldObserver):
    """Reports each epoch's validation metric of one fold to the trial, at a step unique to (fold, epoch), and stops
    the fold when the pruner says the trial is hopeless."""

    def __init__(self, trial: optuna.Trial, key: str, first_step: int) -> None:
        self.trial, self.key, self.first_step = trial, key, first_step

    def epoch(self, row: dict) -> None:
        self.trial.report(row[self.key], self.first_step + row["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} ({self.key} {row[self.key]:.4f})")


@dataclass
class Objective:
    """Train a trial's folds and return their mean validation metric; `study.optimize` calls it once per trial."""

    exp: Experiment
    spec: str  # exp= as given: the trial's config is loaded from the same file
    overrides: list[str]  # the command line's, applied to every trial
    data: DataSet
    space: dict[str, dict]
    study_dir: Path
    device: str
    n_trials: int

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        counted = [t for t in trial.study.get_trials(deepcopy=False, states=COUNTED + UNDER_WAY)
                   if t.number < trial.number]
        if len(counted) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"{self.n_trials} trials were already under way")
        folder = trial_dir(self.study_dir, trial.number)
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial.study.get_trials(deepcopy=False)[trial.number])
        if history and trial_dir(self.study_dir, history[-1]).is_dir() and not folder.exists():
            trial_dir(self.study_dir, history[-1]).rename(folder)  # the retry continues where the failed try stopped
        folder.mkdir(parents=True, exist_ok=True)
        values = suggest(trial, self.space, self.exp.cfg)
        print(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items())
              + (f" (retry of trial {history[-1]})" if history else ""), flush=True)
        try:
            return self._train(trial, values, folder)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("pruned", str(exc))
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except UserError as exc:
            trial.set_user_attr("error", str(exc))
            raise TrialFailed(str(exc)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    def _train(self, trial: optuna.Trial, values: dict[str, Any], folder: Path) -> float:
        overrides = [*self.overrides, *as_overrides(values)]
        cfg = load_config(find_experiment(self.spec), overrides)
        exp = Experiment(f"{self.exp.name} trial {trial.number}", folder, cfg, overrides)
        data = replace(self.data, inputs=replace(self.data.inputs, config=OmegaConf.to_container(cfg),
                                                 overrides=overrides))
        study = self.study_dir.name
        runs = Runs(cfg, f"{self.exp.name}/{study}/trial_{trial.number}", f"{self.exp.name}/tune/{study}", "trial",
                    {**OmegaConf.to_container(cfg), "trial": {"number": trial.number, "params": values}})
        try:
            value = self._train_folds(trial, exp, data, runs)
        except optuna.TrialPruned:
            runs.summary({"state": "pruned"})
            runs.finish()
            raise
        except BaseException:
            runs.finish(failed=True)
            raise
        runs.summary({"state": "complete", "value": value})
        runs.finish()
        return value

    def _train_folds(self, trial: optuna.Trial, exp: Experiment, data: DataSet, runs: Runs) -> float:
        cfg = exp.cfg
        metric = cfg.train.metric
        per_fold = pruner_name(cfg) in PER_FOLD_PRUNERS
        scores = []
        for position, fold in enumerate(cfg.tune.folds):
            fold_dir = exp.fold_dir(fold)
            if is_finished(fold_dir) and not staleness(fold_dir, data.inputs):  # finished before a failed try died
                summary = json.loads((fold_dir / DONE).read_text())
            else:
                first_step = position * cfg.train.epochs
                observers: list[FoldObserver] = [
                    FoldMirror(runs, fold_dir, cfg.tracking.wandb.images, first_step,
                               f"fold_{fold}/" if len(cfg.tune.folds) > 1 else "")]
                if not per_fold:
                    observers.append(PruningReporter(trial, f"val_{metric}", first_step))
                from competition.train import train_fold

                summary = train_fold(exp, fold, self.device, overwrite=is_finished(fold_dir),
                                     resume=can_resume(fold_dir), data=data, observers=observers)
            scores.append(summary[f"val_{metric}"])
            if per_fold:
                trial.report(scores[-1], position)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after fold {fold} ({metric} {scores[-1]:.4f})")
        return float(sum(scores) / len(scores))


def keep_best_checkpoints(study: optuna.Study, study_dir: Path, keep: int) -> None:
    """Delete the model checkpoints of every finished trial outside the best `keep`, so a long study fits on disk."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranked = sorted(complete, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
    for trial in ranked[keep:]:
        for checkpoint in trial_dir(study_dir, trial.number).glob("fold_*/model.pt"):
            checkpoint.unlink(missing_ok=True)


def counts(study: optuna.Study) -> dict[str, int]:
    found = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        found[trial.state] += 1
    return {"finished": found[TrialState.COMPLETE] + found[TrialState.PRUNED], "pruned": found[TrialState.PRUNED],
            "running": found[TrialState.RUNNING], "failed": found[TrialState.FAIL]}


def best_line(study: optuna.Study, metric: str) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "no trial complete yet"
    return f"best {metric} {best.value:.4f} (trial {best.number})"


def study_state(study: optuna.Study, n_trials: int, metric: str) -> str:
    c = counts(study)
    return (f"trials: {c['finished']}/{n_trials} finished ({c['pruned']} pruned), {c['running']} running"
            + (f", {c['failed']} failed" if c["failed"] else "") + f" | {best_line(study, metric)}")


def progress_line(study: optuna.Study, n_trials: int, metric: str, started: float) -> str:
    return f"{study_state(study, n_trials, metric)} | {format_seconds(time.time() - started)}"


def run_worker(study: optuna.Study, objective: Objective, n_trials: int, timeout: float | None) -> None:
    """Run trials in this process until the study has n_trials finished ones (complete or pruned, counting those under
    way in other workers: Optuna's MaxTrialsCallback), the time is up, or too many trials fail in a row."""
    metric = objective.exp.cfg.train.metric
    started = time.time()
    failures: list[str] = []

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        retry_failed(study, objective.study_dir, objective.exp.cfg.tune.retries)  # a worker beside us may have died
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            failures.append(trial.user_attrs.get("error", "failed"))
            print(f"trial {trial.number}: failed: {failures[-1]}", file=sys.stderr, flush=True)
            if len(failures) >= FAILURES_IN_A_ROW:
                study.stop()
            return
        failures.clear()
        if trial.state == TrialState.PRUNED:
            print(f"trial {trial.number}: {trial.user_attrs.get('pruned', 'pruned')}", flush=True)
        elif trial.state == TrialState.COMPLETE:
            print(f"trial {trial.number}: {metric} {trial.value:.4f}", flush=True)
        keep_best_checkpoints(study, objective.study_dir, objective.exp.cfg.tune.keep_best)
        print(progress_line(study, n_trials, metric, started), flush=True)

    now = counts(study)
    if now["finished"] + now["running"] >= n_trials:
        return
    study.optimize(objective, timeout=timeout, gc_after_trial=True, catch=(Surplus, TrialFailed),
                   callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=COUNTED + UNDER_WAY), after_trial])
    if len(failures) >= FAILURES_IN_A_ROW:
        raise UserError(f"{len(failures)} trials failed in a row, the last with: {failures[-1]}")


# --- several workers --------------------------------------------------------------------------------------------------

def run_workers(slots: list[Slot], args: list[str], study: optuna.Study, study_dir: Path, n_trials: int,
                metric: str) -> None:
    """One `python -m competition.tune` worker process per slot on the same study, each logging to the study folder;
    a line whenever the study's progress changes; Ctrl-C stops them all (their trials are retried on resume)."""
    processes: dict[int, tuple[subprocess.Popen, Path]] = {}
    for slot in slots:
        log = study_dir / f"worker_{slot.index}.log"
        with open(log, "ab") as handle:
            handle.write(f"==== {socket.gethostname()} {slot.label}: competition.tune {' '.join(args)}\n".encode())
            processes[slot.index] = (subprocess.Popen(
                [sys.executable, "-m", "competition.tune", *args, f"device={slot.device}"], cwd=os.getcwd(),
                env={**job_env(slot.env), WORKER_ENV: "1"}, stdin=subprocess.DEVNULL, stdout=handle,
                stderr=subprocess.STDOUT, start_new_session=True), log)
        print(f"{slot.label}: log {log}", flush=True)

    def forward(number: int) -> None:
        for process, _ in processes.values():
            try:
                os.killpg(process.pid, number)
            except ProcessLookupError:
                pass

    started, shown, failed = time.time(), "", []
    with Stopper(forward) as stopper:
        while processes:
            for index, (process, log) in list(processes.items()):
                if process.poll() is not None:
                    del processes[index]
                    if process.returncode != 0 and stopper.signal is None:
                        failed.append(f"worker {index} exited with {process.returncode}: {last_error(log)} (log {log})")
            line = study_state(study, n_trials, metric)  # printed when the study changes, not every second
            if line != shown:
                print(f"{line} | {format_seconds(time.time() - started)}", flush=True)
                shown = line
            if stopper.overdue():
                print(f"workers still running {GRACE_SECONDS:.0f}s after the signal: killing them", file=sys.stderr)
                stopper.kill_now()
            if processes:
                time.sleep(POLL_SECONDS)
    if stopper.signal is not None:
        raise KeyboardInterrupt
    if failed:
        raise UserError("; ".join(failed))


def last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(empty log)"])[-1]


# --- results ----------------------------------------------------------------------------------------------------------

def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial, best first: number, state, value, the searched values, duration and why it failed, if it did."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    frame = frame.drop(columns=[c for c in frame.columns if c in ("user_attrs_worker", "user_attrs_interrupted")])
    frame.columns = [c.removeprefix("params_").removeprefix("user_attrs_") for c in frame.columns]
    frame = frame.rename(columns={f"value_{name}": "value" for name in study.metric_names or []})  # named metric
    if "duration" in frame:
        frame["seconds"] = frame.pop("duration").dt.total_seconds().round(1)
    frame["rank"] = frame["state"].map({"COMPLETE": 0, "PRUNED": 1}).fillna(2)  # a pruned trial's value is partial
    ascending = study.direction.name != "MAXIMIZE"
    frame = frame.sort_values(["rank", "value", "number"], ascending=[True, ascending, True], na_position="last")
    return frame.drop(columns="rank")


def save_plots(study: optuna.Study, study_dir: Path) -> list[str]:
    """history.png, importances.png (which keys mattered, fANOVA) and slice.png; each needs enough finished trials,
    and what cannot be drawn yet is named instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    written = []
    for name, draw in (("history", plots.plot_optimization_history), ("importances", plots.plot_param_importances),
                       ("slice", plots.plot_slice)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's experimental marks and matplotlib's layout notes
                drawn = draw(study, target_name=(study.metric_names or ["Objective Value"])[0])
                figure = (drawn.flat[0] if hasattr(drawn, "flat") else drawn).figure
                figure.set_size_inches(max(figure.get_size_inches()[0], 8), 4.5)
                figure.tight_layout()
            atomic_write(study_dir / f"{name}.png", lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
            written.append(f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            print(f"{name}.png not drawn: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                  file=sys.stderr)
        finally:
            plt.close("all")
    return written


def tuned_name(experiment: str, study: str) -> str:
    """The tuned experiment of a study: <exp>_tuned for the default study (named after the experiment), else
    <exp>_<study>_tuned, so a second study never replaces the first one's result."""
    return f"{experiment}{TUNED_SUFFIX}" if study == experiment else f"{experiment}_{study}{TUNED_SUFFIX}"


def write_tuned(exp: Experiment, study: optuna.Study, name: str) -> Path:
    """experiments/<tuned_name>/config.yaml: the experiment as its base plus the best trial's values, nothing else.
    A file there written for another experiment or study (exp a study b and exp a_b share a name) is kept."""
    best = study.best_trial
    folder = exp.dir.parent / tuned_name(exp.name, name)
    path = folder / "config.yaml"
    mine = f"# {exp.name} tuned by competition.tune: study {name}, "
    if path.is_file() and not path.read_text().startswith(mine):
        first = path.read_text().partition("\n")[0].removeprefix("# ")
        raise UserError(f"{path} holds another result ({first or 'not written by competition.tune'}), which is kept; "
                        "give this study another name with study=, or move that folder away")
    tuned = OmegaConf.create()
    for key, value in best.params.items():
        OmegaConf.update(tuned, key, tidy(value))
    metric = exp.cfg.train.metric
    header = (f"{mine}trial {best.number}, validation {metric} {best.value:.4f} on folds "
              f"{','.join(map(str, exp.cfg.tune.folds))}\n")
    body = {"base": os.path.relpath(exp.dir / "config.yaml", folder), **OmegaConf.to_container(tuned)}
    text = header + yaml.safe_dump(body, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    load_experiment(str(folder))  # the file it wrote must load, so the run it suggests works
    return path


def report(exp: Experiment, study: optuna.Study, name: str, study_dir: Path, storage: str) -> None:
    metric = exp.cfg.train.metric
    keep_best_checkpoints(study, study_dir, exp.cfg.tune.keep_best)  # workers prune too; this sees every trial
    table = trials_table(study)
    atomic_write(study_dir / "trials.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    finished = table[table["state"].isin(["COMPLETE", "PRUNED"])]
    print(f"\nstudy {name}: {len(finished)} trials finished ({(finished['state'] == 'PRUNED').sum()} pruned); "
          f"the best {min(TOP_TRIALS, len(finished))}:")
    shown = finished.head(TOP_TRIALS).drop(columns=[c for c in ("error", "surplus", "pruned") if c in finished])
    print(shown.rename(columns={"value": metric}).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    plots = save_plots(study, study_dir)
    print(f"trials.csv{', ' + ', '.join(plots) if plots else ''} in {study_dir}")
    if not (table["state"] == "COMPLETE").any():
        raise UserError(f"study {name} has no complete trial yet, so nothing is tuned; run more trials")
    path = write_tuned(exp, study, name)
    mirror_study(exp.cfg, exp.name, name, study_dir, {"best_trial": study.best_trial.number,
                                                      f"best_{metric}": study.best_value, **study.best_params})
    tuned = path.parent.name
    print(f"{best_line(study, metric)}: wrote {path} (study {name}'s best values)\n"
          f"train it: python -m competition.run exp={tuned} fold=all\nwatch the study: optuna-dashboard {storage}")
    untuned = [o for o in exp.overrides if not o.startswith("tune.")]  # how to search, not what is trained
    if untuned:
        print(f"note: the trials ran with {' '.join(untuned)}, which {path} does not hold; add them there or "
              "to the run command if they belong to the result")


# --- the command ------------------------------------------------------------------------------------------------------

def parse_duration(value: str) -> float | None:
    """timeout=2h, 90m, 45s, 1h30m or plain seconds; empty means no limit."""
    if not value:
        return None
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for char in value.strip().lower():
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total, number = total + float(number) * units[char], ""
        else:
            number = "bad"
            break
    if number == "bad" or (number and total) or not (number or total):
        raise UserError(f"timeout={value}: expected a duration such as 2h, 90m, 1h30m or 600 (seconds)")
    total += float(number) if number else 0.0
    if total <= 0:
        raise UserError(f"timeout={value}: must be longer than zero")
    return total


def parse_trials(value: str) -> int:
    try:
        n_trials = int(value)
    except ValueError:
        n_trials = 0
    if n_trials < 1:
        raise UserError(f"n_trials={value}: a study needs at least one trial; give a positive whole number (it counts "
                        "finished trials, those of earlier runs of the study too)")
    return n_trials


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    n_trials = parse_trials(options["n_trials"])
    timeout = parse_duration(options["timeout"])
    gpus, workers = options["gpus"].strip(), options["workers"].strip()
    if gpus and workers:
        raise UserError(f"gpus={gpus} together with workers={workers}: gpus= starts one worker per entry, workers= "
                        "that many CPU workers; choose one")
    worker = bool(os.environ.get(WORKER_ENV))
    slots = local_slots(gpus, workers, options["device"]) if (gpus or workers) and not worker else []
    exp = load_experiment(options["exp"], overrides)
    name = options["study"] or exp.name
    if "/" in name or name.startswith("."):
        raise UserError(f"study={name}: give the study a plain name (it names a folder and the tuned experiment)")
    space = search_space(exp)
    check_space_values(find_experiment(options["exp"]), overrides, space)
    # The arguments are checked: the work starts, and with it the imports of torch, timm and librosa.
    from competition.models import check_backbone
    from competition.train import load_data

    if "model.name" not in space:  # else each searched backbone was checked with the space
        check_backbone(exp.cfg.model.name)
    storage = options["storage"] or default_storage(exp)
    opened = open_storage(storage, exp.cfg)
    study_dir = exp.dir / "tune" / name
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is reported in our own words
    decide(exp.cfg)  # W&B online or offline, once for every trial and worker
    data = load_data(exp)  # decoded and checked once, before any worker starts
    study = open_study(opened, name, storage, exp, data, space)
    retry_failed(study, study_dir, exp.cfg.tune.retries)
    print(f"study {name} ({storage}): {progress_line(study, n_trials, exp.cfg.train.metric, time.time())}; "
          f"trials in {study_dir}", flush=True)
    try:
        if slots:
            args = [f"exp={options['exp']}", f"n_trials={n_trials}", f"study={name}", f"storage={storage}",
                    *([f"timeout={timeout}"] if timeout else []), *overrides]
            run_workers(slots, args, study, study_dir, n_trials, exp.cfg.train.metric)
        else:
            run_worker(study, Objective(exp, options["exp"], overrides, data, space, study_dir, options["device"],
                                        n_trials), n_trials, timeout)
    except KeyboardInterrupt:
        if not worker:
            print(f"study {name} stopped; the same command resumes it (stopped trials are tried again)",
                  file=sys.stderr)
        raise
    if not worker:
        report(exp, study, name, study_dir, storage)


if __name__ == "__main__":
    main_guard(main)
