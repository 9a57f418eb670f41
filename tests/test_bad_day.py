"""A user's bad day, end to end: two folds trained, the data changes, the folds are remade, a retrain is interrupted
and resumed, a test clip is replaced, and the blend. Every stale output must be refused or brought up to date, and
the final answer file must come only from folds made from the current inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition import blend, folds, run
from competition.config import load_experiment
from competition.foldrun import is_finished, read_record
from competition.train import load_data
from conftest import error_line, run_verb as cli, write_tone, write_tones_experiment
from test_provenance import FAST, interrupt_after_training


def test_a_bad_day(tones: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    write_tones_experiment(tones, **FAST)
    exp_dir = tones / "experiments" / "tones"

    # 1. two folds trained on three classes
    code, _, err = cli(capsys, run, "exp=tones", "fold=0,1", "device=cpu")
    assert code == 0, err
    first = {k: (exp_dir / f"fold_{k}" / "model.pt").read_bytes() for k in (0, 1)}

    # 2. a fourth class arrives: the old fold file no longer describes the data, and says how to remake it
    rng = np.random.default_rng(5)
    for speaker in range(8):
        for take in range(3):
            write_tone(tones / "data" / "train" / "top" / f"spk{speaker}_nohash_{take}.wav", 3200.0, rng)
    code, _, err = cli(capsys, run, "exp=tones", "fold=all", "device=cpu")
    assert code == 2 and "python -m competition.folds exp=tones overwrite=true" in error_line(err)
    code, _, err = cli(capsys, blend, "exps=tones")
    assert code == 2 and not (tones / "submissions").exists()

    # 3. the folds are remade: the command names the trained folds it makes stale
    code, _, err = cli(capsys, folds, "exp=tones", "overwrite=true")
    assert code == 0 and "tones folds 0,1 are stale now" in err

    # 4. fold=all trains the new fold 2 but neither reuses nor silently retrains the stale folds 0 and 1
    code, out, err = cli(capsys, run, "exp=tones", "fold=all", "device=cpu")
    assert code == 2 and "fold=0,1 overwrite=true" in error_line(err)
    assert "already finished" not in out and is_finished(exp_dir / "fold_2")
    assert all((exp_dir / f"fold_{k}" / "model.pt").read_bytes() == first[k] for k in (0, 1))
    code, _, err = cli(capsys, blend, "exps=tones")
    assert code == 2 and "stale folds are not blended" in error_line(err)

    # 5. the retrain is interrupted in fold 0, then resumed; fold 1 is retrained
    with monkeypatch.context() as patch:
        interrupt_after_training(patch)
        code, _, err = cli(capsys, run, "exp=tones", "fold=0,1", "overwrite=true", "device=cpu")
    assert code == 130 and "resume=true" in err
    assert (exp_dir / "fold_0").exists()  # the old fold stays until the new one is complete
    code, _, err = cli(capsys, run, "exp=tones", "fold=0,1", "resume=true", "device=cpu")
    assert code == 2 and "fold=1 overwrite=true" in error_line(err)  # fold 0 resumed, stale fold 1 left alone
    assert "resuming after epoch 1" in err
    code, _, err = cli(capsys, run, "exp=tones", "fold=1", "overwrite=true", "device=cpu")
    assert code == 0, err

    # 6. a test clip is replaced under the same name: blend refuses, run re-predicts without retraining
    write_tone(tones / "data" / "test" / "clip_0.wav", 3200.0, rng)
    models = {k: (exp_dir / f"fold_{k}" / "model.pt").read_bytes() for k in range(3)}
    code, _, err = cli(capsys, blend, "exps=tones")
    assert code == 2 and "the test clips changed" in error_line(err)
    code, _, err = cli(capsys, run, "exp=tones", "fold=all", "device=cpu")
    assert code == 0, err
    assert {k: (exp_dir / f"fold_{k}" / "model.pt").read_bytes() for k in range(3)} == models

    # 7. the blend: every fold is current, and the answer is their soft vote on the current test clips
    code, out, err = cli(capsys, blend, "exps=tones", "method=soft")
    assert code == 0, err
    current = load_data(load_experiment("tones")).inputs
    for k in range(3):
        assert read_record(exp_dir / f"fold_{k}") == current
        assert json.loads((exp_dir / f"fold_{k}" / "DONE").read_text())["classes"] == ["high", "low", "mid", "top"]
    tests = [pd.read_csv(exp_dir / f"fold_{k}" / "test.csv").set_index("id") for k in range(3)]
    classes = ["high", "low", "mid", "top"]
    mean = sum(frame[classes] for frame in tests) / 3
    expected = {clip: classes[int(np.argmax(row))] for clip, row in zip(mean.index, mean.to_numpy())}
    answer = pd.read_csv(tones / "submissions" / "tones-soft.csv", dtype=str)
    assert dict(zip(answer["id"], answer["label"])) == expected
    report = json.loads((tones / "submissions" / "tones-soft.json").read_text())
    assert report["members"][0]["folds"] == [0, 1, 2] and report["members"][0]["left_out"] == []
