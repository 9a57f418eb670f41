"""Training precision and memory format: what `auto` picks on which CPU, a bf16 fold in channels_last that trains,
records its precision and learns, and a bad value refused in one line."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import competition.compute as compute
from competition.config import load_experiment
from competition.train import train_fold
from conftest import error_line, run_verb


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_trains_in_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                       expected: str) -> None:
    monkeypatch.setattr(compute, "native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert compute.training_precision(OmegaConf.create({"precision": "auto", "amp": True}), cpu) == expected
    for setting in ("fp32", "bf16"):  # an explicit choice is kept either way
        assert compute.training_precision(OmegaConf.create({"precision": setting, "amp": True}), cpu) == setting
    assert compute.evaluation_precision(OmegaConf.create({"precision": "bf16", "amp": True}), cpu) == "fp32"


def test_channels_last_for_the_families_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compute.family("efficientnet_b0") == "efficientnet" and compute.family("res2next50") == "res2net"
    monkeypatch.setattr(compute, "CHANNELS_LAST_FAMILIES", frozenset({"efficientnet"}))
    auto = OmegaConf.create({"memory_format": "auto"})
    assert compute.training_memory_format(auto, "efficientnet_b0") == torch.channels_last
    assert compute.training_memory_format(auto, "resnet18") == torch.contiguous_format
    forced = OmegaConf.create({"memory_format": "channels_last"})
    assert compute.training_memory_format(forced, "resnet18") == torch.channels_last


def test_a_bf16_fold_in_channels_last_learns_and_records_its_precision(tones: Path) -> None:
    exp = load_experiment("tones", ["train.precision=bf16", "train.memory_format=channels_last"])
    summary = train_fold(exp, 0, "cpu")
    assert summary["precision"] == "bf16"
    assert json.loads((exp.fold_dir(0) / "DONE").read_text())["precision"] == "bf16"
    assert summary["val_accuracy"] >= 0.6  # well above chance (1/3): on 18 clips after 4 epochs fp32 itself
    # scores 0.67-1.0 depending on the seed


@pytest.mark.parametrize("key,value", [("train.precision", "fp16"), ("train.memory_format", "nhwc")])
def test_a_bad_precision_or_memory_format_is_one_line(tones: Path, capsys: pytest.CaptureFixture, key: str,
                                                      value: str) -> None:
    from competition import run

    code, _, err = run_verb(capsys, run, "exp=tones", "fold=0", f"{key}={value}")
    assert code == 2 and "Traceback" not in err
    assert key in error_line(err) and value in error_line(err)
    assert not (tones / "experiments" / "tones" / "fold_0").exists()
