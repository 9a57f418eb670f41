"""Dashboards that mirror folds, tuning trials and blends: Weights & Biases, offline by default.

The project's own files (metrics.csv, DONE, trials.csv, the blend report) stay the source of truth; a tracker only
mirrors them. A fold's run is opened at the fold's start (never inside a timed epoch), any other run on its first
event, and every call into the tracker goes through `Run._safely`: a failure (the package missing, a bad key, an
unwritable folder) prints one warning line, turns the run off and lets the work go on. Offline runs are written under
`wandb/` in the project root, to be sent later with `wandb sync wandb/offline-run-*`. Whether online runs can reach
the W&B server is decided once per command, before any fold (`decide`): if the server does not answer within
PROBE_SECONDS, every run of the command and of the processes it starts is kept offline instead, with one warning.

Trackers are registered in TRACKERS by name, each reading its settings from `tracking.<name>` in the config.
"""
from __future__ import annotations

import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from competition.observe import FoldObserver

if TYPE_CHECKING:
    import torch

INIT_TIMEOUT = 60  # seconds wandb may take to start its local service before the run is given up
PROBE_SECONDS = 3.0  # seconds the W&B server may take to answer before a command's online runs are kept offline
UNREACHABLE_ENV = "COMPETITION_WANDB_UNREACHABLE"  # the server that did not answer: online runs go offline, here and
# in every process started from here (queue jobs, tune workers inherit the environment), which never ask again
_answered: set[str] = set()  # servers that answered this process


def wandb_mode(settings: DictConfig) -> str:
    """The mode W&B runs are asked for: `$WANDB_MODE` wins over tracking.wandb.mode; online becomes offline once the
    server was found unreachable in this command."""
    mode = os.environ.get("WANDB_MODE") or settings.mode
    return "offline" if mode == "online" and os.environ.get(UNREACHABLE_ENV) else mode


def unanswered(url: str, seconds: float) -> str:
    """Why `url` gave no HTTP answer within `seconds`, or "" if it answered (any status: a server that says 404 is
    there). Asked from a thread so that a hung name lookup or a server that never replies cannot stretch the wait."""
    outcome: list[str] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(url, timeout=seconds).close()
            outcome.append("")
        except urllib.error.HTTPError:
            outcome.append("")
        except Exception as exc:  # refused, unreachable, timed out, no such host; a TLS complaint is an answer
            reason = getattr(exc, "reason", exc)
            outcome.append("" if isinstance(reason, ssl.SSLError) else str(reason) or type(reason).__name__)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else f"no answer within {seconds:g} s"


def decide(*cfgs: DictConfig) -> None:
    """Before any fold of a command: when a run is to be online, check once that the W&B server answers, else keep
    this command's runs offline with one warning (wandb would otherwise wait up to INIT_TIMEOUT in every run). The
    decision is kept in the environment, so queue jobs and tune workers started from here inherit it."""
    if os.environ.get(UNREACHABLE_ENV) or all(wandb_mode(cfg.tracking.wandb) != "online" for cfg in cfgs):
        return
    try:
        import wandb
    except ImportError:
        return  # each run says so, and the work goes on
    url = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url  # the version's own default server
    if url in _answered:
        return
    problem = unanswered(url, PROBE_SECONDS)
    if not problem:
        _answered.add(url)
        return
    os.environ[UNREACHABLE_ENV] = url
    print(f"warning: W&B server {url} did not answer ({problem}): this command's runs are kept offline under wandb/; "
          "send them later with `wandb sync wandb/offline-run-*`", file=sys.stderr)


class Run:
    """One dashboard run; this base class records nothing (tracking disabled). Subclasses implement `_open`, `_log`,
    `_summary`, `_image`, `_images`, `_table`, `_confusion`, `_files` and `_finish`."""

    def __init__(self, name: str, group: str, job_type: str, config: dict, settings: DictConfig,
                 data_name: str) -> None:
        self.name, self.group, self.job_type, self.config, self.settings = name, group, job_type, config, settings
        self.data_name = data_name  # one dashboard project per data set: its folds, trials and blends together
        self.broken = False
        self.opened = False

    @property
    def enabled(self) -> bool:
        return False

    def _safely(self, action: Callable[[], None]) -> None:
        if self.broken or not self.enabled:
            return
        try:
            if not self.opened:
                self._open()
                self.opened = True
            action()
        except Exception as exc:  # a dashboard must never cost a fold: one line, then carry on without it
            self.broken = True
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"warning: {type(self).__name__} tracking off for {self.name}: {detail}", file=sys.stderr)

    def open(self) -> None:
        """Open the run now rather than on its first event (a fold's first event comes inside its first, timed,
        epoch, and opening may take seconds)."""
        self._safely(lambda: None)

    def log(self, row: dict, step: int) -> None:
        self._safely(lambda: self._log(row, step))

    def summary(self, values: dict) -> None:
        self._safely(lambda: self._summary(values))

    def image(self, key: str, path: Path, caption: str = "") -> None:
        if path.is_file():
            self._safely(lambda: self._image(key, path, caption))

    def images(self, key: str, arrays: list[np.ndarray], captions: list[str]) -> None:
        self._safely(lambda: self._images(key, arrays, captions))

    def table(self, key: str, frame: pd.DataFrame) -> None:
        self._safely(lambda: self._table(key, frame))

    def confusion(self, key: str, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> None:
        self._safely(lambda: self._confusion(key, y_true, y_pred, classes))

    def files(self, name: str, kind: str, paths: list[Path]) -> None:
        existing = [path for path in paths if path.is_file()]
        if existing:
            self._safely(lambda: self._files(name, kind, existing))

    def finish(self, failed: bool = False) -> None:
        if self.opened and not self.broken:
            self._safely(lambda: self._finish(failed))
        self.opened = False


class WandbRun(Run):
    """A W&B run: `tracking.wandb` says the mode, project, entity and tags; `$WANDB_MODE`, when set, wins."""

    @property
    def mode(self) -> str:
        return wandb_mode(self.settings)

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def _open(self) -> None:
        import wandb

        self.wandb = wandb
        project = self.settings.project or os.environ.get("WANDB_PROJECT") or self.data_name
        self.run = wandb.init(
            project=project or "competition", entity=self.settings.entity or None, group=self.group,
            job_type=self.job_type, name=self.name, tags=list(self.settings.tags) or None, config=self.config,
            dir=os.getcwd(), mode=self.mode, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, init_timeout=INIT_TIMEOUT))

    def _log(self, row: dict, step: int) -> None:
        self.run.log(row, step=step)

    def _summary(self, values: dict) -> None:
        self.run.summary.update(values)

    def _image(self, key: str, path: Path, caption: str) -> None:
        self.run.log({key: self.wandb.Image(str(path), caption=caption or None)})

    def _images(self, key: str, arrays: list[np.ndarray], captions: list[str]) -> None:
        self.run.log({key: [self.wandb.Image(a, caption=c) for a, c in zip(arrays, captions)]})

    def _table(self, key: str, frame: pd.DataFrame) -> None:
        self.run.log({key: self.wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))})

    def _confusion(self, key: str, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> None:
        self.run.log({key: self.wandb.plot.confusion_matrix(y_true=y_true.tolist(), preds=y_pred.tolist(),
                                                             class_names=classes, title=key)})

    def _files(self, name: str, kind: str, paths: list[Path]) -> None:
        artifact = self.wandb.Artifact(name, type=kind)
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def _finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


TRACKERS: dict[str, type[Run]] = {"wandb": WandbRun}


class Runs:
    """The same run on every configured tracker, in the project of cfg's data set whatever `config` it records."""

    def __init__(self, cfg: DictConfig, name: str, group: str, job_type: str, config: dict | None = None) -> None:
        decide(cfg)  # already decided by the command, unless it is used from elsewhere
        config = OmegaConf.to_container(cfg) if config is None else config
        self.runs = [tracker(name, group, job_type, config, cfg.tracking[key], cfg.data.name)
                     for key, tracker in TRACKERS.items()]

    def __getattr__(self, method: str) -> Callable[..., None]:
        def every(*args: Any, **kwargs: Any) -> None:
            for run in self.runs:
                getattr(run, method)(*args, **kwargs)
        return every


@contextmanager
def opened(runs: Runs) -> Iterator[Runs]:
    """Finish the runs when the block ends, marked failed if it raised (a fold that failed or was interrupted)."""
    try:
        yield runs
    except BaseException:
        runs.finish(failed=True)
        raise
    runs.finish()


# --- folds ------------------------------------------------------------------------------------------------------------

def spectrogram_image(x: torch.Tensor) -> np.ndarray:
    """A (mels, frames) log-mel as an 8-bit image, low frequencies at the bottom, scaled to its own range."""
    image = x.detach().float().cpu().numpy()
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
    return (255 * image[::-1]).astype(np.uint8)


class FoldMirror(FoldObserver):
    """Mirrors a fold to `runs`: each epoch's row (at `first_step` + epoch), a few augmented inputs, and at the end
    the DONE metrics as the summary, the curves, a confusion matrix of the OOF clips and the prediction files. The
    runs open when the fold starts: its first event comes inside the timed first epoch, and a refused fold (finished,
    stale, busy) leaves no run."""

    def __init__(self, runs: Runs, fold_dir: Path, images: int, first_step: int = 0, prefix: str = "") -> None:
        self.runs, self.fold_dir, self.images, self.first_step, self.prefix = runs, fold_dir, images, first_step, prefix
        self.shown = False

    def started(self) -> None:
        self.runs.open()

    def inputs(self, x: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> None:
        if self.shown or not self.images or x.dim() != 4:
            return
        self.shown = True
        count = min(self.images, len(x))
        self.runs.images(f"{self.prefix}augmented inputs", [spectrogram_image(x[i, 0]) for i in range(count)],
                         [classes[int(targets[i].argmax())] for i in range(count)])

    def epoch(self, row: dict) -> None:
        self.runs.log({f"{self.prefix}{key}": value for key, value in row.items()}, self.first_step + row["epoch"])

    def finished(self, summary: dict) -> None:
        self.runs.image(f"{self.prefix}curves", self.fold_dir / "curves.png")
        oof = self.fold_dir / "oof.csv"
        if oof.is_file() and summary.get("task", "single") == "single":  # a multi-label clip has no one true class
            classes = summary["classes"]
            first = (frame := pd.read_csv(oof))[frame["view"] == frame["view"].iloc[0]]
            self.runs.confusion(f"{self.prefix}OOF confusion", first["label"].astype(str).map(classes.index).to_numpy(),
                                first[classes].to_numpy().argmax(1), classes)
        self.runs.files(f"{self.fold_dir.parent.name}-{self.fold_dir.name}-predictions", "predictions",
                        [self.fold_dir / name for name in ("oof.csv", "holdout.csv", "test.csv", "metrics.csv")])
        # last: the best epoch's scores, not the last epoch's row, are what the summary must hold
        self.runs.summary({f"{self.prefix}{k}": v for k, v in summary.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})


@contextmanager
def fold_tracking(exp: Any, fold: int) -> Iterator[list[FoldObserver]]:
    """The observers that mirror one fold of an experiment: a run named `<exp>/fold_<k>`, grouped by experiment."""
    runs = Runs(exp.cfg, f"{exp.name}/fold_{fold}", exp.name, "fold")
    with opened(runs):
        yield [FoldMirror(runs, exp.fold_dir(fold), exp.cfg.tracking.wandb.images)]


# --- tuning and blending: mirrored from the files they write -----------------------------------------------------------

@contextmanager
def never_in_the_way(what: str) -> Iterator[None]:
    """Reading the files a mirror is made from may fail too (a report of another version): one line, and go on."""
    try:
        yield
    except Exception as exc:
        print(f"warning: tracking off for {what}: {type(exc).__name__}: {exc}", file=sys.stderr)


def mirror_study(cfg: DictConfig, exp_name: str, study: str, study_dir: Path, best: dict) -> None:
    """One run for a study: its trials table (trials.csv), the history, importance and slice plots, the best trial."""
    with never_in_the_way(f"{exp_name}/{study}"):
        _mirror_study(cfg, exp_name, study, study_dir, best)


def _mirror_study(cfg: DictConfig, exp_name: str, study: str, study_dir: Path, best: dict) -> None:
    runs = Runs(cfg, f"{exp_name}/{study}", f"{exp_name}/tune/{study}", "study")
    with opened(runs):
        runs.summary(best)
        if (study_dir / "trials.csv").is_file():
            runs.table("trials", pd.read_csv(study_dir / "trials.csv"))
        for plot in ("history", "importances", "slice"):
            runs.image(plot, study_dir / f"{plot}.png")


def mirror_blend(cfg: DictConfig, base: Path) -> None:
    """One run per blend, from its report `<base>.json`: the score table, the method and its weights, the plots."""
    with never_in_the_way(base.name):
        _mirror_blend(cfg, base)


def _mirror_blend(cfg: DictConfig, base: Path) -> None:
    import json

    report = json.loads(Path(f"{base}.json").read_text())
    runs = Runs(cfg, base.name, "blend", "blend", config={key: report[key] for key in
                                                          ("method", "chosen_by", "metric", "members", "weights")})
    with opened(runs):
        runs.summary({"method": report["method"], **{f"{k}_{report['metric']}": v for k, v in report["scores"].items()
                                                     if v is not None}})
        table = pd.DataFrame(report["table"])
        table["weights"] = table["weights"].map(lambda w: ", ".join(f"{k} {v:.3f}" for k, v in (w or {}).items()))
        runs.table("scores", table)
        runs.image("scores per method", Path(f"{base}.scores.png"))
        runs.image("confusion matrix", Path(f"{base}.confusion.png"))
