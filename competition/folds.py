"""Make the fold file once per data set: `folds/<data.name>.csv` with columns id, label, group, fold.

Stratified group K-fold keeps every clip of a speaker in one fold (otherwise validation scores are inflated by
voices the model has already heard); an optional locked holdout (fold -1), also grouped and stratified, is never
trained on and stands in for the leaderboard. Every experiment and trial reads the same file.

    python -m competition.folds [exp=default] [folds.n_splits=5] [folds.holdout=0.1] [overwrite=true]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from sklearn.model_selection import StratifiedGroupKFold

from competition.cli import main_guard, parse_bool
from competition.config import load_experiment, parse_cli
from competition.errors import UserError

FOLDS_DIR = Path("folds")
COLUMNS = ["id", "label", "group", "fold"]


def fold_path(cfg: DictConfig) -> Path:
    return FOLDS_DIR / f"{cfg.data.name}.csv"


def _stratified_group_split(clips: pd.DataFrame, n_splits: int, seed: int) -> np.ndarray:
    """Fold number per clip; at least n_splits distinct groups are needed to put one in every fold."""
    n_groups = clips["group"].nunique()
    if n_groups < n_splits:
        raise UserError(f"only {n_groups} groups (speakers) for {n_splits} folds; lower folds.n_splits "
                        "or check the group rule (data.train.group_column / filename_regex)")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(clips), -1)
    for k, (_, val) in enumerate(splitter.split(clips, clips["label"], clips["group"])):
        folds[val] = k
    return folds


def make_folds(clips: pd.DataFrame, n_splits: int, seed: int, holdout: float = 0.0) -> pd.DataFrame:
    """Assign every clip a fold in 0..n_splits-1, or -1 for the locked holdout (a `holdout` fraction of groups)."""
    folds = pd.DataFrame({"id": clips["id"], "label": clips["label"], "group": clips["group"], "fold": -1})
    train = np.ones(len(clips), bool)
    if holdout > 0:
        parts = max(2, round(1 / holdout))
        n_groups = clips["group"].nunique()
        if n_groups < parts:  # holding out one group in `parts` needs that many groups, whatever n_splits is
            raise UserError(f"folds.holdout={holdout} holds out one group in {parts}, but there are only {n_groups} "
                            f"groups; set folds.holdout to at least {1 / n_groups:.2f}, or 0 for no holdout")
        held = _stratified_group_split(clips, parts, seed) == 0
        if held.all() or not held.any():
            raise UserError(f"folds.holdout={holdout} leaves nothing to train or hold out; choose a fraction like 0.1")
        train = ~held
    pool = clips[train].reset_index(drop=True)
    folds.loc[train, "fold"] = _stratified_group_split(pool, n_splits, seed)
    return folds


def class_counts(folds: pd.DataFrame) -> pd.DataFrame:
    """Clips per class (rows) and fold (columns, 'holdout' for -1), for eyeballing stratification."""
    counts = pd.crosstab(folds["label"], folds["fold"]).rename(columns={-1: "holdout"})
    counts.loc["all clips"] = counts.sum()
    counts.loc["groups"] = folds.groupby("fold")["group"].nunique().rename({-1: "holdout"})
    return counts


def read_folds(path: Path) -> pd.DataFrame:
    try:
        folds = pd.read_csv(path, dtype={"id": str, "label": str, "group": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read the fold file ({str(exc).splitlines()[0]})") from None
    if list(folds.columns) != COLUMNS or not pd.api.types.is_integer_dtype(folds["fold"]):
        raise UserError(f"{path}: not a fold file (expected integer columns {','.join(COLUMNS)}); "
                        "remake it with python -m competition.folds")
    return folds


def check_folds(folds: pd.DataFrame, clips: pd.DataFrame, path: Path) -> None:
    """The fold file must describe exactly the indexed clips, with the same labels: no silent mismatch."""
    hint = "the data changed since the folds were made; remake them with python -m competition.folds overwrite=true"
    missing = sorted(set(clips["id"]) - set(folds["id"]))
    extra = sorted(set(folds["id"]) - set(clips["id"]))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"{len(missing)} clips not in it (e.g. {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} ids with no clip (e.g. {extra[0]})")
        raise UserError(f"{path} does not match the data set: {', '.join(detail)}; {hint}")
    merged = clips[["id", "label", "group"]].merge(folds[["id", "label", "group"]], on="id", suffixes=("", "_fold"))
    for column, what in (("label", "labels"), ("group", "groups (speakers)")):
        changed = merged[merged[column] != merged[f"{column}_fold"]]
        if len(changed):
            raise UserError(f"{path}: {len(changed)} clips have other {what} than in the data set "
                            f"(e.g. {changed['id'].iloc[0]}); {hint}")


def write_folds(folds: pd.DataFrame, path: Path, overwrite: bool) -> bool:
    """Write atomically; an existing different file is kept unless overwrite is asked for. True if written."""
    if path.exists() and not overwrite:  # with overwrite, even an unreadable file is replaced
        if read_folds(path).astype(str).equals(folds.reset_index(drop=True).astype(str)):  # values, not dtypes
            return False
        raise UserError(f"{path} exists with different folds; every experiment on it would change. "
                        "Pass overwrite=true to replace it, or set data.name for a new fold file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    folds.to_csv(tmp, index=False)
    tmp.replace(path)
    return True


def ensure_folds(cfg: DictConfig, clips: pd.DataFrame) -> pd.DataFrame:
    """The data set's folds, made on first use so a new user's first `run` just works; checked against the data."""
    path = fold_path(cfg)
    if not path.exists():
        print(f"no fold file yet: making {path}", file=sys.stderr)
        write_folds(make_folds(clips, cfg.folds.n_splits, cfg.folds.seed, cfg.folds.holdout), path, overwrite=False)
    folds = read_folds(path)
    check_folds(folds, clips, path)
    return folds


def main(argv: list[str]) -> None:
    from competition.cache import load_split
    from competition.data import index_train

    options, overrides = parse_cli(argv, {"exp": "default", "overwrite": "false"})
    exp = load_experiment(options["exp"], overrides)
    cfg = exp.cfg
    split, _ = load_split(index_train(cfg), cfg, cfg.data.skip_bad_audio)
    folds = make_folds(split.clips, cfg.folds.n_splits, cfg.folds.seed, cfg.folds.holdout)
    path = fold_path(cfg)
    written = write_folds(folds, path, overwrite=parse_bool("overwrite", options["overwrite"]))
    print(class_counts(folds).to_string())
    state = "wrote" if written else "unchanged:"
    print(f"{state} {path} ({len(folds)} clips, {folds['group'].nunique()} groups, "
          f"{cfg.folds.n_splits} folds, {(folds['fold'] == -1).sum()} clips held out)")


if __name__ == "__main__":
    main_guard(main)
