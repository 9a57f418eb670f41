"""Make the fold file once per data set: `folds/<data.name>.csv` with columns id, label, group, fold.

Stratified group K-fold keeps every clip of a speaker in one fold (otherwise validation scores are inflated by
voices the model has already heard); an optional locked holdout (fold -1), also grouped and stratified, is never
trained on and stands in for the leaderboard. Every experiment and trial reads the same file.

A contest that names no speaker makes every clip its own group, and per-clip folds flatter every local score;
`folds.groups=voice` groups the clips by voice instead: clusters of the pretrained speaker encoder's embeddings.

    python -m competition.folds [exp=default] [folds.n_splits=5] [folds.holdout=0.1] [folds.groups=voice] [overwrite=true]
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from competition.cli import main_guard, parse_bool
from competition.config import load_experiment, parse_cli
from competition.data import examples
from competition.errors import UserError
from competition.files import atomic_write
from competition.task import SINGLE, Task, task_of

FOLDS_DIR = Path("folds")
COLUMNS = ["id", "label", "group", "fold"]
VOICE_DISTANCE = 0.3  # cosine distance at which two voice clusters stop merging (see cluster_voices)
VOICE_BATCH = 64  # clips per encoder call: each call adds one shard to the embedding store
VOICE_GROUP = re.compile(r"voice\d+")


def fold_path(cfg: DictConfig) -> Path:
    return FOLDS_DIR / f"{cfg.data.name}.csv"


def _remake(exp: str) -> str:
    """The command that remakes this experiment's fold file (without exp= it would remake the default's)."""
    return f"python -m competition.folds exp={exp} overwrite=true"


def _parts(holdout: float) -> int:
    """The holdout is one part of a grouped, stratified split of every clip into this many parts."""
    return max(2, round(1 / holdout))


class _Refused(UserError):
    """Folds these settings cannot make; `why` is the reason in a few words, to say why no other setting works."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def _largest_class(clips: pd.DataFrame, task: Task) -> tuple[str, int]:
    """The most frequent class and its clip count: scikit-learn refuses a split only when even it is too small."""
    counts = task.explode(clips)["label"].value_counts()
    return counts.index[0], int(counts.iloc[0])


def _stratified_group_split(clips: pd.DataFrame, n_splits: int, seed: int, task: Task) -> np.ndarray:
    """Fold number per clip; at least n_splits distinct groups are needed to put one in every fold. Multi-label:
    iterative stratification (Sechidis et al., 2011) of the groups on the classes each group holds, so that every
    class, rare ones first, is spread over the folds while a group stays in one."""
    n_groups = clips["group"].nunique()
    if n_groups < n_splits:
        raise _Refused(f"only {n_groups} groups (speakers) for {n_splits} folds; lower folds.n_splits "
                       "or check the group rule (data.train.group_column / filename_regex)",
                       f"leaves fewer than {n_splits} groups to split")
    folds = np.full(len(clips), -1)
    if task.multilabel:
        groups = pd.Series(pd.factorize(clips["group"])[0])
        classes = task.classes(clips["label"])
        held = np.zeros((groups.max() + 1, len(classes)))
        np.maximum.at(held, groups.to_numpy(), task.encode(clips["label"], classes))
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # here: checking arguments needs no sklearn

        splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for k, (_, val) in enumerate(splitter.split(held, held)):
            folds[groups.isin(val).to_numpy()] = k
        return folds
    from sklearn.model_selection import StratifiedGroupKFold  # here: checking arguments needs no sklearn

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    # a class smaller than n_splits just misses some folds; sklearn's multi-line warning about it gives way to
    # validate_folds' one line where that matters (a class left in a single fold)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(splitter.split(clips, clips["label"], clips["group"]))
    for k, (_, val) in enumerate(splits):
        folds[val] = k
    return folds


def _wholly_held(folds: pd.DataFrame, task: Task) -> pd.Series:
    """Clips per class of the classes the holdout (fold -1) holds every clip of: no fold could learn them."""
    labels = task.explode(folds)
    return labels["label"].value_counts().drop(labels.loc[labels["fold"] >= 0, "label"].unique())


def make_folds(clips: pd.DataFrame, n_splits: int, seed: int, holdout: float = 0.0,
               task: Task = SINGLE) -> pd.DataFrame:
    """Assign every clip a fold in 0..n_splits-1, or -1 for the locked holdout (a `holdout` fraction of groups).

    The limits scikit-learn would fail on with a traceback are checked first, to name the key to change. A holdout
    these clips do not allow is refused with a setting that was tried and works (other holdouts and seeds, fewer
    folds), or with why none does: a suggestion that only passes the first check sends the user round in circles.
    """
    label, largest = _largest_class(clips, task)
    if largest < 2:
        raise UserError(f"every class has a single clip (e.g. '{label}'), so none can be both trained on and "
                        "validated; check the label rule (data.train.label_column / filename_regex)")
    try:
        return _split(clips, n_splits, seed, holdout, task)
    except _Refused as refused:
        if holdout == 0:
            raise UserError(str(refused)) from None
        raise UserError(f"{refused}; {_what_works(clips, n_splits, seed, holdout, task)}") from None


def _holdout_limits(clips: pd.DataFrame, holdout: float, task: Task) -> None:
    """Refuse at once a holdout that needs more groups, or more clips in a class, than there are."""
    parts, (label, largest) = _parts(holdout), _largest_class(clips, task)
    n_groups = clips["group"].nunique()
    if n_groups < parts:  # holding out one group in `parts` needs that many groups, whatever n_splits is
        raise _Refused(f"folds.holdout={holdout} holds out one group in {parts}, but there are only {n_groups} "
                       "groups", f"needs more than the {n_groups} groups")
    if largest < parts:
        raise _Refused(f"folds.holdout={holdout} splits each class into {parts} parts to hold one out, but no "
                       f"class has {parts} clips (the largest, '{label}', has {largest})",
                       f"needs more than the {largest} clips of the largest class")


def _split(clips: pd.DataFrame, n_splits: int, seed: int, holdout: float, task: Task) -> pd.DataFrame:
    """make_folds for one setting, refusing (with why) what it cannot make; no suggestions."""
    folds = pd.DataFrame({"id": clips["id"], "label": clips["label"], "group": clips["group"], "fold": -1})
    train = np.ones(len(clips), bool)
    if holdout > 0:
        _holdout_limits(clips, holdout, task)
        held = _stratified_group_split(clips, _parts(holdout), seed, task) == 0
        if held.all() or not held.any():
            raise _Refused(f"folds.holdout={holdout} leaves nothing to train or hold out", "leaves nothing to hold out")
        train = ~held
    pool = clips[train].reset_index(drop=True)
    label, largest = _largest_class(pool, task)
    if largest < n_splits:
        if holdout == 0:
            raise _Refused(f"folds.n_splits={n_splits} but no class has {n_splits} clips (the largest, '{label}', "
                           f"has {largest}); set folds.n_splits to at most {largest}", "")
        raise _Refused(f"folds.n_splits={n_splits} but no class has {n_splits} clips outside the holdout (the largest, "
                       f"'{label}', has {largest})", f"leaves no class {n_splits} clips outside the holdout")
    folds.loc[train, "fold"] = _stratified_group_split(pool, n_splits, seed, task)
    held_classes = _wholly_held(folds, task)
    if len(held_classes):
        listing = examples([f"'{c}' ({n} clips)" for c, n in held_classes.items()])
        raise _Refused(f"folds.holdout={holdout} holds out every clip of class {listing}, so no fold could learn it",
                       "holds out every clip of some class")
    return folds


SEEDS_TRIED = 5  # folds.seed and the next ones
SPLITS_TRIED = 40  # settings tried by splitting: one split of 20,000 one-clip groups takes seconds


def _near_holdouts(holdout: float) -> list[float]:
    """One two-decimal fraction per distinct holdout (the one nearest its part: 0.2 for one in five; `holdout` for
    its own), nearest to `holdout` first."""
    candidates: dict[int, float] = {}
    for hundredths in range(1, 51):
        fraction = hundredths / 100
        parts = _parts(fraction)
        if parts not in candidates or abs(fraction - 1 / parts) < abs(candidates[parts] - 1 / parts):
            candidates[parts] = fraction
    candidates[_parts(holdout)] = holdout
    return sorted(candidates.values(), key=lambda h: (abs(h - holdout), h))


def _what_works(clips: pd.DataFrame, n_splits: int, seed: int, holdout: float, task: Task) -> str:
    """Settings near the refused ones that make valid folds, each tried: other holdouts (nearest first) with this seed
    and the next few, and fewer folds; or, when none does, why."""
    near = _near_holdouts(holdout)
    budget = SPLITS_TRIED
    reasons: list[str] = []

    def first_that_works(settings: list[tuple[int, float, int]], why: list[str]) -> tuple[int, float, int] | None:
        nonlocal budget
        for k, other, other_seed in settings:
            try:
                _holdout_limits(clips, other, task)
                if budget == 0:
                    return None
                budget -= 1
                _split(clips, k, other_seed, other, task)
            except _Refused as refused:
                why.append(refused.why)
                continue
            return k, other, other_seed
        return None

    same = first_that_works([(n_splits, h, s) for h in near for s in range(seed, seed + SEEDS_TRIED)
                             if (h, s) != (holdout, seed)], reasons)
    if same:
        return (f"folds.holdout={same[1]}" + (f" with folds.seed={same[2]}" if same[2] != seed else "")
                + " works (tried: it makes valid folds), or 0 for no holdout")
    none = (f"no folds.holdout tried (near {holdout}, folds.seed {seed} to {seed + SEEDS_TRIED - 1}) works with "
            f"folds.n_splits={n_splits}: each {' or '.join(dict.fromkeys(reasons))}")
    fewer = first_that_works([(k, h, seed) for k in range(n_splits - 1, 1, -1) for h in near], [])
    if fewer is None:
        return f"{none}; use folds.holdout=0 (no holdout)"
    return (f"{none}; folds.n_splits={fewer[0]}" + (f" with folds.holdout={fewer[1]}" if fewer[1] != holdout else "")
            + " works (tried: it makes valid folds), or folds.holdout=0 for no holdout")


# --- groups found by voice (folds.groups=voice) ------------------------------------------------------------------


def has_own_groups(clips: pd.DataFrame) -> bool:
    """Whether the data names groups (a group column or regex): without one, every clip's group is its id."""
    return bool((clips["group"] != clips["id"]).any())


def _refuse_voice_with_groups(clips: pd.DataFrame) -> None:
    if has_own_groups(clips):
        raise UserError("folds.groups=voice guesses the speakers from their voices, but this data names them already "
                        "(data.train.group_column or a (?P<group>...) in data.train.filename_regex); drop "
                        "folds.groups=voice to use the named speakers")


def voice_embeddings(cfg: DictConfig, clips: pd.DataFrame, cache=None) -> np.ndarray:
    """Each clip's whole-clip speaker embedding (clips, 256), L2-normalised, through the `encoder` frontend
    (frontend.encoder=speaker, pool=mean), so embeddings come from and go to the shared on-disk embedding store.
    Always on the CPU, and rounded to the store's float16 whether just computed or read back: a fold file made
    again on any machine, fresh or cached, is the same file."""
    import torch

    from competition.frontend import make_frontend

    if cache is None:
        from competition.cache import load_split
        from competition.data import index_train

        _, cache = load_split(index_train(cfg), cfg, cfg.data.skip_bad_audio)
    speaker = OmegaConf.merge(cfg, {"frontend": {"kind": "encoder", "encoder": "speaker", "pool": "mean"}})
    frontend = make_frontend(speaker)
    rows = cache.rows(clips["path"])
    lengths = cache.clips["length"].to_numpy()
    print(f"folds.groups=voice: embedding {len(rows)} clips with the speaker encoder (cached for next time)",
          file=sys.stderr)
    vectors = []
    for start in range(0, len(rows), VOICE_BATCH):
        batch = rows[start:start + VOICE_BATCH]  # whole clips: centred in the batch's longest, the padding stripped
        wave = torch.from_numpy(cache.crops(batch, int(lengths[batch].max())))
        vectors.append(frontend(wave).reshape(len(batch), -1).numpy())
    embeddings = np.concatenate(vectors).astype(np.float16).astype(np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def cluster_voices(ids: pd.Series, embeddings: np.ndarray, distance: float = VOICE_DISTANCE) -> pd.Series:
    """Group names (`voice0000`, ...) for clips with these embeddings: average-linkage agglomerative clustering on
    cosine distance, merging clusters until the mean distance between two is above `distance` (VOICE_DISTANCE).

    Why this threshold: measured on speechocean762_gender (612 clips, 102 speakers with 6 clips each; README), the
    GE2E embeddings of one speaker's clips lie a median 0.20 apart in cosine distance (90% within 0.28), clips of two
    speakers a median 0.48 (1% nearer than 0.27). A clip whose speaker is split over two groups leaks that voice into
    validation, one merged with another speaker only makes the groups coarser, so the threshold errs towards merging:
    at 0.30, 92% of same-speaker clip pairs share a group (0.87 at 0.275, 0.81 at 0.25) and the largest group holds
    26 clips (4%); purity is 0.77 (each group's majority speaker; 0.86 at 0.275). The threshold is a distance in the
    encoder's own space, so it carries over from data set to data set: on the 51 male or 51 female speakers alone,
    or 72 of the 102, 91 to 95% of same-speaker pairs share a group at 0.30. (Centring the embeddings on the data's
    mean first gains purity on the mixed set but moves the right threshold with the data's make-up.)

    Deterministic: the clips are clustered in id order, and groups are numbered by their first clip in that order, so
    the names depend only on the clips. Memory grows with the square of the clip count (scipy's condensed
    distances: about 1.6 GB at 20,000 clips)."""
    from sklearn.cluster import AgglomerativeClustering

    order = np.argsort(ids.to_numpy(), kind="stable")
    if len(order) < 2:
        labels = np.zeros(len(order), int)
    else:
        labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                         distance_threshold=distance).fit_predict(embeddings[order])
    number = {label: k for k, label in enumerate(dict.fromkeys(labels))}
    width = max(4, len(str(len(number) - 1)))
    names = np.empty(len(order), object)
    names[order] = [f"voice{number[label]:0{width}d}" for label in labels]
    return pd.Series(names, index=ids.index, name="group")


def voice_groups(cfg: DictConfig, clips: pd.DataFrame, cache=None) -> pd.Series:
    """The clips' groups found by voice, for data that names no speaker; refused where it does."""
    _refuse_voice_with_groups(clips)
    return cluster_voices(clips["id"], voice_embeddings(cfg, clips, cache))


def purity(groups: pd.Series, speakers: pd.Series) -> float:
    """The fraction of clips whose group's most frequent speaker is their own speaker (1.0: no group mixes voices;
    a speaker split over several groups still counts as pure)."""
    table = pd.DataFrame({"group": groups.to_numpy(), "speaker": speakers.to_numpy()})
    return float(table.groupby("group")["speaker"].agg(lambda s: s.value_counts().iloc[0]).sum() / len(table))


def together(groups: pd.Series, speakers: pd.Series) -> float:
    """The fraction of pairs of clips of one speaker that share a group (1.0: no speaker is split, so none leaks
    between folds)."""
    table = pd.DataFrame({"group": groups.to_numpy(), "speaker": speakers.to_numpy()})
    pairs = lambda counts: int((counts * (counts - 1) // 2).sum())  # noqa: E731
    total = pairs(table.groupby("speaker").size())
    return pairs(table.groupby(["speaker", "group"]).size()) / total if total else 1.0


def make_configured_folds(cfg: DictConfig, clips: pd.DataFrame, cache=None) -> pd.DataFrame:
    """make_folds with the config's settings, the groups found by voice first where folds.groups=voice asks."""
    if cfg.folds.groups == "voice":
        clips = clips.assign(group=voice_groups(cfg, clips, cache))
    return make_folds(clips, cfg.folds.n_splits, cfg.folds.seed, cfg.folds.holdout, task_of(cfg))


def class_counts(folds: pd.DataFrame, task: Task = SINGLE) -> pd.DataFrame:
    """Clips per class (rows) and fold (columns, 'holdout' for -1), for eyeballing stratification."""
    labels = task.explode(folds)
    counts = pd.crosstab(labels["label"], labels["fold"]).rename(columns={-1: "holdout"})
    counts.loc["all clips"] = folds["fold"].value_counts().rename({-1: "holdout"})
    counts.loc["groups"] = folds.groupby("fold")["group"].nunique().rename({-1: "holdout"})
    return counts


def read_folds(path: Path) -> pd.DataFrame:
    try:
        folds = pd.read_csv(path, dtype={"id": str, "label": str, "group": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read the fold file ({str(exc).splitlines()[0]})") from None
    if list(folds.columns) != COLUMNS or not pd.api.types.is_integer_dtype(folds["fold"]):
        raise UserError(f"{path}: not a fold file (expected integer columns {','.join(COLUMNS)}); "
                        "remake it with python -m competition.folds exp=<experiment> overwrite=true")
    return folds


def check_folds(folds: pd.DataFrame, clips: pd.DataFrame, path: Path, exp: str, voice: bool = False) -> None:
    """The fold file must describe exactly the indexed clips, with the same labels and groups: no silent mismatch.
    With `voice` (folds.groups=voice) the groups were found by voice, not read from the data (which names none):
    the file's groups must then be voice groups, which are not made again to check them."""
    hint = f"the data changed since the folds were made; remake them with {_remake(exp)}"
    voiced = bool(len(folds)) and bool(folds["group"].map(VOICE_GROUP.fullmatch).notna().all())
    if voice:
        _refuse_voice_with_groups(clips)
        if not voiced:
            raise UserError(f"{path} was made without folds.groups=voice (its groups are not voice groups); "
                            f"remake it with {_remake(exp)}, or drop folds.groups=voice")
    elif voiced and not has_own_groups(clips):
        raise UserError(f"{path} was made with folds.groups=voice: set folds.groups=voice in "
                        f"experiments/{exp}/config.yaml, or remake the folds with {_remake(exp)}")
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
    for column, what in (("label", "labels"),) + (() if voice else (("group", "groups (speakers)"),)):
        changed = merged[merged[column] != merged[f"{column}_fold"]]
        if len(changed):
            raise UserError(f"{path}: {len(changed)} clips have other {what} than in the data set "
                            f"(e.g. {changed['id'].iloc[0]}); {hint}")


def validate_folds(folds: pd.DataFrame, n_splits: int, path: Path, exp: str, task: Task = SINGLE) -> None:
    """The fold file as a whole, made or hand-edited: folds 0..n_splits-1 (+ -1), whole groups, learnable classes.

    A file with more folds than the config would be trained only in part and blended without a word; a group in
    two folds leaks its speaker into validation; a class wholly held out can never be learnt.
    """
    remake = _remake(exp)
    numbers = sorted(set(folds["fold"].tolist()))
    trained = [k for k in numbers if k >= 0]
    if len(trained) >= 2 and trained == list(range(len(trained))) and numbers[0] >= -1 and len(trained) != n_splits:
        raise UserError(f"{path} has {len(trained)} folds (0..{len(trained) - 1}) but folds.n_splits is {n_splits}: "
                        f"set folds.n_splits={len(trained)} in experiments/{exp}/config.yaml, "
                        f"or remake the folds with {remake}")
    unexpected = [str(k) for k in numbers if not -1 <= k < n_splits]
    missing = [str(k) for k in range(n_splits) if k not in numbers]
    if unexpected or missing:
        found = ([f"fold {examples(unexpected)}"] if unexpected else []) + \
                ([f"no fold {examples(missing)}"] if missing else [])
        raise UserError(f"{path}: folds must be 0..{n_splits - 1} (folds.n_splits={n_splits}) and -1 for the holdout, "
                        f"but it has {' and '.join(found)}; fix the file or remake it with {remake}")
    folds_of_group = folds.groupby("group")["fold"].unique()
    split = folds_of_group[folds_of_group.map(len) > 1]
    if len(split):
        listing = examples([f"'{g}' in folds {', '.join(map(str, sorted(ks)))}" for g, ks in split.items()])
        raise UserError(f"{path}: every group (speaker) must be in one fold, or validation scores voices the model "
                        f"trained on, but it has {listing}; fix the file or remake it with {remake}")
    in_training = task.explode(folds[folds["fold"] >= 0])
    held = _wholly_held(folds, task)
    if len(held):
        listing = examples([f"'{c}' ({n} clips)" for c, n in held.items()])
        raise UserError(f"{path}: the holdout (fold -1) has every clip of class {listing}, so no fold can learn it; "
                        f"try another folds.seed or a smaller folds.holdout (0 for none), then remake the folds "
                        f"with {remake}")
    per_class = in_training.groupby("label")["fold"].agg(["nunique", "first", "size"])
    alone = per_class[per_class["nunique"] == 1]
    if len(alone):
        listing = examples([f"'{c}' only in fold {k} ({n} clips)" for c, k, n in
                             zip(alone.index, alone["first"], alone["size"])])
        print(f"warning: {path}: the model of a fold never trains on a class found only in that fold: {listing}",
              file=sys.stderr)


def per_clip_warning(folds: pd.DataFrame, path: Path) -> str | None:
    """With no group rule every clip is its own group, so one speaker's clips can sit in several folds and every
    local score flatters: say so wherever those scores are shown."""
    if not (folds["group"] == folds["id"]).all():
        return None
    return (f"warning: {path} knows no speaker (group), so each clip is its own group and clips of one speaker may sit "
            "in several folds: OOF and holdout scores are likely optimistic; name the speaker with "
            "data.train.group_column or a data.train.filename_regex with (?P<group>...), or group the clips by voice "
            "with folds.groups=voice")


def write_folds(folds: pd.DataFrame, path: Path, overwrite: bool) -> bool:
    """Write atomically; an existing different file is kept unless overwrite is asked for. True if written."""
    if path.exists() and not overwrite:  # with overwrite, even an unreadable file is replaced
        if read_folds(path).astype(str).equals(folds.reset_index(drop=True).astype(str)):  # values, not dtypes
            return False
        raise UserError(f"{path} exists with different folds; every experiment on it would change. "
                        "Pass overwrite=true to replace it, or set data.name for a new fold file")
    atomic_write(path, lambda tmp: folds.to_csv(tmp, index=False))
    return True


def ensure_folds(cfg: DictConfig, clips: pd.DataFrame, exp: str) -> pd.DataFrame:
    """The data set's folds, made on first use so a new user's first `run` just works; validated, and checked
    against the data. `exp` names the experiment in the commands the errors suggest."""
    path = fold_path(cfg)
    if path.exists():
        folds = read_folds(path)
        check_folds(folds, clips, path, exp, voice=cfg.folds.groups == "voice")
        validate_folds(folds, cfg.folds.n_splits, path, exp, task_of(cfg))
        return folds
    print(f"no fold file yet: making {path}", file=sys.stderr)
    folds = make_configured_folds(cfg, clips)
    validate_folds(folds, cfg.folds.n_splits, path, exp, task_of(cfg))  # before writing: no invalid file is ever made
    write_folds(folds, path, overwrite=False)
    return folds


def _warn_stale(cfg: DictConfig, path: Path) -> None:
    """Name the trained folds that a new fold file makes stale, and the command that retrains exactly them."""
    from competition.config import EXPERIMENTS_DIR
    from competition.files import file_sha256
    from competition.foldrun import commands_per_overrides, fold_list, made_from_other_fold_file, retrain_command

    for exp, folds in made_from_other_fold_file(EXPERIMENTS_DIR, cfg.data.name, file_sha256(path)).items():
        print(f"warning: {path} changed, so {exp} folds {fold_list(list(folds))} are stale now; retrain exactly them "
              f"with {' and '.join(commands_per_overrides(exp, folds, retrain_command))}", file=sys.stderr)


def main(argv: list[str]) -> None:
    from competition.cache import load_split
    from competition.data import index_train

    options, overrides = parse_cli(argv, {"exp": "default", "overwrite": "false"})
    overwrite = parse_bool("overwrite", options["overwrite"])
    exp = load_experiment(options["exp"], overrides)
    cfg = exp.cfg
    split, cache = load_split(index_train(cfg), cfg, cfg.data.skip_bad_audio)
    folds = make_configured_folds(cfg, split.clips, cache)
    path = fold_path(cfg)
    validate_folds(folds, cfg.folds.n_splits, path, exp.name, task_of(cfg))
    written = write_folds(folds, path, overwrite=overwrite)
    print(class_counts(folds, task_of(cfg)).to_string())
    warning = per_clip_warning(folds, path)
    if warning:
        print(warning, file=sys.stderr)
    if written:
        _warn_stale(cfg, path)
    state = "wrote" if written else "unchanged:"
    found = " found by voice" if cfg.folds.groups == "voice" else ""
    print(f"{state} {path} ({len(folds)} clips, {folds['group'].nunique()} groups{found}, "
          f"{cfg.folds.n_splits} folds, {(folds['fold'] == -1).sum()} clips held out)")


if __name__ == "__main__":
    main_guard(main)
