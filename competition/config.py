"""Experiment configuration: `experiments/<exp>/config.yaml`, the bases it names, and command-line overrides.

One typed schema (the dataclasses below) is the single list of valid keys, so a misspelt or mistyped key fails
at load time with its name and the closest valid keys instead of being silently ignored mid-run.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from competition.augment_params import AugmentConfig, validate_augment
from competition.errors import UserError
from competition.metrics import METRICS
from competition.views import parse_tta_view

EXPERIMENTS_DIR = Path("experiments")


@dataclass
class SourceConfig:
    """Where one set of clips lives and how its labels and groups are read."""

    path: str = ""  # a folder or a .zip (read in place, never extracted)
    subdir: str = ""  # a folder inside `path`, e.g. "train" inside a zip
    layout: str = "files"  # files | table | class_folders | filename (labelled sets), files (unlabelled test)
    table: str = ""  # label table, relative to the source (inside the zip too) or an absolute path
    header: bool = False  # whether the label table's first line names its columns
    delimiter: str = ""  # "" picks tab for .tsv, comma otherwise
    encoding: str = "utf-8"  # the label table's text encoding, e.g. cp1257 or latin-1
    id_column: str = "id"  # with a header: column names; without one, the columns are id, label[, group]
    label_column: str = "label"
    group_column: str = ""  # a column naming the speaker (or any group that must stay in one fold)
    filename_regex: str = ""  # matched against the file name without extension; named groups: label, group
    label_separator: str = " "  # data.task=multilabel: between a clip's labels in the label column ("" none: each
    # clip one label)
    label_columns: list[str] = field(default_factory=list)  # data.task=multilabel: one column per class instead of a
    # label column (0/1, or probabilities for soft labels); the column names are the classes


@dataclass
class DataConfig:
    name: str = ""  # names the fold file folds/<name>.csv and the waveform cache
    task: str = "single"  # single (one class per clip: softmax) | multilabel (any number: a sigmoid per class)
    train: SourceConfig = field(default_factory=lambda: SourceConfig(layout="table"))
    test: Optional[SourceConfig] = None
    extensions: list[str] = field(default_factory=lambda: [".wav", ".flac"])
    skip_bad_audio: bool = False  # leave out unreadable files (listed) instead of stopping
    strict: bool = True  # false leaves out table ids without audio and audio without a label, with a warning
    cache_dir: str = ""  # "" means $COMPETITION_CACHE/waveforms, else ~/.cache/competition/waveforms
    workers: int = 0  # decoding processes; 0 means one per CPU core


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    duration: float = 1.0  # seconds the model sees: shorter clips are padded, longer ones cropped


@dataclass
class FoldsConfig:
    n_splits: int = 5
    seed: int = 42
    holdout: float = 0.0  # fraction of the groups locked away as fold -1, never trained on
    groups: str = ""  # "": the data's own groups (speakers; each clip its own without a group rule) | voice: clusters
    # of the clips' speaker-encoder embeddings stand in for the unnamed speakers (competition.folds.voice_groups)


@dataclass
class FrontendConfig:
    kind: str = "logmel"  # logmel (an image, for CNNs) | clip_stats | encoder (a vector per clip: stats_linear and
    # embedding_* models)
    encoder: str = "speaker"  # kind=encoder: speaker | words | hf:<hub id or folder> (competition.encoders.ENCODERS)
    pool: str = "mean"  # kind=encoder: mean | meanstd of the encoder's frames over the clip
    layer: int = -1  # encoder=hf:...: the hidden layer whose frames are pooled (-1 the last)
    trainable: bool = False  # kind=encoder: fine-tune the encoder end to end with the head (speaker or hf:...; the
    # model must train over epochs: embedding_mlp), instead of a frozen encoder's cached embeddings
    lr_scale: float = 0.1  # trainable: the encoder's learning rate as a fraction of train.lr
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 160
    f_min: float = 0.0
    f_max: Optional[float] = None  # None means sample_rate / 2
    top_db: float = 80.0
    normalize: str = "clip"  # logmel: clip (each image on its own) | dataset (each band over the training clips) | none
    stats: list[str] = field(default_factory=lambda: ["bands", "pitch"])  # clip_stats: bands (each mel band's level
    # and spread) and/or pitch (quantiles of the voiced frames' pitch)


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any timm model name
    pretrained: bool = False
    weights_file: str = ""  # local pretrained weights (.pth, .bin, .safetensors); adapted to in_chans=1
    drop_rate: float = 0.0
    head: str = "plain"  # plain (the backbone's own pooling and classifier) | sed (frame-wise classifier over the
    # feature map pooled over frequency, attention pooling over time: competition.backbones.SEDHead)


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"  # onecycle | cosine | linear | constant, per step
    warmup_epochs: float = 0.0  # linear warm-up before the schedule (onecycle: its own rising phase)
    patience: int = 0  # stop after this many epochs without a better validation metric; 0 never stops early
    metric: str = ""  # single-label: accuracy | balanced_accuracy | macro_f1 | log_loss | roc_auc; multilabel
    # (data.task): lwlrap | cmap | roc_auc | macro_f1_threshold | bce (competition.metrics.METRICS); "" is the task's
    # first: accuracy, or lwlrap
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0  # data.task=multilabel: focal binary cross-entropy's gamma (e.g. 2); 0 is plain BCE
    ohem: float = 1.0  # keep this fraction of each batch's hardest samples in the loss; 1.0 keeps all
    grad_clip: float = 0.0  # max gradient norm; 0 leaves gradients alone
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999), used for evaluation
    swa: int = 0  # the fold's model is the mean of the weights of the last N epochs run (stochastic weight
    # averaging; the EMA's weights where train.ema is set), BatchNorm statistics re-estimated on the training clips;
    # 0 keeps the best epoch
    average_best: int = 0  # the fold's model is the mean of the weights of the K epochs with the best validation
    # metric (checkpoint averaging), BatchNorm statistics re-estimated as for swa; 0 keeps the best epoch
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); ignored on the CPU
    precision: str = "auto"  # CPU training: auto (bf16 autocast where the CPU has bf16 in hardware, AMX or
    # AVX512-BF16; fp32 elsewhere, where bf16 is emulated and slower) | fp32 | bf16 (competition.compute)
    memory_format: str = "auto"  # training's: auto (channels_last for the backbone families measured faster in it,
    # competition.compute.CHANNELS_LAST_FAMILIES) | channels_last | contiguous
    workers: int = 2  # loader processes, used only by the heavy (audiomentations) augmentations
    seed: int = 42


@dataclass
class TTAConfig:
    """Test-time views: each predicted separately, then averaged (view 'mean')."""

    views: list[str] = field(default_factory=lambda: ["plain"])  # competition.views.TTA_VIEWS: plain, window:<f>,
    # shift:<f>, roll:<f>, gain:<dB>, whole (the whole clip, window by window, averaged), whole_max


@dataclass
class SubmissionConfig:
    """The contest's answer-file format."""

    id_column: str = "id"
    label_column: str = "label"
    delimiter: str = ","
    header: bool = True
    id_suffix: str = ""  # appended to each id, e.g. ".wav" when the contest names files
    extension: str = "csv"
    columns: str = "label"  # label: one label column | classes: one probability column per class, named by it
    threshold: float = 0.5  # data.task=multilabel, columns=label: a clip's labels are the classes at or above this
    label_separator: str = " "  # data.task=multilabel, columns=label: between a clip's labels
    window: float = 0.0  # seconds: answer each test recording window by window, one row per window with the id
    # <recording>_<end second> (BirdCLEF); 0: one row per clip
    smooth: float = 0.0  # with window: each window's probabilities mixed with its neighbours', each of them weighing
    # this much (0 to 1/3): an event rarely stops at a window's edge


@dataclass
class TuneConfig:
    """What `python -m competition.tune` searches and how. `space` maps a config key to its choices or its range:
    `frontend.n_mels: {choices: [64, 128, 224]}`, `train.lr: {low: 1e-4, high: 3e-3, log: true}`,
    `augment.gain.p: {low: 0.0, high: 0.8, step: 0.1}`."""

    space: dict[str, Any] = field(default_factory=dict)
    folds: list[int] = field(default_factory=lambda: [0])  # the trial's value is the mean validation metric over these
    pruner: str = "auto"  # auto (median on one fold, wilcoxon on several) | median | hyperband | wilcoxon | none
    startup_trials: int = 3  # finished trials before pruning starts, and random trials before the sampler models them
    warmup_epochs: int = 1  # epochs every trial runs before it can be pruned
    keep_best: int = 3  # trials whose model checkpoints are kept; the others' model.pt are deleted
    heartbeat: int = 60  # seconds; on a database storage, a trial silent for twice this long is failed and retried
    retries: int = 2  # how often a trial whose worker died or was stopped is tried again


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline (runs under wandb/, `wandb sync` later) | online | disabled; $WANDB_MODE wins
    project: str = ""  # "" means $WANDB_PROJECT, else the data set's name (data.name)
    entity: str = ""  # "" means $WANDB_ENTITY, else your default entity
    tags: list[str] = field(default_factory=list)
    images: int = 4  # log-mel images of augmented training inputs logged per fold


@dataclass
class PseudoConfig:
    """Pseudo-labels (competition.labels): unlabelled clips labelled by other experiments' fold models, fold k by
    their fold k models alone, added to each fold's training clips only."""

    source: list[str] = field(default_factory=list)  # experiments whose folds label the clips; empty: none
    test: str = ""  # the clips: "" the configured test set (fold_<k>/test.csv), else a set predict named
    threshold: float = 0.9  # keep clips whose most likely class is this sure (multilabel: each class, present or not)
    # hard: that class (multilabel: the classes at 0.5) | soft: the probabilities (models fitted exactly take the hard)
    targets: str = "hard"


@dataclass
class TrackingConfig:
    """Dashboards that mirror folds, trials and blends; the project's own files stay the source of truth."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    base: Any = None  # a path or list of paths, relative to the file that names them
    recipe: Any = None  # a path to a recipe file (frontend, model, train, augment, tta), relative to the file
    contest: Any = None  # a path to a contest file (data, audio, folds, submission), relative to the file
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)


MIN_WINDOW = 0.1  # seconds: the shortest answer window (submission.window)
TASK_METRICS = {"single": "accuracy", "multilabel": "lwlrap"}  # train.metric when none is given
SPACE_KEYS = ("choices", "low", "high", "log", "step")
STATS = ("bands", "pitch")  # frontend.stats: what ClipStats gives, each mel band's level and spread, the voiced pitch
# frontend.encoder's kinds (competition.encoders.ENCODERS: `hf` is written hf:<hub id or folder>), and those that
# frontend.trainable can fine-tune (competition.encoders.TRAINABLE); named here so configs are checked without torch
ENCODER_KINDS = ("speaker", "words", "hf")
TRAINABLE_ENCODERS = ("speaker", "hf")
# Encoders whose weights come in a pinned wheel: the only ones a bundle may name. A transformers encoder is a folder
# or hub id of the packer's machine, which a bundle neither carries nor should make another machine read or fetch.
BUNDLE_ENCODERS = ("speaker", "words")
CHOICES = {
    "data.train.layout": ("table", "class_folders", "filename", "files"),
    "frontend.kind": ("logmel", "clip_stats", "encoder"),
    "data.task": ("single", "multilabel"),
    "model.head": ("plain", "sed"),
    "submission.columns": ("label", "classes"),
    "folds.groups": ("", "voice"),
    "pseudo.targets": ("hard", "soft"),
    "frontend.pool": ("mean", "meanstd"),
    "frontend.normalize": ("clip", "dataset", "none"),
    "train.schedule": ("onecycle", "cosine", "linear", "constant"),
    "train.precision": ("auto", "fp32", "bf16"),  # competition.compute
    "train.memory_format": ("auto", "channels_last", "contiguous"),
    "train.metric": tuple(METRICS),
    "tune.pruner": ("auto", "median", "hyperband", "wilcoxon", "none"),  # competition.tune.PRUNERS, and auto
    "tracking.wandb.mode": ("offline", "online", "disabled"),
}


@dataclass
class Experiment:
    """A named experiment: its folder (outputs go to fold_<k>/ beside the config) and resolved config."""

    name: str
    dir: Path
    cfg: DictConfig
    overrides: list[str] = field(default_factory=list)  # the command-line overrides resolved into cfg

    def fold_dir(self, fold: int) -> Path:
        return self.dir / f"fold_{fold}"


def _demo_path(sub: str) -> str:
    from competition.demo import demo_root

    return str(demo_root() / sub)


def _register_resolvers() -> None:
    """`${demo:words/train}` in a config gives the built-in demo's path; load_config generates the demo there on first
    use, once the config has passed its checks."""
    if not OmegaConf.has_resolver("demo"):
        OmegaConf.register_resolver("demo", _demo_path)


def valid_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts, for 'did you mean' suggestions."""
    node = OmegaConf.structured(Config) if node is None else node
    keys = []
    for key in node:
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        child = OmegaConf.select(node, str(key))
        if isinstance(child, DictConfig):
            keys.extend(valid_keys(child, f"{dotted}."))
    return keys


def _suggest(key: str) -> str:
    keys = valid_keys() + ["data.test." + k.split(".", 2)[2] for k in valid_keys() if k.startswith("data.train.")]
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # a right leaf under the wrong section, e.g. epochs=3 for train.epochs
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:3]
    return f"; did you mean {', '.join(close)}?" if close else "; see competition/config.py for the valid keys"


def _merge(base: DictConfig, layer: DictConfig, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except ConfigKeyError as exc:
        key = exc.full_key or str(exc.key)
        raise UserError(f"{origin}: unknown config key '{key}'{_suggest(key)}") from None
    except ValidationError as exc:
        if exc.full_key is None:  # a whole section given a plain value, e.g. `train: 5`; omegaconf names no key
            found = _section_given_a_value(OmegaConf.to_container(base), OmegaConf.to_container(layer))
            if found is None:
                raise UserError(f"{origin}: a section is not a mapping of keys to values "
                                f"({str(exc).splitlines()[0]})") from None
            key, value, keys = found
            example = f"{key}.{keys[0]}=..." if origin == "command line" else f"{key}: {{{keys[0]}: ...}}"
            raise UserError(f"{origin}: '{key}' is a section (keys {', '.join(keys[:3])}...), not a single value (got "
                            f"{value!r}); set its keys instead, e.g. {example}") from None
        raise UserError(f"{origin}: bad value {exc.value!r} for '{exc.full_key}': {exc.msg.splitlines()[0]}") from None


def _section_given_a_value(schema: Any, layer: Any, prefix: str = "") -> tuple[str, Any, list[str]] | None:
    """The first key where `layer` gives a plain value for a section of `schema` (its dotted name, the value, and the
    section's keys): the merge refuses it without naming the key."""
    for key, value in layer.items():
        section = schema.get(key) if isinstance(schema, dict) else None
        if not isinstance(section, dict):
            continue
        if not isinstance(value, dict):
            return f"{prefix}{key}", value, [str(k) for k in section] or ["<key>"]
        found = _section_given_a_value(section, value, f"{prefix}{key}.")
        if found:
            return found
    return None


def _read_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.MarkedYAMLError as exc:  # its first line is only the context; the problem and its line come later
        line = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        raise UserError(f"{path}: not valid YAML ({line}{exc.problem or exc.context})") from None
    except Exception as exc:  # other yaml.YAMLError and friends: report the first line, not a traceback
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path}: a config must be a mapping of keys to values")
    return cfg


# A config is composed of a contest (what the data is and what the answer file looks like) and a recipe (how a model
# is trained on it), so a recipe can be reused on another contest without carrying the first one's data or answer
# format along. Every section of Config belongs to exactly one of the two (tests/test_config.py checks it).
META_KEYS = ("base", "recipe", "contest")  # top-level keys naming other files; popped before merging
RECIPE_SECTIONS = ("frontend", "model", "train", "augment", "tta", "tune")
CONTEST_SECTIONS = ("data", "audio", "folds", "submission")
# set by the experiment, not its parts: where its runs are mirrored, and which other experiments label clips for it
EXPERIMENT_SECTIONS = ("tracking", "pseudo")
_SECTIONS = {"recipe": RECIPE_SECTIONS, "contest": CONTEST_SECTIONS}


def _check_part(cfg: DictConfig, path: Path, kind: str) -> None:
    """A file named as `recipe:` holds only recipe sections, one named as `contest:` only contest sections; each
    may name a base of its own kind only. Unknown keys are left to the merge, which suggests the closest ones."""
    other = "contest" if kind == "recipe" else "recipe"
    for key in cfg:
        key = str(key)
        if key in ("base", other):
            raise UserError(f"{path}: a {kind} may not name a '{key}:' (it may name only another {kind}, with "
                            f"'{kind}:'): name the {key} in the experiment's own config.yaml")
        if key in _SECTIONS[other]:
            raise UserError(f"{path}: a {kind} may not set '{key}' (a {other} key): move it to the {other} file, "
                            "or to the experiment's own config.yaml")
        if key in EXPERIMENT_SECTIONS:
            raise UserError(f"{path}: a {kind} may not set '{key}': it belongs to the experiment; move it to the "
                            "experiment's own config.yaml (or a base it names)")


def _named_file(cfg: DictConfig, key: str, path: Path) -> Optional[str]:
    value = cfg.pop(key, None)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{path}: '{key}' names one file, a path relative to this file; got {value!r}")
    return value or None


def _load_layers(path: Path, seen: tuple[Path, ...] = (), kind: str = "config",
                 named_as: str = "base") -> list[tuple[DictConfig, str]]:
    """The file and the files it names, in the order they apply, so later layers override earlier ones: its bases,
    then its contest, then its recipe, then the file itself. `kind` is what the file was named as: a recipe or a
    contest may hold only its own sections; any other config may hold anything."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: '{named_as}' chain loops back to itself")
    if not path.is_file():
        raise UserError(f"{path}: config not found" + (f" (named as a {named_as} in {seen[-1]})" if seen else ""))
    cfg = _read_yaml(path)
    if kind in _SECTIONS:
        _check_part(cfg, path, kind)
    bases = cfg.pop("base", None) or []
    contest = _named_file(cfg, "contest", path)
    recipe = _named_file(cfg, "recipe", path)
    layers = []
    for base in [bases] if isinstance(bases, str) else list(bases):
        layers += _load_layers(path.parent / str(base), seen + (path,), "config", "base")
    if contest:
        layers += _load_layers(path.parent / contest, seen + (path,), "contest", "contest")
    if recipe:
        layers += _load_layers(path.parent / recipe, seen + (path,), "recipe", "recipe")
    return layers + [(cfg, str(path))]


def find_experiment(exp: str) -> Path:
    """The config file of an experiment given by name (experiments/<exp>) or by a path to its folder or YAML."""
    candidate = Path(exp)
    for path in (EXPERIMENTS_DIR / exp / "config.yaml", candidate / "config.yaml", candidate):
        if path.is_file():
            return path
    known = sorted(p.parent.name for p in EXPERIMENTS_DIR.glob("*/config.yaml"))
    close = difflib.get_close_matches(exp, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known experiments: {', '.join(known) or 'none'}"
    raise UserError(f"experiment '{exp}' not found (looked for {EXPERIMENTS_DIR / exp / 'config.yaml'}); {hint}")


SPACE_PREFIX = "tune.space."


def parse_value(item: str) -> Any:
    """The value of one `key=value` argument, read as YAML (as OmegaConf reads a dot list): a list or mapping comes back
    as plain Python. A value YAML cannot read (`tta.views=[plain`) is one line naming the argument."""
    if "=" not in item or item.startswith("="):
        raise UserError(f"command-line argument '{item}' is not key=value (e.g. train.epochs=10)")
    try:
        value = OmegaConf.from_dotlist([f"value={item.partition('=')[2]}"]).value
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc).splitlines()[0]
        raise UserError(f"command-line argument '{item}' cannot be read ({problem}); close every bracket and quote, "
                        "and quote the whole argument for the shell, e.g. 'tta.views=[plain,whole]'") from None
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def parse_overrides(overrides: list[str]) -> DictConfig:
    """The command line's config keys as one layer. `tune.space.<key>=<choices or range>` (or `...<key>.choices=[...]`)
    sets one searched key: a space's keys are dotted config keys, which a plain dot list would split apart."""
    parsed = OmegaConf.create()
    for item in overrides:
        value = parse_value(item)
        key = item.partition("=")[0]
        if key.startswith(SPACE_PREFIX):
            name = key[len(SPACE_PREFIX):]
            searched, _, entry = name.rpartition(".")
            if searched and entry in SPACE_KEYS:  # tune.space.train.lr.low=1e-4: one entry of the key's range
                name, value = searched, {entry: value}
            layer = OmegaConf.create({"tune": {"space": {name: value}}})
        else:
            try:
                layer = OmegaConf.from_dotlist([item])
            except OmegaConfBaseException as exc:  # a key OmegaConf cannot take apart, e.g. `a..b=1`
                raise UserError(f"command-line argument '{item}' cannot be read ({str(exc).splitlines()[0]})") from None
        parsed = OmegaConf.merge(parsed, layer)
    return parsed


def set_by(config_file: Path, overrides: list[str], *keys: str) -> str:
    """Where a setting's value comes from: 'command line' when an argument sets it (or replaces the whole tune.space
    it is in), else the last of the experiment's files that sets it (a base, contest, recipe or the file itself), so
    a message blames the place to edit. `keys` is the path to it, e.g. ("tune", "space", "train.lr")."""

    def holds(node: Any) -> bool:
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        return True

    if holds(OmegaConf.to_container(parse_overrides(overrides))) or (
            keys[:2] == ("tune", "space") and "tune.space" in command_line_keys(overrides)):
        return "command line"
    for layer, origin in reversed(_load_layers(config_file)):
        if holds(OmegaConf.to_container(layer)):
            return origin
    return str(config_file)


def command_line_keys(overrides: list[str]) -> set[str]:
    """The keys the arguments name, as given (`tune.space={}` names tune.space)."""
    return {item.partition("=")[0] for item in overrides}


def check_encoder_name(name: str) -> None:
    """Refuse an unknown `frontend.encoder` before anything is loaded."""
    kind = name.split(":", 1)[0]
    if kind not in ENCODER_KINDS or (kind == "hf") != (":" in name and bool(name.split(":", 1)[1])):
        raise UserError(f"frontend.encoder '{name}' is not an encoder; use one of speaker, words or "
                        "hf:<hub id or folder>")


def check_trainable(name: str) -> None:
    """Refuse, before anything is loaded, to fine-tune an encoder that is not a torch module."""
    check_encoder_name(name)
    if name.split(":", 1)[0] not in TRAINABLE_ENCODERS:
        raise UserError(f"frontend.trainable: frontend.encoder={name} runs as an exported ONNX graph, which cannot "
                        "be fine-tuned; fine-tune speaker or hf:<model>, or set frontend.trainable=false")


def validate(cfg: DictConfig, origin: str, command_line: set[str] = frozenset()) -> None:
    """Checks a schema cannot express: choices, ranges, and values needed before any work starts. A bad value is
    blamed on the command line when it came from there (`command_line`: the dotted keys it set), else on the file."""

    def where(key: str) -> str:
        given = any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.") for k in command_line)
        return "command line" if given else origin

    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            listing = ", ".join(c or "''" for c in choices)  # '' is a choice too (folds.groups)
            raise UserError(f"{where(key)}: '{key}' is '{value}'; {hint}choose one of {listing}")
    metric = METRICS[cfg.train.metric]
    if cfg.data.task not in metric.tasks:
        fitting = ", ".join(name for name, m in METRICS.items() if cfg.data.task in m.tasks)
        given = [where(key) for key in ("train.metric", "data.task")]
        raise UserError(f"{'command line' if 'command line' in given else origin}: 'train.metric' is {metric.name}, "
                        f"which does not score data.task={cfg.data.task} contests; choose one of {fitting}")
    if cfg.train.focal_gamma < 0:
        raise UserError(f"{where('train.focal_gamma')}: 'train.focal_gamma' cannot be negative, got "
                        f"{cfg.train.focal_gamma}")
    check_submission(cfg.submission, lambda key: where(f"submission.{key}"))
    if cfg.data.test is not None and cfg.data.test.layout != "files":
        raise UserError(f"{where('data.test.layout')}: 'data.test.layout' must be 'files' (test clips carry no labels)")
    positive = ["audio.sample_rate", "audio.duration", "folds.n_splits", "frontend.n_mels", "frontend.n_fft",
                "frontend.hop_length", "train.epochs", "train.batch_size", "train.eval_batch_size", "train.lr"]
    for key in positive:
        if not OmegaConf.select(cfg, key) > 0:
            raise UserError(f"{where(key)}: '{key}' must be positive, got {OmegaConf.select(cfg, key)}")
    if cfg.folds.n_splits < 2:
        raise UserError(f"{where('folds.n_splits')}: 'folds.n_splits' must be at least 2, got {cfg.folds.n_splits}")
    for key in ("data.train.path", "data.test.path"):  # one from a file is checked where it is read (data.Source)
        path = OmegaConf.select(cfg, key)
        if path and where(key) == "command line" and not Path(path).expanduser().exists():
            raise UserError(f"command line: '{key}' is '{path}': no such folder or zip; give the folder or .zip of "
                            "the clips (relative to the folder you run the command from)")
    if not 0.0 <= cfg.folds.holdout <= 0.5:  # folds hold out one group in round(1 / holdout), at least 2
        raise UserError(f"{where('folds.holdout')}: 'folds.holdout' is {cfg.folds.holdout}, but it works from 0 (no "
                        "holdout) to 0.5 (half the groups; a larger fraction would hold out half anyway); give e.g. 0.1")
    for key in ("train.label_smoothing", "train.ema"):
        if not 0.0 <= OmegaConf.select(cfg, key) < 1.0:
            raise UserError(f"{where(key)}: '{key}' is a fraction in [0, 1), got {OmegaConf.select(cfg, key)}")
    if not 0.0 < cfg.train.ohem <= 1.0:
        raise UserError(f"{where('train.ohem')}: 'train.ohem' is the fraction of each batch kept, in (0, 1], got {cfg.train.ohem}")
    validate_augment(cfg.augment, where("augment"))
    if not 0.0 <= cfg.pseudo.threshold <= 1.0:
        raise UserError(f"{where('pseudo.threshold')}: 'pseudo.threshold' is a probability in [0, 1], got "
                        f"{cfg.pseudo.threshold}")
    for name in [*cfg.pseudo.source, cfg.pseudo.test]:
        if "/" in name or name.startswith("."):
            key = "pseudo.test" if name == cfg.pseudo.test else "pseudo.source"
            raise UserError(f"{where(key)}: '{key}' names '{name}'; give experiment and test set names, not paths")
    if cfg.frontend.kind in ("clip_stats", "encoder"):
        for key in ("spec_time", "spec_freq", "cutmix"):
            if cfg.augment[key].p > 0:
                raise UserError(f"{where(f'augment.{key}')}: 'augment.{key}' works on spectrogram images but "
                                f"frontend.kind={cfg.frontend.kind} gives one vector per clip; set augment.{key}.p=0")
    if not cfg.frontend.stats or not set(cfg.frontend.stats) <= set(STATS):
        raise UserError(f"{where('frontend.stats')}: 'frontend.stats' is {list(cfg.frontend.stats)}; give one or both "
                        f"of {', '.join(STATS)}")
    if cfg.frontend.kind == "encoder":
        try:
            (check_trainable if cfg.frontend.trainable else check_encoder_name)(cfg.frontend.encoder)
        except UserError as exc:
            raise UserError(f"{where('frontend.encoder')}: {exc}") from None
    if cfg.frontend.trainable and cfg.frontend.kind != "encoder":
        raise UserError(f"{where('frontend.trainable')}: 'frontend.trainable' fine-tunes a pretrained encoder; set "
                        f"frontend.kind=encoder, or frontend.trainable=false (a {cfg.frontend.kind} frontend has no "
                        "weights to train)")
    if not cfg.frontend.lr_scale > 0:
        raise UserError(f"{where('frontend.lr_scale')}: 'frontend.lr_scale' is the encoder's share of train.lr, above "
                        f"0; got {cfg.frontend.lr_scale}")
    if not cfg.tta.views:
        raise UserError(f"{where('tta.views')}: 'tta.views' is empty; use [plain] for no test-time augmentation")
    for view in cfg.tta.views:
        parse_tta_view(view)
    for key in ("train.warmup_epochs", "train.grad_clip", "train.workers", "train.patience", "tune.startup_trials",
                "tune.warmup_epochs", "tune.retries"):
        if OmegaConf.select(cfg, key) < 0:
            raise UserError(f"{where(key)}: '{key}' cannot be negative, got {OmegaConf.select(cfg, key)}")
    for key in ("train.swa", "train.average_best"):
        if not 0 <= OmegaConf.select(cfg, key) <= cfg.train.epochs:
            raise UserError(f"{where(key)}: '{key}' counts epochs to average, from 0 (off) to train.epochs "
                            f"({cfg.train.epochs}), got {OmegaConf.select(cfg, key)}")
    if cfg.train.swa and cfg.train.average_best:
        given = [where(key) for key in ("train.swa", "train.average_best")]
        raise UserError(f"{'command line' if 'command line' in given else origin}: 'train.swa' and "
                        "'train.average_best' are both set; average either the last epochs or the best ones, not both")
    for key in ("tune.keep_best", "tune.heartbeat"):
        if OmegaConf.select(cfg, key) < 1:
            raise UserError(f"{where(key)}: '{key}' must be at least 1, got {OmegaConf.select(cfg, key)}")
    if cfg.tune.pruner == "wilcoxon" and len(cfg.tune.folds) == 1:
        given = [where(key) for key in ("tune.pruner", "tune.folds")]
        raise UserError(f"{'command line' if 'command line' in given else origin}: 'tune.pruner' is wilcoxon, which "
                        f"compares trials fold by fold, but tune.folds has one fold ({cfg.tune.folds[0]}), so it could "
                        "never prune; use tune.pruner=median (or auto), or score trials on several folds, e.g. "
                        "tune.folds=[0,1,2]")
    _check_space(cfg, where)


def check_submission(sub: DictConfig, where: Callable[[str], str]) -> None:
    """The answer format's values (also a bundle's, which no config file checked): `where(key)` names who set it."""
    if sub.columns not in CHOICES["submission.columns"]:
        raise UserError(f"{where('columns')}: 'submission.columns' is '{sub.columns}'; choose one of label, classes")
    if sub.window != 0 and not sub.window >= MIN_WINDOW:  # not a million windows a minute
        raise UserError(f"{where('window')}: 'submission.window' is the answer window in seconds, 0 (one answer per "
                        f"clip) or at least {MIN_WINDOW}, got {sub.window}")
    if not 0.0 <= sub.smooth <= 1 / 3:
        raise UserError(f"{where('smooth')}: 'submission.smooth' is each neighbouring window's weight, from 0 to 1/3, "
                        f"got {sub.smooth}")
    if not 0.0 < sub.threshold < 1.0:
        raise UserError(f"{where('threshold')}: 'submission.threshold' is a probability in (0, 1), got {sub.threshold}")


def _check_space(cfg: DictConfig, where: Callable[[str], str]) -> None:
    """Each `tune.space` entry names a recipe key of the schema and gives a non-empty list of choices, or low <= high
    (log: low > 0), every value of the key's type. Trials change only recipe keys: data, audio, folds and the answer
    format are what every trial shares (one decoding, one fold file)."""
    schema = OmegaConf.structured(Config)  # built once: about 0.1 s each, and a space has dozens of values
    leaves = {key for key in valid_keys(schema) if not isinstance(OmegaConf.select(cfg, key), DictConfig)}
    origin = where("tune.folds")
    for position, fold in enumerate(cfg.tune.folds):
        if not 0 <= fold < cfg.folds.n_splits:
            raise UserError(f"{origin}: 'tune.folds' lists fold {fold}, but the folds are 0..{cfg.folds.n_splits - 1}")
        if fold in list(cfg.tune.folds)[:position]:
            raise UserError(f"{origin}: 'tune.folds' lists fold {fold} twice")
    if not cfg.tune.folds:
        raise UserError(f"{origin}: 'tune.folds' is empty; name the folds a trial is scored on, e.g. [0]")
    for key, spec in cfg.tune.space.items():
        name = f"tune.space.{key}"
        origin = where(name)
        if key not in leaves:
            raise UserError(f"{origin}: '{name}' names no config key{_suggest(key)}")
        if key.split(".")[0] not in RECIPE_SECTIONS or key.startswith("tune."):
            raise UserError(f"{origin}: '{name}': only recipe keys ({', '.join(RECIPE_SECTIONS[:-1])}) can be tuned; "
                            f"'{key}' is shared by every trial")
        if not isinstance(spec, DictConfig) or not spec:
            raise UserError(f"{origin}: '{name}' must be {{choices: [...]}} or {{low: ..., high: ...[, log: true]"
                            f"[, step: ...]}}, got {spec!r}")
        unknown = [str(k) for k in spec if k not in SPACE_KEYS]
        if unknown:
            raise UserError(f"{origin}: '{name}' has unknown entries {', '.join(unknown)}; use {', '.join(SPACE_KEYS)}")
        if "choices" in spec:
            if set(spec) != {"choices"}:
                raise UserError(f"{origin}: '{name}' gives choices and a range; give one of them")
            if not OmegaConf.is_list(spec.choices) or not spec.choices:
                raise UserError(f"{origin}: '{name}.choices' must be a non-empty list, got {spec.choices!r}")
            values = list(spec.choices)
        else:
            if "low" not in spec or "high" not in spec:
                raise UserError(f"{origin}: '{name}' needs both low and high (or a list of choices)")
            low, high = spec.low, spec.high
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
                raise UserError(f"{origin}: '{name}' low and high must be numbers, got {low!r} and {high!r}")
            if low > high:
                raise UserError(f"{origin}: '{name}' has low {low} > high {high}")
            if spec.get("log") and low <= 0:
                raise UserError(f"{origin}: '{name}' is searched on a log scale, so low must be positive, got {low}")
            if spec.get("log") and spec.get("step"):
                raise UserError(f"{origin}: '{name}' cannot have both log and step (Optuna samples one or the other)")
            if spec.get("step") is not None and not spec.step > 0:
                raise UserError(f"{origin}: '{name}.step' must be positive, got {spec.step}")
            values = [low, high]
        section, _, leaf = key.rpartition(".")  # each value merged into the key's own section of the schema
        for value in values:
            _merge(OmegaConf.select(schema, section), OmegaConf.create({leaf: value}), f"{origin}: '{name}'")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _flatten(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def config_changes(old: DictConfig | dict, new: DictConfig | dict) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs, with (old, new) values, in key order."""
    a, b = (_flatten(OmegaConf.to_container(c) if isinstance(c, DictConfig) else c) for c in (old, new))
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def load_config(config_file: Path, overrides: list[str] = ()) -> DictConfig:
    """The schema's defaults, then the file's bases, the file, and the command line, each overriding the last."""
    _register_resolvers()
    cfg = OmegaConf.structured(Config)
    for layer, origin in _load_layers(config_file):
        cfg = _merge(cfg, layer, origin)
    command_line = parse_overrides(list(overrides))
    if "tune.space" in command_line_keys(list(overrides)):  # a whole space given replaces the files' space
        cfg.tune.space = {}
    cfg = _merge(cfg, command_line, "command line")
    uses_demo = any("${demo:" in str(value) for value in _flatten(OmegaConf.to_container(cfg)).values())
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise UserError(f"{config_file}: cannot resolve an interpolation: {str(exc).splitlines()[0]}") from None
    given = set(_flatten(OmegaConf.to_container(command_line)))
    if not cfg.train.metric:  # resolved here, so that a fold's record names the metric it was scored with
        cfg.train.metric = TASK_METRICS.get(cfg.data.task, "accuracy")
    if not cfg.data.name:
        origin = "command line" if "data.name" in given else config_file
        raise UserError(f"{origin}: 'data.name' is empty; name the data set (it names folds/<name>.csv)")
    validate(cfg, str(config_file), given)
    if uses_demo:  # a mistyped command line is refused before seconds of generating
        from competition.demo import ensure_demo

        ensure_demo()
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_experiment(exp: str, overrides: list[str] = ()) -> Experiment:
    config_file = find_experiment(exp)
    cfg = load_config(config_file, overrides)
    return Experiment(name=config_file.parent.name, dir=config_file.parent, cfg=cfg, overrides=list(overrides))


def parse_cli(argv: list[str], command_keys: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split `key=value` arguments into the command's own keys (with their defaults) and config overrides."""
    options = dict(command_keys)
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"argument '{arg}' is not key=value (e.g. exp=default fold=0 train.epochs=5)")
        if key in command_keys:
            options[key] = value
        else:
            overrides.append(arg)
    return options, overrides
