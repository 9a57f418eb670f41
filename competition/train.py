"""Fit one (experiment, fold): the best checkpoint plus out-of-fold, holdout and test probabilities on disk.

The fold folder's lifecycle (lock, `.partial` work folder, DONE, the record of what it was made from) belongs to
competition.foldrun; this module loads the data, runs the fit loop and predicts through the TTA views.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from competition.augment import Augmenter, HeavyAugment
from competition.augment_params import heavy_enabled
from competition.cache import JoinedCache, WaveCache, load_split, window_starts, windowed
from competition.cli import format_seconds
from competition.compute import autocast, evaluation_precision, training_memory_format, training_precision
from competition.config import Experiment
from competition.data import index_test, index_train, with_test_source
from competition.errors import UserError
from competition.files import atomic_write, atomic_write_text, file_sha256
from competition.foldrun import (DONE, LAST, FoldFinished, Inputs, Staleness, discard_unresumable, fold_lock,
                                 is_finished, partial_dir, publish, read_record, record, resume_command,
                                 retrain_command, staleness, start_work, timestamp)
from competition.folds import ensure_folds, fold_path
from competition.frontend import Frontend, make_frontend
from competition.labels import fold_labels
from competition.metrics import METRICS
from competition.models import check_backbone, create_model
from competition.observe import FoldObserver
from competition.predictions import recorded_source
from competition.task import Task, task_of
from competition.views import parse_tta_view

RESERVED_COLUMNS = {"id", "label", "view"}


@dataclass
class Part:
    """Clips of one role (train, val, holdout, test): where their audio is and, if known, their classes (and, for
    pseudo-labelled training clips with pseudo.targets=soft, their target probabilities)."""

    ids: np.ndarray
    cache: WaveCache | JoinedCache
    rows: np.ndarray
    y: np.ndarray | None
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)


def joined(part: Part, extra: Part, task: Task, n_classes: int) -> Part:
    """A fold's training clips and its pseudo-labelled clips as one Part (soft targets for all, if the extra have
    them: the labelled clips' own labels as a matrix)."""
    soft = None if extra.soft is None else np.concatenate([task.one_hot(part.y, n_classes), extra.soft])
    return Part(np.concatenate([part.ids, extra.ids]), JoinedCache(part.cache, extra.cache),
                np.concatenate([part.rows, extra.rows + len(part.cache.clips)]), np.concatenate([part.y, extra.y]), soft)


@dataclass
class FoldData:
    classes: list[str]
    train: Part  # the pseudo-labelled clips last
    val: Part
    holdout: Part
    test: Part | None
    n_pseudo: int = 0  # pseudo-labelled clips among the training clips


@dataclass
class DataSet:
    """An experiment's data as every fold sees it: the training clips with their fold numbers, the test clips, each
    fold's pseudo-labelled clips, and the inputs record (config, fold-file hash, data fingerprints, pseudo-labels'
    provenance) that the fold outputs are checked against."""

    classes: list[str]
    train: Part  # every training clip, holdout included
    folds: np.ndarray  # each training clip's fold; -1 is the locked holdout
    test: Part | None
    inputs: Inputs
    task: Task
    pseudo: dict[int, Part] = field(default_factory=dict)  # fold -> its pseudo-labelled clips (competition.labels)

    def fold(self, fold: int) -> FoldData:
        def part(mask: np.ndarray) -> Part:
            return Part(self.train.ids[mask], self.train.cache, self.train.rows[mask], self.train.y[mask])

        train, extra = part((self.folds != fold) & (self.folds >= 0)), self.pseudo.get(fold)
        if extra is not None and len(extra):
            train = joined(train, extra, self.task, len(self.classes))
        return FoldData(self.classes, train, part(self.folds == fold), part(self.folds == -1), self.test,
                        len(extra) if extra is not None else 0)


def load_data(exp: Experiment) -> DataSet:
    """Index and decode (once, cached) the experiment's clips, check them against the shared fold file, and record
    what they are: the one place every fold, and every check of a fold's freshness, gets its data from."""
    cfg = exp.cfg
    train_split, train_cache = load_split(index_train(cfg), cfg, cfg.data.skip_bad_audio)
    folds = ensure_folds(cfg, train_split.clips, exp.name)
    task = task_of(cfg)
    classes = task.classes(folds["label"])
    clashes = RESERVED_COLUMNS & set(classes)
    if clashes:
        raise UserError(f"class name {', '.join(clashes)} clashes with a prediction column; rename that class")
    clips = train_split.clips.merge(folds[["id", "fold"]], on="id")
    y = task.encode(clips["label"], classes)
    train = Part(clips["id"].to_numpy(), train_cache, train_cache.rows(clips["path"]), y)
    test, test_fingerprint = None, None
    test_split = index_test(cfg)
    if test_split is not None:
        test_split, test_cache = load_split(test_split, cfg, skip_bad=False)
        rows = test_cache.rows(test_split.clips["path"])
        test = answer_part(Part(test_split.clips["id"].to_numpy(), test_cache, rows, None), cfg)
        test_fingerprint = test_cache.fingerprint
    fold_file = file_sha256(fold_path(cfg))
    pseudo, digests = pseudo_labelled(exp, task, classes, test, fold_file)
    inputs = Inputs(OmegaConf.to_container(cfg), list(exp.overrides), fold_file, train_cache.fingerprint,
                    test_fingerprint, digests)
    return DataSet(classes, train, clips["fold"].to_numpy(), test, inputs, task, pseudo)


def answer_part(part: Part, cfg: DictConfig) -> Part:
    """Test clips as the contest answers them: each clip, or with submission.window each window of it (the windows
    are clips of their own from here on: predicted, blended and answered by their ids)."""
    if not cfg.submission.window:
        return part
    ids, cache, rows = windowed(part.cache, part.rows, part.ids, cfg.submission.window, cfg.audio.sample_rate)
    return Part(ids, cache, rows, None)


def pseudo_labelled(exp: Experiment, task: Task, classes: list[str], test: Part | None,
                    fold_file: str) -> tuple[dict[int, Part], dict[str, str]]:
    """Each fold's pseudo-labelled clips (competition.labels) and the digests of the predictions that labelled them;
    none without pseudo.source."""
    cfg = exp.cfg
    if not cfg.pseudo.source:
        return {}, {}
    if exp.name in cfg.pseudo.source:
        raise UserError(f"{exp.name}: pseudo.source names the experiment itself; name the experiments whose folds "
                        "label its clips (e.g. the previous round)")
    pool = test
    if cfg.pseudo.test:  # a set predict named: its audio where the first source's record says predict read it
        try:
            source = recorded_source(cfg.pseudo.source[0], cfg.pseudo.test)
        except UserError as exc:
            raise UserError(f"pseudo.test={cfg.pseudo.test}: {exc}") from None
        split, cache = load_split(index_test(with_test_source(cfg, source)), cfg, skip_bad=True)
        pool = answer_part(Part(split.clips["id"].to_numpy(), cache, cache.rows(split.clips["path"]), None), cfg)
    if pool is None:
        raise UserError(f"{exp.name}: pseudo.source is set but there are no clips to label: set data.test, or "
                        "pseudo.test=<the name of a set competition.predict predicted>")
    parts, digests = {}, {}
    for fold in range(cfg.folds.n_splits):
        labels = fold_labels(cfg, task, classes, fold, fold_file)
        position = pd.Index(pool.ids).get_indexer(labels.ids)
        if (position < 0).any():
            raise UserError(f"pseudo.source: clip {labels.ids[position < 0][0]} that {', '.join(cfg.pseudo.source)} "
                            "labelled is not among the clips to label now; predict the set again with the sources")
        parts[fold] = Part(labels.ids, pool.cache, pool.rows[position], task.hard(labels.probs),
                           labels.probs.astype(np.float32) if cfg.pseudo.targets == "soft" else None)
        digests[str(fold)] = labels.digest
    return parts, digests


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device='{name}' is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device='{name}' but CUDA is not available here; use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device='{name}' but only {torch.cuda.device_count()} CUDA devices are visible")
    return device


def make_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step learning-rate schedule with an optional linear warm-up; state_dict()-able for resume."""
    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.schedule == "onecycle":  # its rising phase is the warm-up
        rise = t.warmup_epochs / t.epochs if t.warmup_epochs else 0.25
        # at least two rising steps: torch divides by the phase's length in steps, zero for a one-step phase
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total,
                                                   pct_start=min(max(rise, 2 / total), 0.99))
    warmup = round(t.warmup_epochs * steps_per_epoch)
    decay = {"cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
             "linear": lambda progress: 1.0 - progress,
             "constant": lambda progress: 1.0}[t.schedule]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay(min(1.0, (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_targets(task: Task, part: Part, index: np.ndarray, n_classes: int, smoothing: float,
                     device: torch.device) -> torch.Tensor:
    """The batch's targets, smoothed: its labels, or the soft targets of pseudo-labelled clips."""
    return task.targets(part.y[index] if part.soft is None else part.soft[index], n_classes, smoothing).to(device)


def training_loss(task: Task, logits: torch.Tensor, targets: torch.Tensor, t: DictConfig) -> torch.Tensor:
    """The task's loss against soft targets (smoothed, mixed); with train.ohem < 1, only the hardest samples count."""
    losses, keep = task.losses(logits, targets, t.focal_gamma), t.ohem
    if keep < 1.0:
        losses = losses.topk(max(1, round(keep * len(losses)))).values
    return losses.mean()


def crop_samples(cfg: DictConfig) -> int:
    return round(cfg.audio.duration * cfg.audio.sample_rate)


def batches(part: Part, size: int, crop: int,
            rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Positions and waveform crops; shuffled, randomly cropped, and without a last batch of one when training
    (BatchNorm cannot normalise a single sample), in order and centred otherwise."""
    order = rng.permutation(len(part)) if rng is not None else np.arange(len(part))
    for start in range(0, len(order), size):
        index = order[start:start + size]
        if rng is not None and len(index) < 2:
            break
        yield index, part.cache.crops(part.rows[index], crop, rng)


@dataclass
class Predictor:
    """A fold model ready to predict: its network and frontend, the config it was trained with (window, batch size,
    sample rate) and the TTA views to predict through."""

    model: torch.nn.Module
    frontend: Frontend
    cfg: DictConfig
    views: list[str]

    def frontend_key(self) -> str:
        """Equal for frontends that compute the same input: same settings, rate and statistics."""
        state = hashlib.sha256()
        for name, tensor in sorted(self.frontend.state_dict().items()):
            state.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        return json.dumps([self.cfg.audio.sample_rate, OmegaConf.to_container(self.cfg.frontend), state.hexdigest()])


def window_counts(part: Part, crop: int) -> np.ndarray:
    """How many windows WaveCache.windows cuts from each clip."""
    lengths = part.cache.clips["length"].to_numpy()[part.rows]
    return np.array([len(window_starts(int(size), crop)) for size in lengths], dtype=int)


def clip_batches(part: Part, size: int, windows: np.ndarray | None) -> Iterator[np.ndarray]:
    """Positions of `size` clips at a time, or with whole-clip views (`windows` per clip) as many clips as hold about
    `size` windows (at least one clip), so that long clips do not make huge batches."""
    if windows is None:
        yield from (np.arange(start, min(start + size, len(part))) for start in range(0, len(part), size))
        return
    start = 0
    while start < len(part):
        end = start + 1 + int(np.searchsorted(np.cumsum(windows[start + 1:]), size - windows[start], side="right"))
        yield np.arange(start, min(end, len(part)))
        start = end


@torch.inference_mode()
def predict_together(predictors: Sequence[Predictor], part: Part, device: torch.device,
                     progress: Callable[[int], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Class probabilities (clips, classes) of every predictor through each of its views, over one pass of the clips.

    Each batch of clips is cut once per window position and seen through each view once, and predictors whose
    frontends compute the same input share one log-mel per view: an ensemble's folds pay for one frontend, not one
    each. Plain views take the centred crop (moved for window views); whole-clip views slide the window over the clip
    (WaveCache.windows) and pool the windows' probabilities per clip (mean, or class-wise max renormalised). The
    predictors must share the sample rate and the window length; `progress` hears how many clips each batch held."""
    crop = crop_samples(predictors[0].cfg)
    if any(crop_samples(p.cfg) != crop or p.cfg.audio.sample_rate != predictors[0].cfg.audio.sample_rate
           for p in predictors):
        raise ValueError("predictors of one pass must share the sample rate and the window length")
    views = {name: parse_tta_view(name) for p in predictors for name in p.views}
    positions = {name: "whole" if view.whole else round(view.move * crop) for name, view in views.items()}  # a move
    keys = [p.frontend_key() for p in predictors]
    for p in predictors:
        p.model.eval()
    whole = any(view.whole for view in views.values())
    windows = window_counts(part, crop) if whole else None
    size = min(p.cfg.train.eval_batch_size for p in predictors)
    out: list[dict[str, list[np.ndarray]]] = [{name: [] for name in p.views} for p in predictors]
    for index in clip_batches(part, size, windows):
        rows = part.rows[index]
        waves: dict[object, torch.Tensor] = {}  # one batch per window position
        for name, view in views.items():
            if positions[name] not in waves:
                batch = np.concatenate([part.cache.windows(int(row), crop) for row in rows]) if view.whole \
                    else part.cache.crops(rows, crop, None, positions[name])
                waves[positions[name]] = torch.from_numpy(batch).to(device, non_blocking=True)
        seen = {name: view(waves[positions[name]]) for name, view in views.items()}
        inputs: dict[tuple[str, str], torch.Tensor] = {}
        for p, key, probs in zip(predictors, keys, out):
            for name in p.views:
                if (name, key) not in inputs:
                    inputs[name, key] = p.frontend(seen[name])
                with autocast(device, evaluation_precision(p.cfg.train, device)):
                    result = task_of(p.cfg).probabilities(p.model(inputs[name, key])).cpu().numpy()
                if views[name].whole:
                    counts = windows[index]
                    starts = np.concatenate([[0], np.cumsum(counts[:-1])])
                    result = np.add.reduceat(result, starts) / counts[:, None] if views[name].whole == "mean" \
                        else np.maximum.reduceat(result, starts)
                    result = task_of(p.cfg).normalise(result)
                probs[name].append(result)
        if progress is not None:
            progress(len(index))
    return [{name: np.concatenate(chunks) for name, chunks in probs.items()} for probs in out]


def predict(model: torch.nn.Module, frontend: Frontend, part: Part, cfg: DictConfig,
            device: torch.device) -> np.ndarray:
    """Class probabilities (clips, classes) on centred crops: what validation scores each epoch."""
    return predict_together([Predictor(model, frontend, cfg, ["plain"])], part, device)[0]["plain"]


def predict_views(model: torch.nn.Module, frontend: Frontend, part: Part, cfg: DictConfig,
                  device: torch.device) -> dict[str, np.ndarray]:
    """One prediction per configured TTA view, plus their mean ('mean') when there are several."""
    return with_mean(predict_together([Predictor(model, frontend, cfg, list(cfg.tta.views))], part, device)[0])


def with_mean(views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The views' predictions plus their mean ('mean') when there are several: what a fold's prediction files hold."""
    return {**views, "mean": np.mean(list(views.values()), axis=0)} if len(views) > 1 else views


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def predictions_frame(part: Part, views: dict[str, np.ndarray], classes: list[str], task: Task) -> pd.DataFrame:
    """Long format: one row per (clip, view), columns id, view, [label,] then one probability per class."""
    frames = []
    for view, probs in views.items():
        frame = pd.DataFrame({"id": part.ids, "view": view})
        if part.y is not None:
            frame["label"] = task.decode(part.y, classes)
        frames.append(pd.concat([frame, pd.DataFrame(probs, columns=classes)], axis=1))
    return pd.concat(frames, ignore_index=True)


def plot_curves(history: pd.DataFrame, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(history["epoch"], history["train_loss"], label="train")
    left.plot(history["epoch"], history["val_loss"], label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    left.legend()
    right.plot(history["epoch"], history[f"val_{metric}"], marker="o")
    right.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class HeavyClips(torch.utils.data.Dataset):
    """Random crops through the audiomentations chain, one clip per item, run on loader worker processes.

    Each item carries its own seed, drawn in the main process, so results do not depend on which worker
    happens to take it."""

    def __init__(self, part: Part, crop: int, heavy: HeavyAugment, seeds: np.ndarray) -> None:
        self.part, self.crop, self.heavy, self.seeds = part, crop, heavy, seeds

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, position: int) -> np.ndarray:
        rng = np.random.default_rng(self.seeds[position])
        self.heavy.seed(int(self.seeds[position]))
        wave = self.part.cache.crops(self.part.rows[position:position + 1], self.crop, rng)[0]
        return self.heavy(wave)


def train_batches(part: Part, cfg: DictConfig, rng: np.random.Generator,
                  heavy: HeavyAugment | None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Shuffled training batches of waveform crops; through loader workers only if heavy augmentation is on."""
    if heavy is None:
        for index, wave in batches(part, cfg.train.batch_size, crop_samples(cfg), rng):
            yield index, torch.from_numpy(wave)
        return
    order = rng.permutation(len(part))
    seeds = rng.integers(0, 2**31, len(part))
    dataset = HeavyClips(part, crop_samples(cfg), heavy, seeds)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=order.tolist(),
                                         num_workers=cfg.train.workers, drop_last=len(part) % cfg.train.batch_size == 1)
    for start, wave in zip(range(0, len(order), cfg.train.batch_size), loader):
        yield order[start:start + len(wave)], wave


@dataclass
class TrainState:
    """Everything an interrupted fold needs to continue exactly where it stopped."""

    model: torch.nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    rng: np.random.Generator
    generator: torch.Generator
    epoch: int = 0
    best: float | None = None
    best_loss: float = math.inf  # the best epoch's validation loss: breaks ties of the metric
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)  # {"epoch", "weights" (on the CPU)} of the epochs to average

    def keep(self, t: DictConfig, epoch: int) -> None:
        """Keep this epoch's evaluated weights if the fold is to average them: the last train.swa epochs (a window,
        since early stopping decides only after the fact which epochs were the last), or the train.average_best
        epochs ranked best as the best epoch is (the metric, then the lower validation loss, then the earlier)."""
        if not (t.swa or t.average_best):
            return
        weights = {name: tensor.detach().cpu().clone() for name, tensor in self.eval_model.state_dict().items()}
        self.kept.append({"epoch": epoch, "weights": weights})
        if t.swa:
            self.kept = self.kept[-t.swa:]
            return
        rows = {row["epoch"]: row for row in self.history}
        sign = -1 if METRICS[t.metric].greater_is_better else 1
        self.kept = sorted(self.kept, key=lambda kept: (sign * rows[kept["epoch"]][f"val_{t.metric}"],
                                                        rows[kept["epoch"]]["val_loss"]))[:t.average_best]

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save(self, path: Path) -> None:
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": self.rng.bit_generator.state,
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "epoch": self.epoch, "best": self.best, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                 "history": self.history, "kept": self.kept}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.best_loss = state.get("best_loss", math.inf)
        self.history = state["history"]
        self.kept = state.get("kept", [])


def _checkpoint_epochs(work: Path) -> str:
    """'epoch 3 of 8' for an interrupted fold, counted in the checkpoint's own settings."""
    epoch = torch.load(work / LAST, map_location="cpu", weights_only=False)["epoch"]
    recorded = read_record(work)
    return f"epoch {epoch} of {recorded.config['train']['epochs']}" if recorded else f"epoch {epoch}"


def _interrupted(exp: Experiment, fold: int, work: Path) -> UserError:
    """An interrupted run is neither continued nor thrown away unasked: say both ways on, each with its overrides."""
    retraining = f", retraining the finished {exp.fold_dir(fold)}" if is_finished(exp.fold_dir(fold)) else ""
    return UserError(f"{work} holds an interrupted run{retraining} ({_checkpoint_epochs(work)} done); resume=true "
                     f"continues it: {resume_command(exp, [fold])}; overwrite=true starts it over: "
                     f"{retrain_command(exp.name, [fold], exp.overrides)}")


def _prepare_work(exp: Experiment, fold: int, work: Path, inputs: Inputs, resume: bool) -> None:
    """A fresh work folder, or the interrupted one when resuming from the very same inputs."""
    restart = f"restart only this fold with {retrain_command(exp.name, [fold], exp.overrides)}"
    if resume:
        if not (work / LAST).is_file():
            raise UserError(f"resume=true but {work} holds no checkpoint to resume; run without resume=true")
        stale = staleness(work, inputs)
        if stale.model:
            raise UserError(f"cannot resume {work} ({_checkpoint_epochs(work)} done): {stale.describe()} since it "
                            f"started; resume with the same settings, or {restart}")
        OmegaConf.save(exp.cfg, work / "config.yaml")  # views or test clips may differ: predicted at the end anyway
        record(work, inputs)
        return
    start_work(work, inputs, lambda path: OmegaConf.save(exp.cfg, path))


def train_fold(exp: Experiment, fold: int, device_name: str = "auto", overwrite: bool = False,
               resume: bool = False, data: DataSet | None = None, observers: Sequence[FoldObserver] = ()) -> dict:
    """Train, pick the best epoch on the fold's validation clips (or average several: train.swa, train.average_best),
    predict every split and publish the fold. A finished fold is kept unless overwrite is asked for: if it is current
    it is refused, if only its predictions are out of date (other views or test clips) they are redone from its
    model, and if it is stale the reasons are named."""
    cfg = exp.cfg
    check_backbone(cfg.model.name)  # cheap checks before decoding any audio
    if not 0 <= fold < cfg.folds.n_splits:
        raise UserError(f"fold={fold} is out of range: folds 0..{cfg.folds.n_splits - 1} (or fold=all)")
    fold_dir = exp.fold_dir(fold)
    work = partial_dir(fold_dir)
    with fold_lock(fold_dir):
        started_at = timestamp()
        if (work / LAST).is_file() and not overwrite and not resume:  # also a killed overwrite=true of a finished fold
            raise _interrupted(exp, fold, work)
        data = data or load_data(exp)
        if is_finished(fold_dir) and not overwrite and not resume:  # resuming may be retraining a finished fold
            stale = staleness(fold_dir, data.inputs)
            if stale.model:
                raise UserError(f"{fold_dir} is stale: {stale.describe()} since it was trained; retrain it with "
                                f"{retrain_command(exp.name, [fold], exp.overrides)}")
            if stale.predictions:
                return repredict_fold(exp, fold, data, stale, device_name)
            raise FoldFinished(f"{fold_dir} is already finished from the current inputs; pass overwrite=true to train "
                               "it again")
        device = resolve_device(device_name)
        _prepare_work(exp, fold, work, data.inputs, resume)
        for observer in observers:
            observer.started()
        try:
            summary = _fit(cfg, data.fold(fold), fold, device, work, f"{exp.name} fold {fold}", observers)
        except KeyboardInterrupt:
            if (work / LAST).is_file():
                print(f"{exp.name} fold {fold}: interrupted; continue it with {resume_command(exp, [fold])}",
                      file=sys.stderr)
            discard_unresumable(work)
            raise
        except BaseException:
            discard_unresumable(work)
            raise
        summary.update(experiment=exp.name, fold=fold, **_where_and_when(started_at))
        publish(work, fold_dir, summary)
    _report(exp, fold, summary)
    for observer in observers:
        observer.finished(summary)
    return summary


def _where_and_when(started_at: str) -> dict:
    """Where and when the fold was trained, for DONE: the job queue's summary and its checks read these (the GPU a
    worker was pinned to is the CUDA_VISIBLE_DEVICES it was started with)."""
    return {"started_at": started_at, "finished_at": timestamp(), "host": socket.gethostname(), "pid": os.getpid(),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads()}


def _report(exp: Experiment, fold: int, summary: dict) -> None:
    """One line with the fold's validation score and, where there is one, its locked-holdout score."""
    metric = exp.cfg.train.metric
    averaged = summary.get("averaged")
    model = f"best epoch {summary['best_epoch']}" if not averaged else \
        f"{averaged['kind']} of epochs {', '.join(map(str, averaged['epochs']))} (best epoch {summary['best_epoch']})"
    line = f"{exp.name} fold {fold}: {model}, validation {metric} {summary['val_' + metric]:.4f}"
    if f"holdout_{metric}" in summary:
        line += f", locked holdout {metric} {summary['holdout_' + metric]:.4f}"
        if f"holdout_{metric}_mean" in summary:
            line += f" ({summary['holdout_' + metric + '_mean']:.4f} with TTA)"
    print(f"{line} -> {exp.fold_dir(fold)}")


def predict_splits(model: torch.nn.Module, frontend: Frontend, cfg: DictConfig, data: FoldData, device: torch.device,
                   folder: Path, splits: tuple[str, ...] = ("oof", "holdout", "test")) -> dict:
    """Predict the named splits through every TTA view into `<split>.csv`, and score the labelled ones per view."""
    metric = METRICS[cfg.train.metric]
    scores = {}
    for name, part in (("oof", data.val), ("holdout", data.holdout), ("test", data.test)):
        if name not in splits or part is None or len(part) == 0:
            continue
        views = predict_views(model, frontend, part, cfg, device)
        write_csv(predictions_frame(part, views, data.classes, task_of(cfg)), folder / f"{name}.csv")
        if part.y is not None:
            key = "val" if name == "oof" else name
            scores[f"n_{key}"] = len(part)
            for view, probs in views.items():
                suffix = "" if view == cfg.tta.views[0] else f"_{view}"
                scores[f"{key}_{cfg.train.metric}{suffix}"] = metric.score(part.y, probs)
                reported = task_of(cfg).reported
                scores[f"{key}_{reported}{suffix}"] = METRICS[reported].score(part.y, probs)
    return scores


def load_fold_model(path: Path, cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, Frontend]:
    """A trained fold's model and frontend (with the statistics it was fitted with, where it has any) from its
    model.pt, tensors only (weights_only: loading never runs code from the file), ready to predict on `device`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return build_fold_model(cfg, len(checkpoint["classes"]), checkpoint["model"], checkpoint.get("frontend"), device)


def build_fold_model(cfg: DictConfig, n_classes: int, model_state: dict, frontend_state: dict | None,
                     device: torch.device) -> tuple[torch.nn.Module, Frontend]:
    """The model and frontend `cfg` describes, holding the given weights (and frontend statistics, where any). The
    model is in channels_last memory format: 1.1-1.25x faster on the CPU with the same predictions to 1e-8
    (benchmarks/predict_speed.py)."""
    model = create_model(cfg, n_classes, pretrained=False)
    model.load_state_dict(model_state)
    frontend = make_frontend(cfg)
    if frontend_state:  # folds trained before frontends kept statistics have none to load
        frontend.load_state_dict(frontend_state)
    return model.to(device, memory_format=torch.channels_last).eval(), frontend.to(device)


def repredict_fold(exp: Experiment, fold: int, data: DataSet, stale: Staleness, device_name: str = "auto") -> dict:
    """Redo a finished fold's predictions from its kept model when only the TTA views or the test clips changed:
    other views redo every split, other test clips only test.csv. The record is updated last."""
    fold_dir = exp.fold_dir(fold)
    print(f"{exp.name} fold {fold}: {stale.describe()}; re-predicting with the trained model (no retraining)",
          file=sys.stderr)
    device = resolve_device(device_name)
    model, frontend = load_fold_model(fold_dir / "model.pt", exp.cfg, device)
    views_changed = read_record(fold_dir).views != data.inputs.views
    splits = ("oof", "holdout", "test") if views_changed else ("test",)
    summary = json.loads((fold_dir / DONE).read_text())
    if views_changed:  # per-view scores of the old views go with them; predict_splits writes the new ones
        summary = {k: v for k, v in summary.items() if not k.startswith(("val_", "holdout_", "n_val", "n_holdout"))}
    for name in ("holdout", "test"):  # a split the current inputs no longer have must not keep old predictions
        if name in splits:
            (fold_dir / f"{name}.csv").unlink(missing_ok=True)
    summary.update(predict_splits(model, frontend, exp.cfg, data.fold(fold), device, fold_dir, splits),
                   tta_views=list(exp.cfg.tta.views))
    OmegaConf.save(exp.cfg, fold_dir / "config.yaml")
    atomic_write_text(fold_dir / DONE, json.dumps(summary, indent=2))
    record(fold_dir, data.inputs)
    print(f"{exp.name} fold {fold}: re-predicted {', '.join(splits)} -> {fold_dir}")
    return summary


def _check_metric_defined(cfg: DictConfig, data: FoldData, fold: int) -> None:
    """A metric undefined on the validation clips (ROC AUC with one class) would score every epoch NaN and keep the
    first epoch's model: refuse before training."""
    uniform = task_of(cfg).normalise(np.full((len(data.val), len(data.classes)), 0.5))
    try:
        defined = math.isfinite(METRICS[cfg.train.metric].score(data.val.y, uniform))
    except ValueError:
        defined = False
    if not defined:
        present = ", ".join(task_of(cfg).classes(pd.Series(task_of(cfg).decode(data.val.y, data.classes))))
        raise UserError(f"train.metric={cfg.train.metric} is undefined on fold {fold}'s validation clips (classes "
                        f"present: {present}); choose another train.metric, or remake the folds so that every fold "
                        "validates on several classes")


def _diverged(epoch: int, fold: int, what: str, cfg: DictConfig) -> UserError:
    return UserError(f"training diverged at epoch {epoch} of fold {fold}: {what}; lower train.lr (now {cfg.train.lr:g})"
                     " or set train.grad_clip (e.g. 1.0)")


def _fit(cfg: DictConfig, data: FoldData, fold: int, device: torch.device, work: Path, title: str,
         observers: Sequence[FoldObserver]) -> dict:
    t = cfg.train
    metric = METRICS[t.metric]
    if len(data.train) < 2 or len(data.val) == 0:
        raise UserError(f"fold {fold} has {len(data.train)} training and {len(data.val)} validation clips; "
                        "remake the folds with fewer splits")
    _check_metric_defined(cfg, data, fold)
    torch.manual_seed(t.seed)
    precision = training_precision(t, device)
    model = create_model(cfg, len(data.classes)).to(device, memory_format=training_memory_format(t, cfg.model.name))
    if hasattr(model, "fit") and (t.swa or t.average_best):
        key = "train.swa" if t.swa else "train.average_best"
        raise UserError(f"{key} averages the weights of several epochs, but {cfg.model.name} is fitted exactly in one "
                        f"go, without epochs; set {key}=0")
    frontend = make_frontend(cfg).to(device)
    if cfg.frontend.kind == "logmel" and cfg.frontend.normalize == "dataset":
        frontend.fit(torch.from_numpy(wave) for _, wave in batches(data.train, t.eval_batch_size, crop_samples(cfg), None))
    pseudo = f" (of them {data.n_pseudo} pseudo-labelled)" if data.n_pseudo else ""
    if cfg.pseudo.source and not data.n_pseudo:  # e.g. a source fold that kept an early, unsure epoch
        print(f"warning: {title}: no clip reaches pseudo.threshold={cfg.pseudo.threshold} in the predictions of "
              f"fold {fold} of {', '.join(cfg.pseudo.source)}, so it trains without pseudo-labels; lower the "
              "threshold, or look at that source fold's probabilities", file=sys.stderr)
    print(f"{title}: {len(data.train)} train{pseudo}, {len(data.val)} validation, {len(data.holdout)} holdout, "
          f"{len(data.test) if data.test else 0} test clips; {len(data.classes)} classes; "
          f"{cfg.model.name} on {device} in {precision}", file=sys.stderr)
    if hasattr(model, "fit"):
        return _fit_exactly(cfg, model, frontend, data, device, work, observers)
    augmenter = Augmenter(cfg.augment, cfg.audio.sample_rate, device)
    heavy = HeavyAugment(cfg.augment, cfg.audio.sample_rate) if heavy_enabled(cfg.augment) else None
    groups = (model.parameter_groups(t.lr, cfg.frontend.lr_scale) if hasattr(model, "parameter_groups")
              else model.parameters())  # a fine-tuned encoder learns more slowly than its fresh head
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = max(1, len(data.train) // t.batch_size + (len(data.train) % t.batch_size >= 2))
    state = TrainState(
        model=model, ema=ModelEmaV3(model, decay=t.ema) if t.ema else None, optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, steps_per_epoch),
        scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"),
        rng=np.random.default_rng([t.seed, fold]), generator=torch.Generator(device).manual_seed(t.seed * 1000 + fold))
    if (work / LAST).is_file():
        state.load(work / LAST)
        print(f"{title}: resuming after epoch {state.epoch} from {work / LAST}", file=sys.stderr)
    started, walls = time.time(), []
    # the final predictions, in validation passes: every split through every view
    final_passes = sum(len(p) for p in (data.val, data.holdout, data.test) if p) * len(cfg.tta.views) / len(data.val)
    for epoch in range(state.epoch + 1, t.epochs + 1):
        if t.patience and state.epoch - state.best_epoch >= t.patience:
            break
        epoch_started = time.time()
        row = _train_epoch(cfg, state, data, frontend, augmenter, heavy, epoch, steps_per_epoch, device, precision,
                           fold, observers)
        validation_started = time.time()
        probs = predict(state.eval_model, frontend, data.val, cfg, device)
        validation = time.time() - validation_started
        if not np.isfinite(probs).all():
            raise _diverged(epoch, fold, "the validation probabilities are NaN", cfg)
        row.update(_validation_scores(cfg, data.val.y, probs))
        state.history.append(row)
        # a tie on the metric (accuracy stuck at 1.000 on an easy fold) goes to the lower validation loss
        improved = metric.better(row[f"val_{t.metric}"], state.best) or (
            row[f"val_{t.metric}"] == state.best and row["val_loss"] < state.best_loss)
        if improved:
            state.best, state.best_loss, state.best_epoch = row[f"val_{t.metric}"], row["val_loss"], epoch
            _save_model(work, state.eval_model, frontend, data.classes, epoch, cfg)
        state.keep(t, epoch)
        state.epoch = epoch
        state.save(work / LAST)  # after model.pt, so a resumed run never lacks the best weights it recorded
        write_csv(pd.DataFrame(state.history), work / "metrics.csv")
        walls.append(time.time() - epoch_started)
        eta = time_left(walls, t.epochs - epoch, validation * final_passes)
        print(f"epoch {epoch:>3}/{t.epochs} | train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f} "
              f"{t.metric} {row[f'val_{t.metric}']:.4f} | lr {row['lr']:.2e} | {row['seconds']:.1f}s "
              f"| eta {format_seconds(eta)}{' | best' if improved else ''}", flush=True)
        for observer in observers:
            observer.epoch(row)
    if t.patience and state.epoch < t.epochs:
        print(f"early stop: no better validation {t.metric} for {t.patience} epochs", flush=True)
    if state.kept:
        model, averaged = _average(cfg, state, frontend, data, device)
        _save_model(work, model, frontend, data.classes, max(averaged["epochs"]), cfg, averaged)
    else:
        model, averaged = state.eval_model, None
        model.load_state_dict(torch.load(work / "model.pt", map_location=device, weights_only=True)["model"])
    return _finish(cfg, model, frontend, data, device, precision, work, state.history, state.best_epoch, started,
                   averaged)


def time_left(walls: list[float], epochs_left: int, final: float) -> float:
    """The ETA: the epochs left at a typical epoch's wall time (the median; the first epoch, which pays one-off
    costs such as oneDNN choosing its kernels, left out once there are others), then the `final` predictions."""
    return float(np.median(walls[1:] if len(walls) > 1 else walls)) * epochs_left + final


def _average(cfg: DictConfig, state: TrainState, frontend: Frontend, data: FoldData,
             device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The equal-weight mean of the kept epochs' weights (torch's AveragedModel: parameters only), its BatchNorm
    statistics re-estimated on the training clips' centred crops through the frontend (update_bn), since the mean
    of several epochs' statistics is not the statistics of the mean weights; then scored on the validation clips
    as each epoch is. In fp32 (no autocast), one pass; a last batch of one clip is left out, as in training."""
    t = cfg.train
    averaged = AveragedModel(state.eval_model)
    for kept in state.kept:
        state.eval_model.load_state_dict(kept["weights"])
        averaged.update_parameters(state.eval_model)
    update_bn((frontend(torch.from_numpy(wave).to(device)) for _, wave in
               batches(data.train, t.batch_size, crop_samples(cfg), None) if len(wave) > 1), averaged.module)
    scores = _validation_scores(cfg, data.val.y, predict(averaged.module, frontend, data.val, cfg, device))
    epochs = sorted(kept["epoch"] for kept in state.kept)
    kind = "swa" if t.swa else "average_best"
    best = next(row for row in state.history if row["epoch"] == state.best_epoch)
    print(f"{kind} of epochs {', '.join(map(str, epochs))} | val loss {scores['val_loss']:.4f} {t.metric} "
          f"{scores[f'val_{t.metric}']:.4f} | best single epoch {state.best_epoch}: val loss {best['val_loss']:.4f} "
          f"{t.metric} {best[f'val_{t.metric}']:.4f}", flush=True)
    return averaged.module, {"kind": kind, "epochs": epochs, **scores}


def _validation_scores(cfg: DictConfig, y: np.ndarray, probs: np.ndarray) -> dict:
    task = task_of(cfg)
    return {"val_loss": METRICS[task.loss_metric].score(y, probs), f"val_{cfg.train.metric}":
            METRICS[cfg.train.metric].score(y, probs), f"val_{task.reported}": METRICS[task.reported].score(y, probs)}


def _save_model(work: Path, model: torch.nn.Module, frontend: Frontend, classes: list[str], epoch: int,
                cfg: DictConfig, averaged: dict | None = None) -> None:
    """model.pt: the weights the fold predicts with (`epoch` the last epoch in them; `averaged` says which epochs'
    mean they are, where they are one) and what is needed to rebuild and check the model."""
    best = {"model": model.state_dict(), "frontend": frontend.state_dict(), "classes": classes, "epoch": epoch,
            "config": OmegaConf.to_container(cfg), **({"averaged": averaged} if averaged else {})}
    atomic_write(work / "model.pt", lambda tmp: torch.save(best, tmp))


def _finish(cfg: DictConfig, model: torch.nn.Module, frontend: Frontend, data: FoldData, device: torch.device,
            precision: str, work: Path, history: list[dict], best_epoch: int, started: float,
            averaged: dict | None = None) -> dict:
    """The curves, the fold's summary (the device and precision it trained in, which epochs' mean the model is and
    its validation scores, where it is one) and its predictions on every split through every view."""
    plot_curves(pd.DataFrame(history), cfg.train.metric, work / "curves.png")
    summary = {"classes": data.classes, "task": task_of(cfg).name, "best_epoch": best_epoch,
               "epochs_run": len(history) and history[-1]["epoch"],
               "device": str(device), "precision": precision, "seconds": round(time.time() - started, 1), "n_train": len(data.train),
               "n_pseudo": data.n_pseudo,
               "tta_views": list(cfg.tta.views), **({"averaged": averaged} if averaged else {})}
    summary.update(predict_splits(model, frontend, cfg, data, device, work))
    return summary


def _fit_exactly(cfg: DictConfig, model: torch.nn.Module, frontend: Frontend, data: FoldData, device: torch.device,
                 work: Path, observers: Sequence[FoldObserver]) -> dict:
    """A convex model (one with `fit`, e.g. stats_linear) fitted in one go on the features of the training clips'
    centred crops, with train.weight_decay as its L2 penalty: no epochs, no augmentation, nothing to resume."""
    started = time.time()
    with torch.no_grad():
        features = torch.cat([frontend(torch.from_numpy(wave).to(device)) for _, wave in
                              batches(data.train, cfg.train.eval_batch_size, crop_samples(cfg), None)])
    model.fit(features, torch.from_numpy(data.train.y).to(device), cfg.train.weight_decay)
    train_probs = predict(model, frontend, data.train, cfg, device)
    probs = predict(model, frontend, data.val, cfg, device)
    row = {"epoch": 1, "train_loss": METRICS[task_of(cfg).loss_metric].score(data.train.y, train_probs), "lr": 0.0,
           "seconds": time.time() - started, **_validation_scores(cfg, data.val.y, probs)}
    _save_model(work, model, frontend, data.classes, 1, cfg)
    write_csv(pd.DataFrame([row]), work / "metrics.csv")
    print(f"fitted {cfg.model.name} exactly | train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f} "
          f"{cfg.train.metric} {row[f'val_{cfg.train.metric}']:.4f} | {row['seconds']:.1f}s", flush=True)
    for observer in observers:
        observer.epoch(row)
    return _finish(cfg, model, frontend, data, device, "fp32", work, [row], 1, started)  # fitted without autocast


def _train_epoch(cfg: DictConfig, state: TrainState, data: FoldData, frontend: Frontend, augmenter: Augmenter,
                 heavy: HeavyAugment | None, epoch: int, steps: int, device: torch.device, precision: str,
                 fold: int, observers: Sequence[FoldObserver]) -> dict:
    """One pass over the training clips: augment the waveforms, log-mel, augment the spectrograms, mix, step."""
    t, task = cfg.train, task_of(cfg)
    started, losses = time.time(), []
    state.model.train()
    bar = tqdm(train_batches(data.train, cfg, state.rng, heavy), total=steps, desc=f"epoch {epoch}/{t.epochs}",
               unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True, disable=None)  # no bar in logs
    for index, wave in bar:
        wave = augmenter.wave(wave.to(device, non_blocking=True), state.generator)
        x = augmenter.spec(frontend(wave), state.generator)
        targets = training_targets(task, data.train, index, len(data.classes), t.label_smoothing, device)
        x, targets = augmenter.mix(x, targets, state.generator)
        if not losses:
            for observer in observers:
                observer.inputs(x, targets, data.classes)
        with autocast(device, precision):
            logits = state.model(x)
        loss = training_loss(task, logits, targets, t)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if t.grad_clip:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), t.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.model)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise _diverged(epoch, fold, f"the training loss is {losses[-1]}", cfg)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    return {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": state.optimizer.param_groups[0]["lr"],
            "seconds": time.time() - started}
