"""Pseudo-labels: fold k trains on clips labelled by the sources' fold k alone, never validates on them, goes stale
when those labels change, and keeps an honest OOF where labels from every fold inflate it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from competition import blend, labels, pseudo, run
from competition.config import load_experiment
from competition.foldrun import differences, record
from competition.train import load_data
from conftest import error_line, run_verb, tone, train_every_fold, write_clip, write_tones_data, write_tones_experiment

CLASSES = ["high", "low", "mid"]


def write_source_fold(root: Path, exp: str, fold: int, probs: dict[str, list[float]], file: str = "test.csv") -> None:
    """A finished fold of `exp` as training leaves one, as far as labelling reads it: DONE, its predictions `file` and
    the record of what it was made from (run from `root`)."""
    fold_dir = root / "experiments" / exp / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    record(fold_dir, load_data(load_experiment(exp)).inputs)
    (fold_dir / "DONE").write_text(json.dumps({"classes": CLASSES, "tta_views": ["plain"]}))
    rows = ["id,view," + ",".join(CLASSES)] + [f"{clip},plain,{','.join(map(str, p))}" for clip, p in probs.items()]
    (fold_dir / file).write_text("\n".join(rows) + "\n")


@pytest.fixture
def labelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tones contest; a source experiment `src` whose three folds label the six test clips differently, surely
    or not; and `pl`, labelled by it with threshold 0.8."""
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path, "src")
    write_tones_experiment(tmp_path, "pl", pseudo={"source": ["src"], "threshold": 0.8})
    monkeypatch.chdir(tmp_path)
    sure, unsure = [0.9, 0.05, 0.05], [0.5, 0.3, 0.2]
    for fold in range(3):
        write_source_fold(tmp_path, "src", fold, {f"clip_{i}": np.roll(sure if i <= fold else unsure, i).tolist()
                                                  for i in range(6)})
    return tmp_path


def test_fold_k_trains_on_the_clips_fold_k_of_the_source_labelled(labelled: Path) -> None:
    data = load_data(load_experiment("pl"))
    for fold in range(3):
        extra = data.pseudo[fold]
        assert list(extra.ids) == [f"clip_{i}" for i in range(fold + 1)]  # the sure ones of fold k's file only
        assert list(extra.y) == [i % 3 for i in range(fold + 1)] and extra.soft is None
        part = data.fold(fold)
        assert part.n_pseudo == fold + 1 and list(part.train.ids[-(fold + 1):]) == list(extra.ids)
        assert not set(extra.ids) & (set(part.val.ids) | set(part.holdout.ids))  # never validated on
        waves = part.train.cache.crops(part.train.rows[-(fold + 1):], 4000)  # the test clips' own audio
        assert np.allclose(waves, data.test.cache.crops(data.test.rows[:fold + 1], 4000))
    soft = load_data(load_experiment("pl", ["pseudo.targets=soft"])).fold(2).train
    assert np.allclose(soft.soft[-1], np.roll([0.9, 0.05, 0.05], 2)) and np.allclose(soft.soft[0], np.eye(3)[soft.y[0]])


def test_a_round_goes_stale_where_its_labels_changed_and_only_there(labelled: Path) -> None:
    before = load_data(load_experiment("pl")).inputs
    write_source_fold(labelled, "src", 1, {f"clip_{i}": [0.9, 0.05, 0.05] for i in range(6)})  # fold 1 retrained
    after = load_data(load_experiment("pl")).inputs
    assert not differences(before, after, 0) and not differences(before, after, 2)
    assert differences(before, after, 1).model == [
        "the predictions that pseudo-label its extra clips changed (pseudo.source: src)"]


@pytest.mark.parametrize("change, expected", [
    (lambda root: (root / "experiments/src/fold_2/DONE").unlink(), "pseudo.source: src fold 2 is not finished"),
    (lambda root: (root / "experiments/src/fold_0/test.csv").unlink(), "fold_0/test.csv is missing"),
    (lambda root: (root / "experiments/src/fold_1/made_from.json").unlink(),
     "src fold 1 was not trained on this experiment's fold file"),
    (lambda root: write_tones_experiment(root, "pl", pseudo={"source": ["pl"]}), "names the experiment itself"),
    (lambda root: write_tones_experiment(root, "pl", pseudo={"source": ["src"], "threshold": 2}),
     "'pseudo.threshold' is a probability in [0, 1]"),
    (lambda root: write_tones_experiment(root, "pl", pseudo={"source": ["src"], "test": "later"}),
     "pseudo.test=later: experiments/src/test-later.json is missing"),
])
def test_labels_that_cannot_be_made_are_one_line(labelled: Path, capsys: pytest.CaptureFixture, change,
                                                 expected: str) -> None:
    change(labelled)
    code, _, err = run_verb(capsys, run, "exp=pl", "fold=0", "device=cpu")
    assert code == 2 and expected in error_line(err), err


def memorising_contest(root: Path) -> None:
    """30 clips, each a pure tone at its own mel band, with random labels: a model can only memorise them, and
    guesses on a tone it never heard. The test clips are the same 30 tones again (other noise), as a contest whose
    test recordings repeat its training ones would have them."""
    import librosa

    rng = np.random.default_rng(0)
    freqs = librosa.mel_frequencies(34, fmax=4000)[2:32]
    labels_ = rng.permutation(["a", "b"] * 15)
    for i, (freq, label) in enumerate(zip(freqs, labels_)):
        for folder, name in ((f"train/{label}", f"c{i}_nohash_0.wav"), ("test", f"t{i}.wav")):
            wave = tone(freq, 8000, 0.5) + 0.01 * rng.standard_normal(4000).astype(np.float32)
            write_clip(root / "data" / folder / name, wave, 8000)
    write_tones_experiment(root, "teach", folds={"n_splits": 3, "holdout": 0.0}, frontend={"kind": "clip_stats",
                           "stats": ["bands"]}, model={"name": "stats_linear"}, train={"weight_decay": 1e-4},
                           audio={"duration": 0.5})


def oof_accuracy(root: Path, exp: str) -> float:
    import pandas as pd

    frames = [pd.read_csv(path) for path in sorted((root / "experiments" / exp).glob("fold_*/oof.csv"))]
    frame = pd.concat(frames)
    frame = frame[frame["view"] == "plain"]
    return float((frame[["a", "b"]].to_numpy().argmax(1) == (frame["label"] == "b").to_numpy()).mean())


def test_labels_from_every_fold_inflate_oof_and_fold_k_labels_do_not(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberately leaky variant, labels from all folds' models (which trained on fold k's clips), teaches fold k
    the random labels of its own validation tones through their test copies: OOF near 1 for a model that can only
    guess on tones it never heard. Fold k's labels alone keep OOF at the guess it is."""
    memorising_contest(tmp_path)
    train_every_fold(tmp_path, "teach")
    teacher = oof_accuracy(tmp_path, "teach")
    for name in ("student", "leaky"):
        (tmp_path / "experiments" / name).mkdir()
        (tmp_path / "experiments" / name / "config.yaml").write_text(yaml.safe_dump(
            {"base": "../teach/config.yaml", "pseudo": {"source": ["teach"], "threshold": 0.0}}))
    train_every_fold(tmp_path, "student")
    monkeypatch.setattr(labels, "labelling_folds", lambda fold: [0, 1, 2])
    train_every_fold(tmp_path, "leaky")
    honest, leaky = oof_accuracy(tmp_path, "student"), oof_accuracy(tmp_path, "leaky")
    assert teacher <= 0.75 and honest <= 0.75 and leaky >= 0.9, (teacher, honest, leaky)


def test_the_command_trains_rounds_each_labelled_by_the_one_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path, "tones", folds={"n_splits": 2, "holdout": 0.0}, model={"name": "stats_linear"},
                           frontend={"kind": "clip_stats", "stats": ["bands"]}, audio={"duration": 0.5})  # fitted in a blink
    train_every_fold(tmp_path, "tones")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_verb(capsys, pseudo, "exps=tones", "rounds=2", "threshold=0", "device=cpu",
                              "augment.mixup.p=0.5")
    assert code == 0, err
    first = yaml.safe_load((tmp_path / "experiments/tones_pl1/config.yaml").read_text())
    second = yaml.safe_load((tmp_path / "experiments/tones_pl2/config.yaml").read_text())
    assert first["base"] == "../tones/config.yaml" and first["pseudo"]["source"] == ["tones"]
    assert second["pseudo"]["source"] == ["tones_pl1"] and second["augment"]["mixup"]["p"] == 0.5
    for name in ("tones_pl1", "tones_pl2"):
        for fold in range(2):
            done = json.loads((tmp_path / "experiments" / name / f"fold_{fold}" / "DONE").read_text())
            assert done["n_pseudo"] > 0
    assert "round 2: experiments/tones_pl2/config.yaml, labelled by tones_pl1" in out
    # again: every fold finished and current, nothing trained again; another threshold is refused without overwrite
    done = sorted((tmp_path / "experiments").glob("tones_pl*/fold_*/DONE"))
    stamps = [path.stat().st_mtime_ns for path in done]
    assert run_verb(capsys, pseudo, "exps=tones", "rounds=2", "threshold=0", "device=cpu",
                    "augment.mixup.p=0.5")[0] == 0
    assert [path.stat().st_mtime_ns for path in done] == stamps
    code, _, err = run_verb(capsys, pseudo, "exps=tones", "threshold=0.6", "device=cpu")
    assert code == 2 and "tones_pl1/config.yaml exists and says otherwise" in error_line(err)
    # a fold that no label reaches says so
    code, _, err = run_verb(capsys, run, "exp=tones_pl1", "fold=1", "device=cpu", "overwrite=true",
                            "pseudo.threshold=1.0")
    assert code == 0 and "warning: tones_pl1 fold 1: no clip reaches pseudo.threshold=1.0 in the predictions of fold 1 " \
                         "of tones" in err
    # the source's fold 0 retrained (another penalty): round one's fold 0 is stale, and blend says why
    assert run_verb(capsys, run, "exp=tones", "fold=0", "device=cpu", "overwrite=true", "train.weight_decay=0.5")[0] == 0
    code, _, err = run_verb(capsys, blend, "exps=tones_pl1")
    line = error_line(err)
    assert code == 2 and "tones_pl1 fold 0: the predictions that pseudo-label its extra clips changed" in line, err
    assert "tones_pl1 fold 1" not in line
