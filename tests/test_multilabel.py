"""Multi-label contests (data.task=multilabel) from configuration alone: label lists and class columns read, folds
that keep speakers whole and spread every class, BCE training of plain and SED heads (in one command and on the
queue) and a tune, pseudo-labels, per-class blends with evidence, answers as label lists or probability columns, and
predict and bundles reproducing them. The contest is 'chords' (tests/conftest.py): the tones mixed one to three at a
time by competition.mixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from competition.config import load_experiment
from competition.data import index_train
from competition.errors import UserError
from competition.folds import make_configured_folds
from competition.task import Task
from conftest import error_line, make_config, run_here, tone, write_chords_experiment, write_clip

CLASSES = ["high", "low", "mid"]


def labelled(tmp_path: Path, table: str, **train: object):
    """Three clips and a label table `table` (header line first) as a multi-label contest's config."""
    for name in ("a", "b", "c"):
        write_clip(tmp_path / "clips" / f"{name}.wav", tone(440.0, 8000, 0.5), 8000)
    (tmp_path / "clips" / "labels.csv").write_text(table)
    return make_config(tmp_path, {"task": "multilabel", "train": {
        "path": str(tmp_path / "clips"), "layout": "table", "table": "labels.csv", "header": True, **train}})


def test_label_lists_and_class_columns_read_as_the_same_clips(tmp_path: Path) -> None:
    lists = labelled(tmp_path, "id,label\na,dog cat\nb,\nc,cat\n")
    clips = index_train(lists).clips.set_index("id")["label"]
    assert clips.to_dict() == {"a": "cat dog", "b": "", "c": "cat"}  # sorted, and a clip may hold no class
    columns = labelled(tmp_path, "id,cat,dog\na,1,1\nb,0,0\nc,1,0\n", label_columns=["cat", "dog"])
    assert index_train(columns).clips.set_index("id")["label"].to_dict() == clips.to_dict()
    bad = labelled(tmp_path, "id,cat,dog\na,1,1\nb,0,yes\nc,1,0\n", label_columns=["cat", "dog"])
    with pytest.raises(UserError, match=r"line 3, column 'dog' is 'yes'; class columns .* hold 0 or 1"):
        index_train(bad)
    task = Task("multilabel", ";")
    assert task.split(" b ;a;;b") == ["a", "b"] and task.join(["b", "a"]) == "a;b"


def test_a_single_label_metric_is_refused_for_a_multilabel_contest(chords: Path) -> None:
    result = run_here("competition.run", "exp=chords", "fold=0", "train.metric=accuracy", cwd=chords)
    assert result.returncode == 2
    assert error_line(result.stderr) == ("error: command line: 'train.metric' is accuracy, which does not score "
                                         "data.task=multilabel contests; choose one of roc_auc, lwlrap, cmap, "
                                         "macro_f1_threshold, bce")


def test_folds_keep_each_speaker_whole_and_give_every_fold_every_class(chords: Path) -> None:
    cfg = load_experiment("chords").cfg
    folds = make_configured_folds(cfg, index_train(cfg).clips)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    per_fold = folds.assign(label=folds["label"].str.split()).explode("label").groupby("fold")["label"].unique()
    assert all(sorted(classes) == CLASSES for classes in per_fold)
    assert sorted(folds["fold"].unique()) == [0, 1, 2]


def read_answer(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False).set_index("row_id")


def test_a_multilabel_contest_runs_from_its_config_alone(chords: Path) -> None:
    """Both heads trained on clips by one command, a tune, blend (auto) answering long recordings window by window
    (BirdCLEF's <recording>_<end second> rows), predict and a bundle: every answer the same and right. (The queue
    runs the same `run` in a process per job: tests/test_queue.py.)"""
    windows = {"data": {"test": {"path": "mix/soundscapes"}}, "submission": {"window": 5, "id_column": "row_id"},
               "tta": {"views": ["whole_max"]}}  # each 5 s window: the class-wise max over the model's 1 s windows
    write_chords_experiment(chords, "chords", **windows)
    write_chords_experiment(chords, "chords_sed", model={"head": "sed"}, **windows)
    trained = run_here("competition.run", "exp=chords,chords_sed", "fold=all", "device=cpu", cwd=chords)
    assert trained.returncode == 0, trained.stderr  # both backbones, one command
    for exp in ("chords", "chords_sed"):
        oof = pd.concat(pd.read_csv(chords / "experiments" / exp / f"fold_{k}" / "oof.csv", keep_default_na=False)
                        for k in range(3))
        truth = np.stack([[c in label.split() for c in CLASSES] for label in oof["label"]])
        assert f1_score(truth, oof[CLASSES].to_numpy() >= 0.5, average="macro") > 0.8, exp

    blended = run_here("competition.blend", "exps=chords,chords_sed", "name=auto", cwd=chords)
    assert blended.returncode == 0, blended.stderr
    assert "lwlrap (higher is better)" in blended.stdout and "paired bootstrap" in blended.stdout
    assert "stack" not in blended.stdout  # stackers are single-label only
    answer = pd.read_csv(chords / "submissions" / "auto.csv", dtype=str, keep_default_na=False).set_index("row_id")
    truth = pd.read_csv(chords / "mix" / "soundscape_answers.csv", dtype=str, keep_default_na=False).set_index("row_id")
    assert sorted(answer.index) == sorted(truth.index) and len(truth) == 12  # 3 recordings of 20 s: 4 windows each
    assert {c for labels in answer["label"] for c in labels.split()} <= set(CLASSES)

    soft = run_here("competition.blend", "exps=chords,chords_sed", "method=soft", "name=soft",
                    "submission.columns=classes", cwd=chords)
    assert soft.returncode == 0, soft.stderr
    probs = read_answer(chords / "submissions" / "soft.csv")
    assert list(probs.columns) == CLASSES
    values = probs.astype(float).to_numpy()
    assert ((values >= 0) & (values <= 1)).all() and not np.allclose(values.sum(1), 1.0)  # one sigmoid per class
    true = np.stack([[c in truth.loc[i, "labels"].split() for c in CLASSES] for i in probs.index])
    # unseen speakers' windows: those holding a class score it higher than those without (never trained on empty
    # windows, the models flag some of those too: a threshold would need nocall clips)
    assert roc_auc_score(true, values, average="macro") > 0.8
    predicted = run_here("competition.predict", "exps=chords,chords_sed", "test=mix/soundscapes", "name=again",
                         "method=soft", cwd=chords)
    assert predicted.returncode == 0, predicted.stderr
    packed = run_here("competition.pack", "exps=chords,chords_sed", "out=bundle", "method=soft", cwd=chords)
    assert packed.returncode == 0, packed.stderr
    from_bundle = run_here("competition.predict", "bundle=bundle", "test=mix/soundscapes", "name=bundled", cwd=chords)
    assert from_bundle.returncode == 0, from_bundle.stderr
    again = read_answer(chords / "submissions" / "again-soft.csv")
    assert again.equals(read_answer(chords / "submissions" / "bundled-soft.csv"))
    expected = [" ".join(c for c, p in zip(CLASSES, row) if p >= 0.5) for row in values]
    assert again.loc[probs.index, "label"].tolist() == expected  # the label lists are the probabilities at 0.5

    tuned = run_here("competition.tune", "exp=chords", "n_trials=1", "train.epochs=1", "tune.folds=[0]",
                     "tune.space={frontend.n_mels: {choices: [16, 32]}}", cwd=chords)
    assert tuned.returncode == 0, tuned.stderr
    trials = pd.read_csv(next((chords / "experiments" / "chords" / "tune").rglob("trials.csv")))
    assert len(trials) == 1 and trials["value"].between(0, 1).all()
    import optuna

    journal = optuna.storages.journal.JournalFileBackend(str(chords / "experiments" / "chords" / "tune" /
                                                             "optuna.journal"))
    study = optuna.load_study(study_name="chords", storage=optuna.storages.JournalStorage(journal))
    assert study.metric_names == ["lwlrap"]  # what a dashboard's objective axis says


def test_long_recordings_are_answered_window_by_window_with_end_second_ids(tmp_path: Path) -> None:
    from competition.cache import load_split, windowed
    from competition.data import index_test

    rate = 8000
    long_clip = np.sin(np.arange(12 * rate) / rate * 2 * np.pi * 440).astype(np.float32) * 0.5
    write_clip(tmp_path / "scapes" / "rec.wav", long_clip, rate)
    write_clip(tmp_path / "scapes" / "short.wav", long_clip[:3 * rate], rate)
    cfg = make_config(tmp_path, {"train": {"path": str(tmp_path / "scapes"), "layout": "files"},
                                 "test": {"path": str(tmp_path / "scapes")}}, audio={"sample_rate": rate})
    split, cache = load_split(index_test(cfg), cfg, skip_bad=False)
    ids, windows, rows = windowed(cache, cache.rows(split.clips["path"]), split.clips["id"].to_numpy(), 5, rate)
    assert ids.tolist() == ["rec_5", "rec_10", "rec_15", "short_5"]  # the last, partial, window is answered too
    assert windows.clips["length"].tolist() == [5 * rate, 5 * rate, 2 * rate, 3 * rate]
    whole = cache.crops(cache.rows(pd.Series(["rec.wav"])), 12 * rate)[0]
    second = windows.crops(rows[1:2], 5 * rate)[0]
    assert np.array_equal(second, whole[5 * rate:10 * rate])  # the same samples, from the same memmap
    last = windows.crops(rows[2:3], 5 * rate)[0]  # 2 s of audio, centred in 5 s of silence like any short clip
    assert np.array_equal(last[int(1.5 * rate):int(3.5 * rate)], whole[10 * rate:])
    assert not last[:int(1.5 * rate)].any() and not last[int(3.5 * rate):].any()


def test_smoothing_mixes_each_window_with_its_neighbours_in_the_same_recording_only() -> None:
    from omegaconf import OmegaConf

    from competition.config import SubmissionConfig
    from competition.submission import smoothed

    sub = OmegaConf.merge(OmegaConf.structured(SubmissionConfig), {"window": 5, "smooth": 0.25})
    ids = ["rec_10", "rec_5", "rec_15", "other_5"]  # out of order: neighbours are found by their end seconds
    probs = np.array([[0.8], [0.0], [0.4], [1.0]])
    out = smoothed(ids, probs, sub)
    assert out[:, 0] == pytest.approx([0.5 * 0.8 + 0.25 * 0.0 + 0.25 * 0.4, 0.75 * 0.0 + 0.25 * 0.8,
                                       0.75 * 0.4 + 0.25 * 0.8, 1.0])  # a lone window keeps its own
    assert smoothed(ids, probs, OmegaConf.merge(sub, {"smooth": 0.0})) is probs


@pytest.mark.parametrize("clips", ["test clips", "test windows", "windows of a set predict named"])
def test_pseudo_labels_take_the_clips_sure_of_every_class_and_train_on_them(chords: Path, clips: str,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """A clip (or with submission.window a window of a soundscape, as BirdCLEF's rounds label them) is kept when every
    class is sure, present or absent: an empty label list is a label too. Hard targets are the classes at 0.5, soft
    ones the probabilities beside the labelled clips' own 0/1 rows; fold 0 trains on them (on the test windows, in
    both modes)."""
    from competition import run
    from competition.train import load_data
    from conftest import run_verb
    from test_pseudo import write_source_fold

    scapes, window = {"path": "mix/soundscapes"}, {"window": 5} if clips != "test clips" else {}
    named = {"test": "scapes"} if clips.endswith("named") else {}
    source_test = {} if clips == "test clips" else {"data": {"test": scapes}}  # the set the source's folds predicted
    write_chords_experiment(chords, "chords", submission=window, **source_test)
    write_chords_experiment(chords, "pl", submission=window, pseudo={"source": ["chords"], "threshold": 0.8, **named},
                            **({} if named else source_test))  # with test=scapes its own test set stays mix/test
    labelled = load_data(load_experiment("chords")).test  # the clips, or windows, that the source predicted
    ids = labelled.ids[:4]
    probs = {ids[0]: [0.9, 0.1, 0.95], ids[1]: [0.9, 0.5, 0.1], ids[2]: [0.05, 0.1, 0.15], ids[3]: [0.85, 0.75, 0.1]}
    for fold in range(3):
        write_source_fold(chords, "chords", fold, probs, "test-scapes.csv" if named else "test.csv")
    if named:  # what predict records of the set it named
        (chords / "experiments" / "chords" / "test-scapes.json").write_text(json.dumps({"source": scapes}))
    data = load_data(load_experiment("pl"))
    extra = data.pseudo[0]
    assert list(extra.ids) == [ids[0], ids[2]]  # ids[1]: 'low' at 0.5; ids[3]: 'low' at 0.75, neither sure
    assert extra.y.tolist() == [[1, 0, 1], [0, 0, 0]] and extra.soft is None
    part = data.fold(0)
    assert part.n_pseudo == 2 and part.train.y[-2:].tolist() == extra.y.tolist()
    assert np.array_equal(part.train.cache.crops(part.train.rows[-2:], 8000),
                          labelled.cache.crops(labelled.rows[[0, 2]], 8000))  # the clips' (windows') own audio
    soft = load_data(load_experiment("pl", ["pseudo.targets=soft"])).fold(0).train
    assert np.allclose(soft.soft[-2:], [probs[ids[0]], probs[ids[2]]]) and np.array_equal(soft.soft[:-2], soft.y[:-2])
    for targets in ("hard", "soft") if clips == "test windows" else ():  # the same Parts train alike in every case
        code, _, err = run_verb(capsys, run, "exp=pl", "fold=0", "device=cpu", "train.epochs=1",
                                f"pseudo.targets={targets}", "overwrite=true")
        assert code == 0, err
        assert json.loads((chords / "experiments" / "pl" / "fold_0" / "DONE").read_text())["n_pseudo"] == 2
