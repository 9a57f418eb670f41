"""Nothing stale, nothing silent: every fold records what it was made from, and run, resume, blend and folds check it.

Each test reproduces one way a stale or leaked output used to pass as current, on the generated tones contest."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from competition import blend, folds, run
from competition.config import load_experiment
from competition.errors import UserError
from competition.foldrun import can_resume, fold_lock, is_finished, read_record
from competition.metrics import METRICS
from competition.train import make_scheduler, train_fold
from conftest import TONES, error_line, run_verb as cli, write_tone, write_tones_experiment

FAST = dict(audio={"duration": 0.3}, frontend={"n_mels": 16, "hop_length": 128}, train={"epochs": 1})


@pytest.fixture
def quick(tones: Path) -> Path:
    """The tones contest with an experiment that trains a fold in a few seconds."""
    write_tones_experiment(tones, **FAST)
    return tones


def interrupt_after_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next fold stops (as on Ctrl-C) after its epochs, before its predictions: a resumable work folder."""
    import competition.train as train

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "plot_curves", stop)


def replace_audio(path: Path, freq: float) -> None:
    write_tone(path, freq, np.random.default_rng(99))


def test_resume_after_remade_folds_is_refused(quick: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    exp = load_experiment("tones")
    with monkeypatch.context() as patch:
        interrupt_after_training(patch)
        with pytest.raises(KeyboardInterrupt):
            train_fold(exp, 0, "cpu")
    assert can_resume(exp.fold_dir(0))
    assert "continue it with python -m competition.run exp=tones fold=0 resume=true" in capsys.readouterr().err
    before = (quick / "folds" / "tones.csv").read_text()

    code, _, err = cli(capsys, folds, "exp=tones", "folds.seed=7", "overwrite=true")
    assert code == 0 and (quick / "folds" / "tones.csv").read_text() != before
    assert "warning: folds/tones.csv changed, so tones folds 0 are stale now" in err  # the interrupted fold counts

    with pytest.raises(UserError, match="the fold file folds/tones.csv changed") as refused:
        train_fold(load_experiment("tones"), 0, "cpu", resume=True)
    assert "epoch 1 of 1 done" in str(refused.value) and "fold=0 overwrite=true" in str(refused.value)


def test_finished_folds_on_changed_training_clips_are_stale_not_skipped(quick: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    train_fold(load_experiment("tones"), 0, "cpu")
    replace_audio(quick / "data" / "train" / "low" / "spk0_nohash_0.wav", 320.0)  # same name, same label

    code, out, err = cli(capsys, run, "exp=tones", "fold=all", "device=cpu")
    assert code == 2
    assert "tones fold 0: stale, not used: the training clips changed" in err
    assert "retrain exactly them with python -m competition.run exp=tones fold=0 overwrite=true" in error_line(err)
    assert "fold 0: already finished" not in out
    assert is_finished(quick / "experiments" / "tones" / "fold_1") and is_finished(quick / "experiments" / "tones" / "fold_2")

    code, out, err = cli(capsys, blend, "exps=tones")
    assert code == 2 and "tones fold 0: the training clips changed" in error_line(err)
    assert not list(quick.glob("submissions/*.csv"))

    code, out, err = cli(capsys, blend, "exps=tones", "stale=skip", "method=soft")
    assert code == 0, err
    assert "tones: fold 0 stale (the training clips changed), left out" in out
    assert "tones: OOF scores cover" in out  # fold 0's validation clips are missing from the OOF score
    report = json.loads((quick / "submissions" / "tones-soft.json").read_text())
    assert report["members"][0]["folds"] == [1, 2]


def test_edited_config_makes_folds_stale_but_the_answer_format_follows_it(quick: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    train_fold(load_experiment("tones"), 0, "cpu")
    write_tones_experiment(quick, **FAST, submission={"delimiter": "\t", "header": False, "extension": "tsv"})
    code, _, err = cli(capsys, blend, "exps=tones", "method=soft")
    assert code == 0, err  # the answer format is not a training input: the folds stay current
    answer = (quick / "submissions" / "tones-soft.tsv").read_text().splitlines()
    assert len(answer) == 6 and all(len(line.split("\t")) == 2 for line in answer) and answer[0].startswith("clip_")

    write_tones_experiment(quick, **{**FAST, "train": {"epochs": 1, "lr": 0.02}})
    code, _, err = cli(capsys, blend, "exps=tones", "overwrite=true")
    assert code == 2 and "config changed: train.lr 0.01 -> 0.02" in error_line(err)

    # trained with a command-line override, a fold stays current for blend: the override is part of its record
    train_fold(load_experiment("tones", ["train.lr=0.03"]), 1, "cpu")
    assert read_record(quick / "experiments" / "tones" / "fold_1").overrides == ["train.lr=0.03"]
    code, out, err = cli(capsys, blend, "exps=tones", "stale=skip", "overwrite=true")
    assert code == 0 and "fold 0 stale (config changed: train.lr 0.01 -> 0.02)" in out

    # once stale, each fold's retrain hint carries the overrides that fold was made with, so following it keeps them
    write_tones_experiment(quick, **{**FAST, "train": {"epochs": 1, "lr": 0.02, "weight_decay": 0.05}})
    code, _, err = cli(capsys, blend, "exps=tones", "overwrite=true")
    assert code == 2, err
    assert "python -m competition.run exp=tones fold=1 overwrite=true train.lr=0.03" in error_line(err)
    assert "python -m competition.run exp=tones fold=0 overwrite=true and " in error_line(err)


def test_replaced_test_clip_is_re_predicted_without_retraining(quick: Path, capsys: pytest.CaptureFixture) -> None:
    fold_dir = quick / "experiments" / "tones" / "fold_0"
    train_fold(load_experiment("tones"), 0, "cpu")
    model, oof, test = ((fold_dir / name).read_bytes() for name in ("model.pt", "oof.csv", "test.csv"))
    replace_audio(quick / "data" / "test" / "clip_0.wav", 2000.0)  # was a low tone

    code, _, err = cli(capsys, blend, "exps=tones")
    assert code == 2 and "tones fold 0: the test clips changed" in error_line(err)
    assert "python -m competition.run exp=tones fold=0 (re-predicts from the trained models)" in error_line(err)

    code, out, err = cli(capsys, run, "exp=tones", "fold=0", "device=cpu")
    assert code == 0, err
    assert "re-predicting with the trained model (no retraining)" in err and "re-predicted test" in out
    assert (fold_dir / "model.pt").read_bytes() == model and (fold_dir / "oof.csv").read_bytes() == oof
    assert (fold_dir / "test.csv").read_bytes() != test
    assert blend.main(["exps=tones"]) is None

    write_tones_experiment(quick, **FAST, tta={"views": ["plain", "shift:0.1"]})  # other views: every split again
    code, out, err = cli(capsys, run, "exp=tones", "fold=all", "device=cpu")
    assert "tones fold 0: tta.views changed (plain -> plain, shift:0.1)" in err
    assert (fold_dir / "model.pt").read_bytes() == model
    assert set(pd.read_csv(fold_dir / "oof.csv")["view"]) == {"plain", "shift:0.1", "mean"}
    done = json.loads((fold_dir / "DONE").read_text())
    assert done["tta_views"] == ["plain", "shift:0.1"] and "val_accuracy_shift:0.1" in done
    assert done["n_train"] > 0 and done["n_val"] == len(pd.read_csv(fold_dir / "oof.csv")) // 3  # kept, and redone


def test_roc_auc_ignores_a_class_missing_from_validation() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    y[y == 2] = 0  # class 2 has no validation clip
    p = rng.dirichlet(np.ones(3), 60)
    auc = METRICS["roc_auc"].score(y, p)
    assert math.isfinite(auc)
    assert auc == pytest.approx(np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1)]))
    assert math.isnan(METRICS["roc_auc"].score(np.zeros(5, int), p[:5]))


def test_a_metric_undefined_on_a_folds_validation_is_refused(quick: Path) -> None:
    """ROC AUC on validation clips of one class would score every epoch NaN and keep the first epoch's model."""
    from competition.train import _check_metric_defined, load_data

    exp = load_experiment("tones", ["train.metric=roc_auc"])
    data = load_data(exp).fold(0)
    _check_metric_defined(exp.cfg, data, 0)  # three classes: defined
    one_class = type(data.val)(data.val.ids, data.val.cache, data.val.rows, np.zeros_like(data.val.y))
    with pytest.raises(UserError, match="train.metric=roc_auc is undefined on fold 0's validation clips"):
        _check_metric_defined(exp.cfg, type(data)(data.classes, data.train, one_class, data.holdout, data.test), 0)


def test_diverging_training_is_one_line_and_leaves_nothing(quick: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(capsys, run, "exp=tones", "fold=0", "device=cpu", "train.lr=1e6", "train.schedule=constant")
    assert code == 2 and "Traceback" not in err
    assert "training diverged at epoch 1 of fold 0" in error_line(err) and "train.grad_clip" in error_line(err)
    assert not (quick / "experiments" / "tones" / "fold_0.partial").exists()


@pytest.mark.parametrize("epochs,steps", [(4, 1), (2, 2), (1, 4), (10, 1), (1, 1)])
def test_one_cycle_works_for_any_number_of_steps(quick: Path, epochs: int, steps: int) -> None:
    cfg = load_experiment("tones", [f"train.epochs={epochs}", "train.schedule=onecycle"]).cfg
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    scheduler = make_scheduler(cfg, optimizer, steps)
    lrs = []
    for _ in range(epochs * steps):
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert all(math.isfinite(lr) and lr <= cfg.train.lr * 1.0001 for lr in lrs)


def test_interrupted_and_busy_folds_do_not_stop_the_others(quick: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    with monkeypatch.context() as patch:
        interrupt_after_training(patch)
        with pytest.raises(KeyboardInterrupt):
            train_fold(load_experiment("tones"), 0, "cpu")
    capsys.readouterr()

    with fold_lock(quick / "experiments" / "tones" / "fold_2"):  # "another process" trains fold 2
        code, out, err = cli(capsys, run, "exp=tones", "fold=all", "device=cpu")
    assert code == 2
    assert "tones fold 0: interrupted, left as it is" in err
    assert "tones fold 2: skipped:" in err and "being trained by another process (host" in err
    assert "resume=true" in error_line(err) and "fold=0 overwrite=true" in error_line(err)
    assert is_finished(quick / "experiments" / "tones" / "fold_1")

    code, out, err = cli(capsys, run, "exp=tones", "fold=0,1", "resume=true", "train.lr=0.02", "device=cpu")
    assert code == 2 and "config changed: train.lr 0.01 -> 0.02 since it started" in err
    assert "restart exactly them with python -m competition.run exp=tones fold=0 overwrite=true" in error_line(err)
    assert can_resume(quick / "experiments" / "tones" / "fold_0")  # nothing was thrown away


def test_cheap_checks_come_before_decoding(quick: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(capsys, run, "exp=tones", "fold=all", "model.name=resnet1888")
    assert code == 2 and "model.name 'resnet1888' is not a timm model" in error_line(err)
    assert not (quick / "cache").exists()


def test_command_line_values_are_blamed_on_the_command_line(quick: Path) -> None:
    with pytest.raises(UserError, match=r"^command line: 'train.ohem'"):
        load_experiment("tones", ["train.ohem=2"])
    write_tones_experiment(quick, train={"ohem": 2.0})
    with pytest.raises(UserError, match=r"experiments/tones/config.yaml: 'train.ohem'"):
        load_experiment("tones")


def test_fold_prints_its_holdout_score_and_no_bar_in_a_log(quick: Path) -> None:
    from conftest import run_here

    result = run_here("competition.run", "exp=tones", "fold=1", "device=cpu", cwd=quick)
    assert result.returncode == 0, result.stderr
    assert "locked holdout accuracy" in result.stdout and "\r" not in result.stderr


def test_a_killed_overwrite_is_offered_both_ways_on_with_the_overrides_each_needs(quick: Path,
                                                                                monkeypatch: pytest.MonkeyPatch,
                                                                                capsys: pytest.CaptureFixture) -> None:
    fold_dir = quick / "experiments" / "tones" / "fold_0"
    train_fold(load_experiment("tones", ["train.seed=3"]), 0, "cpu")
    with monkeypatch.context() as patch:  # the retraining is stopped after its epochs
        interrupt_after_training(patch)
        code, _, err = cli(capsys, run, "exp=tones", "fold=0", "overwrite=true", "device=cpu", "train.seed=3")
    assert code == 130 and can_resume(fold_dir) and is_finished(fold_dir)

    code, _, err = cli(capsys, run, "exp=tones", "fold=0", "device=cpu")  # the plain command, its override forgotten
    line = error_line(err)
    assert code == 2 and "holds an interrupted run, retraining the finished" in line and "epoch 1 of 1 done" in line
    assert "resume=true continues it: python -m competition.run exp=tones fold=0 resume=true train.seed=3;" in line
    assert line.endswith("overwrite=true starts it over: python -m competition.run exp=tones fold=0 overwrite=true")

    code, _, err = cli(capsys, run, "exp=tones", "fold=0", "resume=true", "device=cpu", "train.seed=3")  # as offered
    assert code == 0 and "resuming after epoch 1" in err and not can_resume(fold_dir)
    assert read_record(fold_dir).overrides == ["train.seed=3"]


def test_fold_all_goes_on_after_a_fold_that_fails_and_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Each class said by speakers of its own, and a hand-made fold file whose fold 1 validates on low tones alone:
    ROC AUC is undefined there, so that fold fails and the other two train."""
    rng = np.random.default_rng(0)
    speakers = {"low": (0, 1, 2), "mid": (3, 4, 5), "high": (6, 7, 8)}
    for label, numbers in speakers.items():
        for speaker in numbers:
            for take in range(3):
                write_tone(tmp_path / "data" / "train" / label / f"spk{speaker}_nohash_{take}.wav", TONES[label], rng)
        write_tone(tmp_path / "data" / "test" / f"clip_{label}.wav", TONES[label], rng)
    write_tones_experiment(tmp_path, **{**FAST, "train": {"epochs": 1, "metric": "roc_auc"}},
                           folds={"n_splits": 3, "holdout": 0})
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, folds, "exp=tones")[0] == 0
    fold_of = {"spk0": 0, "spk3": 0, "spk6": 0, "spk1": 1, "spk2": 1}  # the other speakers: fold 2
    table = pd.read_csv(tmp_path / "folds" / "tones.csv", dtype=str)
    table["fold"] = table["group"].map(lambda group: fold_of.get(group, 2))
    table.to_csv(tmp_path / "folds" / "tones.csv", index=False)

    code, _, err = cli(capsys, run, "exp=tones", "fold=all", "device=cpu", "train.epochs=1")
    assert code == 2
    assert "tones fold 1: FAILED (train.metric=roc_auc is undefined on fold 1's validation clips" in err
    assert is_finished(tmp_path / "experiments" / "tones" / "fold_0")
    assert is_finished(tmp_path / "experiments" / "tones" / "fold_2")  # tried although fold 1 had failed
    assert "folds 1 failed (train.metric=roc_auc is undefined on fold 1's" in error_line(err)
    assert error_line(err).endswith("rerun them with python -m competition.run exp=tones fold=1 train.epochs=1")
