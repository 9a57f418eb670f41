"""Fit one (experiment, fold): the best checkpoint plus out-of-fold, holdout and test probabilities on disk.

Everything is written into `fold_<k>.partial/` and the folder is renamed to `fold_<k>/` only after the
completion marker `DONE`, so a crashed or interrupted fold can never be mistaken for a finished one.
"""
from __future__ import annotations

import fcntl
import json
import math
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from competition.cache import WaveCache, load_split
from competition.config import Experiment
from competition.data import index_test, index_train
from competition.errors import UserError
from competition.folds import ensure_folds, fold_path
from competition.frontend import LogMel
from competition.metrics import METRICS
from competition.models import create_model

DONE = "DONE"
RESERVED_COLUMNS = {"id", "label", "view"}


@dataclass
class Part:
    """Clips of one role (train, val, holdout, test): where their audio is and, if known, their classes."""

    ids: np.ndarray
    cache: WaveCache
    rows: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class FoldData:
    classes: list[str]
    train: Part
    val: Part
    holdout: Part
    test: Part | None


def load_fold_data(cfg: DictConfig, fold: int) -> FoldData:
    """Index, decode (once, cached) and split the data for one fold, checked against the shared fold file."""
    train_split, train_cache = load_split(index_train(cfg), cfg, cfg.data.skip_bad_audio)
    folds = ensure_folds(cfg, train_split.clips)
    n_splits = int(folds["fold"].max()) + 1
    if not 0 <= fold < n_splits:
        raise UserError(f"fold={fold} is out of range: {fold_path(cfg)} has folds 0..{n_splits - 1} (or fold=all)")
    classes = sorted(folds["label"].unique())
    clashes = RESERVED_COLUMNS & set(classes)
    if clashes:
        raise UserError(f"class name {', '.join(clashes)} clashes with a prediction column; rename that class")
    clips = train_split.clips.merge(folds[["id", "fold"]], on="id")
    y = clips["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rows = train_cache.rows(clips["path"])

    def part(mask: np.ndarray) -> Part:
        return Part(clips["id"].to_numpy()[mask], train_cache, rows[mask], y[mask])

    folds_of = clips["fold"].to_numpy()
    test = None
    test_split = index_test(cfg)
    if test_split is not None:
        test_split, test_cache = load_split(test_split, cfg, skip_bad=False)
        test = Part(test_split.clips["id"].to_numpy(), test_cache, test_cache.rows(test_split.clips["path"]), None)
    return FoldData(classes, part((folds_of != fold) & (folds_of >= 0)), part(folds_of == fold),
                    part(folds_of == -1), test)


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


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA where supported (no loss scaling needed), fp16 otherwise; plain fp32 on the CPU."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def make_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    t = cfg.train
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.lr, total_steps=total_steps, pct_start=0.25)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


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


@torch.inference_mode()
def predict(model: torch.nn.Module, frontend: LogMel, part: Part, cfg: DictConfig, device: torch.device) -> np.ndarray:
    """Class probabilities (n, classes) on centred crops."""
    model.eval()
    out = []
    for _, wave in batches(part, cfg.train.eval_batch_size, crop_samples(cfg), None):
        x = frontend(torch.from_numpy(wave).to(device, non_blocking=True))
        with autocast(device, cfg.train.amp):
            out.append(model(x).float().softmax(-1).cpu())
    return torch.cat(out).numpy()


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)


def predictions_frame(part: Part, probs: np.ndarray, classes: list[str], view: str | None) -> pd.DataFrame:
    frame = pd.DataFrame({"id": part.ids})
    if view is not None:
        frame["view"] = view
    if part.y is not None:
        frame["label"] = np.asarray(classes)[part.y]
    return pd.concat([frame, pd.DataFrame(probs, columns=classes)], axis=1)


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


@contextmanager
def fold_lock(fold_dir: Path) -> Iterator[None]:
    """One process per fold: a second run of the same fold stops instead of mixing files with the first."""
    fold_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(fold_dir.with_name(f".{fold_dir.name}.lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{fold_dir} is being trained by another process; wait for it or stop it") from None
        yield


def is_finished(fold_dir: Path) -> bool:
    return (fold_dir / DONE).is_file()


def _fmt_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def train_fold(exp: Experiment, fold: int, device_name: str = "auto", overwrite: bool = False) -> dict:
    """Train, pick the best epoch on the fold's validation clips, predict every split and publish the fold."""
    cfg = exp.cfg
    fold_dir = exp.fold_dir(fold)
    with fold_lock(fold_dir):
        if is_finished(fold_dir) and not overwrite:
            raise UserError(f"{fold_dir} is already finished; pass overwrite=true to train it again")
        device = resolve_device(device_name)
        data = load_fold_data(cfg, fold)
        work = fold_dir.with_name(f"{fold_dir.name}.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        OmegaConf.save(cfg, work / "config.yaml")
        summary = _fit(cfg, data, fold, device, work, f"{exp.name} fold {fold}")
        summary.update(experiment=exp.name, fold=fold)
        (work / DONE).write_text(json.dumps(summary, indent=2))
        if fold_dir.exists():  # overwrite=true: the old fold goes only once the new one is complete
            shutil.rmtree(fold_dir)
        work.rename(fold_dir)
    print(f"{exp.name} fold {fold}: best epoch {summary['best_epoch']}, validation {cfg.train.metric} "
          f"{summary['val_' + cfg.train.metric]:.4f} -> {fold_dir}")
    return summary


def _fit(cfg: DictConfig, data: FoldData, fold: int, device: torch.device, work: Path, title: str) -> dict:
    t = cfg.train
    metric = METRICS[t.metric]
    torch.manual_seed(t.seed)
    rng = np.random.default_rng([t.seed, fold])
    if len(data.train) < 2 or len(data.val) == 0:
        raise UserError(f"fold {fold} has {len(data.train)} training and {len(data.val)} validation clips; "
                        "remake the folds with fewer splits")
    model = create_model(cfg, len(data.classes)).to(device)
    frontend = LogMel.from_config(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = max(1, len(data.train) // t.batch_size + (len(data.train) % t.batch_size >= 2))
    scheduler = make_scheduler(cfg, optimizer, t.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and t.amp and not torch.cuda.is_bf16_supported())
    print(f"{title}: {len(data.train)} train, {len(data.val)} validation, {len(data.holdout)} holdout, "
          f"{len(data.test) if data.test else 0} test clips; {len(data.classes)} classes; "
          f"{cfg.model.name} on {device}", file=sys.stderr)
    history, best, best_epoch, started = [], None, 0, time.time()
    for epoch in range(1, t.epochs + 1):
        epoch_start = time.time()
        model.train()
        losses = []
        bar = tqdm(batches(data.train, t.batch_size, crop_samples(cfg), rng), total=steps_per_epoch, desc=f"epoch {epoch}/{t.epochs}",
                   unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)
        for index, wave in bar:
            x = frontend(torch.from_numpy(wave).to(device, non_blocking=True))
            target = torch.from_numpy(data.train.y[index]).to(device)
            with autocast(device, t.amp):
                loss = F.cross_entropy(model(x).float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        if not losses or not math.isfinite(np.mean(losses)):
            raise RuntimeError(f"training loss is {np.mean(losses) if losses else 'undefined'} at epoch {epoch}; "
                               "lower train.lr")
        probs = predict(model, frontend, data.val, cfg, device)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)),
               "val_loss": METRICS["log_loss"].score(data.val.y, probs),
               f"val_{t.metric}": metric.score(data.val.y, probs),
               "val_accuracy": METRICS["accuracy"].score(data.val.y, probs),
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - epoch_start}
        history.append(row)
        improved = metric.better(row[f"val_{t.metric}"], best)
        if improved:
            best, best_epoch = row[f"val_{t.metric}"], epoch
            torch.save({"model": model.state_dict(), "classes": data.classes, "epoch": epoch,
                        "config": OmegaConf.to_container(cfg)}, work / ".model.pt.tmp")
            (work / ".model.pt.tmp").replace(work / "model.pt")
        eta = (time.time() - started) / epoch * (t.epochs - epoch)
        print(f"epoch {epoch:>3}/{t.epochs} | train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f} "
              f"{t.metric} {row[f'val_{t.metric}']:.4f} | lr {row['lr']:.2e} | {row['seconds']:.1f}s "
              f"| eta {_fmt_seconds(eta)}{' | best' if improved else ''}", flush=True)
        write_csv(pd.DataFrame(history), work / "metrics.csv")
        if t.patience and epoch - best_epoch >= t.patience:
            print(f"early stop: no better validation {t.metric} for {t.patience} epochs", flush=True)
            break
    plot_curves(pd.DataFrame(history), t.metric, work / "curves.png")

    model.load_state_dict(torch.load(work / "model.pt", map_location=device, weights_only=True)["model"])
    summary = {"classes": data.classes, "best_epoch": best_epoch, "epochs_run": len(history), "device": str(device),
               "seconds": round(time.time() - started, 1), "n_train": len(data.train)}
    for name, part, view in (("oof", data.val, None), ("holdout", data.holdout, "plain"), ("test", data.test, "plain")):
        if part is None or len(part) == 0:
            continue
        probs = predict(model, frontend, part, cfg, device)
        write_csv(predictions_frame(part, probs, data.classes, view), work / f"{name}.csv")
        if part.y is not None:
            key = "val" if name == "oof" else name
            summary[f"{key}_{t.metric}"] = metric.score(part.y, probs)
            summary[f"{key}_accuracy"] = METRICS["accuracy"].score(part.y, probs)
            summary[f"n_{key}"] = len(part)
    return summary
