"""Experiment configs: bases, overrides, and one clear line for every kind of mistake."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from competition import folds
from competition.config import (CONTEST_SECTIONS, EXPERIMENT_SECTIONS, META_KEYS, RECIPE_SECTIONS, Config,
                                SubmissionConfig, _load_layers, _merge, find_experiment, load_experiment, parse_cli,
                                valid_keys)
from competition.errors import UserError
from conftest import TONES_CONFIG, error_line, run_verb

REPO = Path(__file__).resolve().parents[1]

BASE = """\
data:
  name: voices
  train:
    path: data/train
    table: targets.tsv
  test:
    path: data/test
audio:
  sample_rate: 8000
train:
  epochs: 30
  lr: 0.003
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def experiments(workdir: Path) -> Path:
    """experiments/_base/voices.yaml and experiments/small/config.yaml inheriting from it."""
    write(workdir / "experiments" / "_base" / "voices.yaml", BASE)
    write(workdir / "experiments" / "small" / "config.yaml",
          "base: ../_base/voices.yaml\ntrain:\n  epochs: 5\nmodel:\n  name: mobilenetv3_small_100\n")
    return workdir / "experiments"


def test_base_inheritance(experiments):
    exp = load_experiment("small")
    assert exp.name == "small" and exp.dir == Path("experiments/small") and exp.fold_dir(2) == exp.dir / "fold_2"
    cfg = exp.cfg
    assert cfg.train.epochs == 5 and cfg.model.name == "mobilenetv3_small_100"  # the experiment's own keys
    assert cfg.train.lr == 0.003 and cfg.audio.sample_rate == 8000 and cfg.data.name == "voices"  # from the base
    assert cfg.data.train.layout == "table" and cfg.train.batch_size == 32  # schema defaults
    assert cfg.data.test.path == "data/test" and cfg.data.test.layout == "files"
    with pytest.raises(Exception):
        cfg.train.epochs = 1  # read-only: no stage can change what the others see


def test_chain_of_two_bases_and_a_list_of_bases(experiments):
    write(experiments / "_base" / "long.yaml", "base: voices.yaml\ntrain:\n  epochs: 80\n  lr: 0.001\n")
    write(experiments / "_base" / "wide.yaml", "frontend:\n  n_mels: 224\ntrain:\n  lr: 0.0005\n")
    write(experiments / "chain" / "config.yaml", "base: ../_base/long.yaml\ntrain:\n  batch_size: 16\n")
    write(experiments / "both" / "config.yaml", "base: [../_base/long.yaml, ../_base/wide.yaml]\n")
    chain = load_experiment("chain").cfg
    assert (chain.train.epochs, chain.train.lr, chain.train.batch_size) == (80, 0.001, 16)
    assert chain.data.name == "voices" and chain.audio.sample_rate == 8000
    both = load_experiment("both").cfg
    assert (both.train.epochs, both.train.lr, both.frontend.n_mels) == (80, 0.0005, 224)  # later bases win


def test_dotted_overrides_win_over_the_file(experiments):
    other = write(experiments.parent / "other data.zip", "")  # a path given on the command line must exist
    cfg = load_experiment("small", ["train.epochs=3", f"data.train.path={other}",
                                    "frontend.f_max=4000", "data.extensions=[.wav]"]).cfg
    assert cfg.train.epochs == 3 and cfg.data.train.path == str(other)
    assert cfg.frontend.f_max == 4000.0 and list(cfg.data.extensions) == [".wav"]
    assert cfg.train.lr == 0.003


def test_experiment_given_as_a_path(experiments):
    assert find_experiment("experiments/small") == Path("experiments/small/config.yaml")
    assert load_experiment("experiments/small/config.yaml").name == "small"


def test_unknown_key_in_the_file(experiments):
    write(experiments / "typo" / "config.yaml", "base: ../_base/voices.yaml\ntrain:\n  epoch: 5\n")
    with pytest.raises(UserError, match=r"typo/config\.yaml: unknown config key 'train\.epoch'; "
                                        r"did you mean train\.epochs"):
        load_experiment("typo")


def test_unknown_key_in_a_base_names_the_base(experiments):
    write(experiments / "_base" / "voices.yaml", BASE + "fronted:\n  n_mels: 128\n")
    with pytest.raises(UserError, match=r"_base/voices\.yaml: unknown config key 'fronted'; did you mean frontend"):
        load_experiment("small")


@pytest.mark.parametrize("override, key, suggestion", [
    ("train.epoch=3", "train.epoch", "train.epochs"),
    ("epochs=3", "epochs", "train.epochs"),
    ("data.train.tabel=t.csv", "data.train.tabel", "data.train.table"),
    ("data.test.sub_dir=test", "data.test.sub_dir", "data.test.subdir"),
])
def test_unknown_key_on_the_command_line(experiments, override, key, suggestion):
    with pytest.raises(UserError) as error:
        load_experiment("small", [override])
    message = str(error.value)
    assert message.startswith(f"command line: unknown config key '{key}'; did you mean ")
    assert suggestion in message.split("did you mean ")[1].split(", ")[0].rstrip("?")  # the best guess first


def test_mistyped_values(experiments):
    with pytest.raises(UserError, match=r"command line: bad value 'abc' for 'train\.epochs': .*Integer"):
        load_experiment("small", ["train.epochs=abc"])
    with pytest.raises(UserError, match=r"command line: bad value 'maybe' for 'model\.pretrained'"):
        load_experiment("small", ["model.pretrained=maybe"])


@pytest.mark.parametrize("text, override, key", [("train: 5", "train=5", "train"),
                                                  ("augment: {mixup: 0.5}", "augment.mixup=0.5", "augment.mixup")])
def test_a_section_given_a_value_names_the_section(experiments, text: str, override: str, key: str):
    keys = list(OmegaConf.select(OmegaConf.structured(Config), key))
    write(experiments / "scalar" / "config.yaml", f"base: ../_base/voices.yaml\n{text}\n")
    with pytest.raises(UserError) as refused:
        load_experiment("scalar")
    value = text.rsplit(": ", 1)[1].rstrip("}")
    assert str(refused.value).endswith(f"scalar/config.yaml: '{key}' is a section (keys {', '.join(keys[:3])}...), "
                                       f"not a single value (got {value}); set its keys instead, e.g. "
                                       f"{key}: {{{keys[0]}: ...}}"), refused.value
    with pytest.raises(UserError) as refused:
        load_experiment("small", [override])
    assert str(refused.value) == (f"command line: '{key}' is a section (keys {', '.join(keys[:3])}...), not a single "
                                  f"value (got {value}); set its keys instead, e.g. {key}.{keys[0]}=...")


def test_override_that_is_not_key_value_or_not_yaml(experiments):
    with pytest.raises(UserError, match=r"command-line argument 'train\.epochs' is not key=value"):
        load_experiment("small", ["train.epochs"])
    for argument in ("data.extensions=[.wav", "tta.views=[plain"):  # the argument is named, with what to do
        with pytest.raises(UserError) as refused:
            load_experiment("small", ["train.epochs=2", argument])
        assert str(refused.value) == (f"command-line argument '{argument}' cannot be read (did not find expected ',' "
                                      "or ']'); close every bracket and quote, and quote the whole argument for the "
                                      "shell, e.g. 'tta.views=[plain,whole]'")


def test_a_data_path_given_on_the_command_line_is_blamed_there(experiments):
    for key in ("data.train.path", "data.test.path"):
        with pytest.raises(UserError) as refused:
            load_experiment("small", [f"{key}=nowhere"])
        assert str(refused.value) == (f"command line: '{key}' is 'nowhere': no such folder or zip; give the folder or "
                                      ".zip of the clips (relative to the folder you run the command from)")
    (experiments.parent / "elsewhere").mkdir()
    assert load_experiment("small", ["data.train.path=elsewhere"]).cfg.data.train.path == "elsewhere"
    assert load_experiment("small").cfg.data.train.path == "data/train"  # a file's path is checked where it is read


def test_search_space_keys_on_the_command_line(experiments):
    """A space's keys are dotted config keys: tune.space.frontend.n_mels=... names one, not a section 'frontend'."""
    write(experiments / "small" / "config.yaml", "base: ../_base/voices.yaml\ntune:\n  space:\n"
          "    train.lr: {low: 0.001, high: 0.01}\n")
    cfg = load_experiment("small", ["tune.space.frontend.n_mels={choices: [32, 64]}", "tune.space.train.lr.low=0.002",
                                    "tune.space.train.lr.log=true"]).cfg
    assert OmegaConf.to_container(cfg.tune.space) == {"train.lr": {"low": 0.002, "high": 0.01, "log": True},
                                                      "frontend.n_mels": {"choices": [32, 64]}}
    whole = load_experiment("small", ["tune.space={frontend.n_mels: {choices: [32]}}"]).cfg  # replaces the file's
    assert OmegaConf.to_container(whole.tune.space) == {"frontend.n_mels": {"choices": [32]}}
    assert OmegaConf.to_container(load_experiment("small", ["tune.space={}"]).cfg.tune.space) == {}
    with pytest.raises(UserError, match=r"^command line: 'tune\.space\.frontend\.n_mel' names no config key; did you "
                                        r"mean frontend\.n_mels"):
        load_experiment("small", ["tune.space.frontend.n_mel={choices: [32]}"])


def test_a_bad_search_space_in_the_file_is_blamed_on_the_file(experiments):
    write(experiments / "small" / "config.yaml", "base: ../_base/voices.yaml\ntune:\n  space:\n"
          "    frontend.n_mels: {choices: [32, many]}\n")
    with pytest.raises(UserError) as refused:  # another tune key on the command line does not move the blame
        load_experiment("small", ["tune.pruner=median", "tune.folds=[1]"])
    assert str(refused.value).startswith("experiments/small/config.yaml: 'tune.space.frontend.n_mels': bad value "
                                         "'many' for 'frontend.n_mels'"), refused.value


@pytest.mark.parametrize("override, message", [
    ("train.schedule=cosin", r"'train\.schedule' is 'cosin'; did you mean 'cosine'\? choose one of onecycle, cosine"),
    ("data.train.layout=class_folder", r"'data\.train\.layout' is 'class_folder'; did you mean 'class_folders'\?"),
    ("train.metric=acuracy", r"'train\.metric' is 'acuracy'; did you mean 'accuracy'\?"),
    ("data.test.layout=table", r"'data\.test\.layout' must be 'files'"),
    ("train.epochs=0", r"'train\.epochs' must be positive, got 0"),
    ("folds.n_splits=1", r"'folds\.n_splits' must be at least 2"),
    ("folds.holdout=1.5", r"'folds\.holdout' is 1\.5, but it works from 0 \(no holdout\) to 0\.5 \(half the groups"),
    ("folds.holdout=0.9", r"'folds\.holdout' is 0\.9, but it works from 0 \(no holdout\) to 0\.5 \(half the groups"),
    ("folds.holdout=-0.1", r"'folds\.holdout' is -0\.1, but it works from 0"),
    ("tune.pruner=wilcoxon", r"'tune\.pruner' is wilcoxon, which compares trials fold by fold, but tune\.folds has one "
                             r"fold \(0\), so it could never prune; use tune\.pruner=median \(or auto\), or score "
                             r"trials on several folds, e\.g\. tune\.folds=\[0,1,2\]$"),
    ("data.name=''", r"'data\.name' is empty"),
    ("frontend.normalize=global", r"'frontend\.normalize' is 'global'; choose one of clip, dataset, none"),
    ("frontend.kind=stats", r"'frontend\.kind' is 'stats'; did you mean 'clip_stats'\?"),
])
def test_invalid_values(experiments, override, message):
    with pytest.raises(UserError, match=r"^command line: " + message):  # blamed where the value came from
        load_experiment("small", [override])
    key, value = override.split("=", 1)
    section, _, leaf = key.rpartition(".")
    body = "base: ../_base/voices.yaml\n" + "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(section.split(".")))
    write(experiments / "small" / "config.yaml", body + f"{'  ' * (section.count('.') + 1)}{leaf}: {value}\n")
    with pytest.raises(UserError, match=r"experiments/small/config\.yaml: " + message):
        load_experiment("small")


def test_unknown_experiment_suggests_close_names(experiments):
    write(experiments / "res2next_224" / "config.yaml", "base: ../_base/voices.yaml\n")
    write(experiments / "resnet18_64" / "config.yaml", "base: ../_base/voices.yaml\n")
    with pytest.raises(UserError, match=r"experiment 'res2next_22' not found .*; did you mean res2next_224"):
        load_experiment("res2next_22")
    with pytest.raises(UserError, match=r"experiment 'zzz' not found .*; known experiments: res2next_224, "
                                        r"resnet18_64, small"):
        load_experiment("zzz")


def test_base_loop(experiments):
    write(experiments / "_base" / "a.yaml", "base: b.yaml\n")
    write(experiments / "_base" / "b.yaml", "base: a.yaml\n")
    write(experiments / "loop" / "config.yaml", "base: ../_base/a.yaml\n")
    with pytest.raises(UserError, match=r"_base/a\.yaml: 'base' chain loops back to itself"):
        load_experiment("loop")


def test_missing_base(experiments):
    write(experiments / "orphan" / "config.yaml", "base: ../_base/gone.yaml\n")
    with pytest.raises(UserError, match=r"_base/gone\.yaml: config not found \(named as a base in "):
        load_experiment("orphan")


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: 3\n lr: 2\n", r"not valid YAML \(line 3: did not find expected key\)"),
    ("data: {name: x\n", r"not valid YAML \(line 2: "),
    ("- a\n- b\n", r"a config must be a mapping of keys to values"),
])
def test_invalid_yaml(experiments, text, message):
    write(experiments / "broken" / "config.yaml", text)
    with pytest.raises(UserError, match=r"broken/config\.yaml: " + message) as error:
        load_experiment("broken")
    assert "\n" not in str(error.value)


def test_valid_keys_cover_the_schema():
    keys = valid_keys()
    assert {"train.epochs", "data.train.filename_regex", "folds.holdout", "submission.id_suffix"} <= set(keys)
    assert "data.test" in keys


def test_parse_cli_separates_command_keys_from_overrides():
    options, overrides = parse_cli(["exp=small", "train.epochs=2", "fold=3"], {"exp": "default", "fold": "0",
                                                                                 "device": "auto"})
    assert options == {"exp": "small", "fold": "3", "device": "auto"}
    assert overrides == ["train.epochs=2"]
    with pytest.raises(UserError, match=r"argument 'small' is not key=value"):
        parse_cli(["small"], {"exp": "default"})


def test_resolved_config_round_trips_to_yaml(experiments):
    cfg = load_experiment("small", ["train.epochs=4"]).cfg
    again = OmegaConf.create(OmegaConf.to_yaml(cfg))
    assert again.train.epochs == 4 and again.data.train.table == "targets.tsv"


# Contests and recipes

def write_parts(workdir: Path) -> Path:
    """The tones contest split the way the repository's experiments are: experiments/_contests/tones.yaml (data,
    audio, folds, submission) and experiments/_recipes/small.yaml (frontend, model, train)."""
    experiments = workdir / "experiments"
    contest = {key: value for key, value in TONES_CONFIG.items() if key in CONTEST_SECTIONS}
    contest["submission"] = {"id_column": "clip", "header": True}
    write(experiments / "_contests" / "tones.yaml", yaml.safe_dump(contest))
    recipe = {key: value for key, value in TONES_CONFIG.items() if key in RECIPE_SECTIONS}
    write(experiments / "_recipes" / "small.yaml", yaml.safe_dump(recipe))
    return experiments


def test_file_overrides_recipe_overrides_contest_overrides_bases(workdir):
    experiments = write_parts(workdir)
    write(experiments / "_contests" / "tones_tsv.yaml",  # a contest built on another contest
          "contest: tones.yaml\nsubmission:\n  delimiter: \"\\t\"\n  extension: tsv\n")
    write(experiments / "_base" / "shared.yaml",
          "train:\n  lr: 0.1\n  patience: 3\nsubmission:\n  id_column: base_id\n  label_column: base_label\n")
    write(experiments / "mixed" / "config.yaml",
          "recipe: ../_recipes/small.yaml\ncontest: ../_contests/tones_tsv.yaml\nbase: ../_base/shared.yaml\n"
          "train:\n  epochs: 2\nsubmission:\n  header: false\n")
    order = [Path(origin).relative_to(experiments.resolve()).as_posix()
             for _, origin in _load_layers(experiments / "mixed" / "config.yaml")]
    assert order == ["_base/shared.yaml", "_contests/tones.yaml", "_contests/tones_tsv.yaml", "_recipes/small.yaml",
                     "mixed/config.yaml"]  # whatever order the keys are written in
    cfg = load_experiment("mixed").cfg
    assert cfg.train.epochs == 2 and cfg.submission.header is False  # the file wins over the recipe and the contest
    assert cfg.train.lr == 0.01 and cfg.train.patience == 3  # the recipe wins over the base
    assert cfg.submission.id_column == "clip" and cfg.submission.label_column == "base_label"  # contest over base
    assert (cfg.submission.delimiter, cfg.submission.extension) == ("\t", "tsv")  # a contest over its own contest
    assert cfg.data.name == "tones" and cfg.model.name == "resnet10t" and cfg.frontend.n_mels == 32
    assert cfg.recipe is None and cfg.contest is None and cfg.base is None  # the file names are not config


@pytest.mark.parametrize("part, extra, message", [
    ("_recipes/small.yaml", "submission:\n  id_suffix: .wav\n",
     "a recipe may not set 'submission' (a contest key): move it to the contest file, or to the experiment's own "
     "config.yaml"),
    ("_recipes/small.yaml", "data:\n  name: other\n",
     "a recipe may not set 'data' (a contest key): move it to the contest file, or to the experiment's own "
     "config.yaml"),
    ("_contests/tones.yaml", "model:\n  name: resnet18\n",
     "a contest may not set 'model' (a recipe key): move it to the recipe file, or to the experiment's own "
     "config.yaml"),
    ("_recipes/small.yaml", "contest: ../_contests/tones.yaml\n",
     "a recipe may not name a 'contest:' (it may name only another recipe, with 'recipe:'): name the contest in the "
     "experiment's own config.yaml"),
    ("_recipes/small.yaml", "base: ../_contests/tones.yaml\n",
     "a recipe may not name a 'base:' (it may name only another recipe, with 'recipe:'): name the base in the "
     "experiment's own config.yaml"),
    ("_contests/tones.yaml", "recipe: ../_recipes/small.yaml\n",
     "a contest may not name a 'recipe:' (it may name only another contest, with 'contest:'): name the recipe in "
     "the experiment's own config.yaml"),
    ("_contests/tones.yaml", "base: ../_recipes/small.yaml\n",
     "a contest may not name a 'base:' (it may name only another contest, with 'contest:'): name the base in the "
     "experiment's own config.yaml"),
])
def test_a_part_holding_the_other_parts_keys_is_refused(workdir, capsys, part, extra, message):
    experiments = write_parts(workdir)
    path = experiments / part
    path.write_text(path.read_text() + extra)
    write(experiments / "mixed" / "config.yaml", "contest: ../_contests/tones.yaml\nrecipe: ../_recipes/small.yaml\n")
    code, _, err = run_verb(capsys, folds, "exp=mixed")
    assert code == 2 and error_line(err) == f"error: {path.resolve()}: {message}"  # one line, naming the file


def test_a_part_named_wrongly_or_looping(workdir):
    experiments = write_parts(workdir)
    write(experiments / "two" / "config.yaml", "recipe: [../_recipes/small.yaml, ../_recipes/small.yaml]\n")
    with pytest.raises(UserError, match=r"two/config\.yaml: 'recipe' names one file, a path relative to this file"):
        load_experiment("two")
    write(experiments / "gone" / "config.yaml", "recipe: ../_recipes/gone.yaml\n")
    with pytest.raises(UserError, match=r"_recipes/gone\.yaml: config not found \(named as a recipe in .*gone/config"):
        load_experiment("gone")
    write(experiments / "_recipes" / "a.yaml", "recipe: b.yaml\n")
    write(experiments / "_recipes" / "b.yaml", "recipe: a.yaml\n")
    write(experiments / "loop" / "config.yaml", "recipe: ../_recipes/a.yaml\n")
    with pytest.raises(UserError, match=r"_recipes/a\.yaml: 'recipe' chain loops back to itself"):
        load_experiment("loop")


def test_every_config_field_is_a_recipe_or_a_contest_section_or_meta():
    """A new section must be given to the recipe or the contest side, or a recipe could carry it between contests."""
    fields = [f.name for f in dataclasses.fields(Config)]
    groups = [set(RECIPE_SECTIONS), set(CONTEST_SECTIONS), set(EXPERIMENT_SECTIONS), set(META_KEYS)]
    unclassified = [name for name in fields if not any(name in group for group in groups)]
    assert not unclassified, f"add {unclassified} to RECIPE_SECTIONS or CONTEST_SECTIONS in competition/config.py"
    assert sum(len(group) for group in groups) == len(set().union(*groups)) == len(fields)  # disjoint, no strays


def test_reused_recipe_brings_none_of_another_contests_answer_format(workdir):
    """The repository's small-CNN recipe on a new contest: recipe keys come along, demo_words' data and answer
    format (fname column, .wav suffix, its filename_regex) do not."""
    experiments = workdir / "experiments"
    write(experiments / "_contests" / "voices.yaml", BASE.split("train:\n  epochs")[0])
    write(experiments / "voices_cnn" / "config.yaml",
          f"contest: ../_contests/voices.yaml\nrecipe: {REPO / 'experiments' / '_recipes' / 'cnn.yaml'}\n")
    cfg = load_experiment("voices_cnn").cfg
    assert OmegaConf.to_container(cfg.submission) == OmegaConf.to_container(OmegaConf.structured(SubmissionConfig))
    assert cfg.submission.id_suffix == "" and cfg.submission.id_column == "id"
    assert cfg.data.train.filename_regex == "" and cfg.data.name == "voices"
    assert (cfg.model.name, cfg.train.epochs, cfg.frontend.n_mels, list(cfg.tta.views)) == ("resnet18", 12, 64, ["plain"])


@pytest.mark.parametrize("name, parts", [
    ("default", ["_contests/demo_words.yaml", "_recipes/cnn.yaml"]),
    ("fsdd", ["_contests/fsdd.yaml", "_recipes/cnn.yaml"]),
    ("demo_gender", ["_contests/demo_gender.yaml", "_recipes/voice.yaml"]),
    ("res2next_224", ["_contests/demo_words.yaml"]),
])
def test_repository_experiments_are_a_contest_and_a_recipe(name, parts):
    """Each shipped experiment composes (unresolved: the demo is not generated) from the parts it names."""
    config = REPO / "experiments" / name / "config.yaml"
    layers = _load_layers(config)
    assert [Path(origin).relative_to(REPO / "experiments").as_posix() for _, origin in layers] == \
        parts + [f"{name}/config.yaml"]
    cfg = OmegaConf.structured(Config)
    for layer, origin in layers:
        cfg = _merge(cfg, layer, origin)
    assert cfg.data.name and cfg.model.name


def test_image_augmentations_are_refused_on_per_clip_vectors(experiments):
    with pytest.raises(UserError, match=r"^command line: 'augment\.spec_time' works on spectrogram images but "
                                        r"frontend\.kind=clip_stats gives one vector per clip; set augment\.spec_time"):
        load_experiment("small", ["frontend.kind=clip_stats", "augment.spec_time.p=0.5"])
    assert load_experiment("small", ["frontend.kind=clip_stats", "augment.mixup.p=0.5"]).cfg.frontend.kind == "clip_stats"
