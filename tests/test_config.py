"""Experiment configs: bases, overrides, and one clear line for every kind of mistake."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from competition.config import find_experiment, load_experiment, parse_cli, valid_keys
from competition.errors import UserError

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
    cfg = load_experiment("small", ["train.epochs=3", "data.train.path=/tmp/other data.zip",
                                    "frontend.f_max=4000", "data.extensions=[.wav]"]).cfg
    assert cfg.train.epochs == 3 and cfg.data.train.path == "/tmp/other data.zip"
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
    write(experiments / "scalar" / "config.yaml", "base: ../_base/voices.yaml\ntrain: 5\n")
    with pytest.raises(UserError, match=r"scalar/config\.yaml: a section is not a mapping of keys to values"):
        load_experiment("scalar")


def test_override_that_is_not_key_value_or_not_yaml(experiments):
    with pytest.raises(UserError, match=r"command-line argument 'train\.epochs' is not key=value"):
        load_experiment("small", ["train.epochs"])
    with pytest.raises(UserError, match=r"command line: cannot parse overrides"):
        load_experiment("small", ["data.extensions=[.wav"])


@pytest.mark.parametrize("override, message", [
    ("train.schedule=cosin", r"'train\.schedule' is 'cosin'; did you mean 'cosine'\? choose one of onecycle, cosine"),
    ("data.train.layout=class_folder", r"'data\.train\.layout' is 'class_folder'; did you mean 'class_folders'\?"),
    ("train.metric=acuracy", r"'train\.metric' is 'acuracy'; did you mean 'accuracy'\?"),
    ("data.test.layout=table", r"'data\.test\.layout' must be 'files'"),
    ("train.epochs=0", r"'train\.epochs' must be positive, got 0"),
    ("folds.n_splits=1", r"'folds\.n_splits' must be at least 2"),
    ("folds.holdout=1.5", r"'folds\.holdout' is a fraction in \[0, 1\)"),
    ("data.name=''", r"'data\.name' is empty"),
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
