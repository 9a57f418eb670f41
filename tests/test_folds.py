"""Speaker-grouped stratified folds, the fold file contract, and the `python -m competition.folds` command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from competition.data import index_train
from competition.errors import UserError
from competition.folds import (COLUMNS, check_folds, class_counts, ensure_folds, fold_path, make_folds, read_folds,
                               write_folds)
from conftest import FSDD_REGEX, fsdd_names, fsdd_zip, make_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fsdd_clips(workdir):
    """120 real clips: digits 0-4, four takes by each of the six speakers, from a zip."""
    fsdd_zip(workdir / "digits.zip", fsdd_names(digits=range(5), indexes=range(4)))
    cfg = make_config(workdir, {"name": "digits", "train": {"path": "digits.zip", "layout": "filename",
                                                            "filename_regex": FSDD_REGEX}})
    return cfg, index_train(cfg).clips


def speakers_table() -> pd.DataFrame:
    """50 speakers with six clips each; the class 'rare' comes from only five speakers (three clips each)."""
    rows = []
    for g in range(50):
        for k in range(6):
            if g % 10 == 0 and k < 3:
                label = "rare"
            else:
                label = "a" if (k % 3 if g % 2 else k % 2) else "b"
            rows.append((f"s{g}_{k}", label, f"s{g}"))
    return pd.DataFrame(rows, columns=["id", "label", "group"])


def assert_grouped(folds: pd.DataFrame) -> None:
    """No group (speaker) in two folds, the holdout (-1) included."""
    assert (folds.groupby("group")["fold"].nunique() == 1).all()


def test_fsdd_folds_keep_speakers_together_and_hold_out_one(fsdd_clips):
    _, clips = fsdd_clips
    folds = make_folds(clips, n_splits=3, seed=0, holdout=1 / 6)
    assert list(folds.columns) == COLUMNS and folds["id"].tolist() == clips["id"].tolist()
    assert_grouped(folds)
    assert sorted(folds["fold"].unique()) == [-1, 0, 1, 2]
    assert folds.loc[folds["fold"] == -1, "group"].nunique() == 1  # one of six speakers
    counts = pd.crosstab(folds["label"], folds["fold"])
    assert (counts > 0).all().all()  # every fold, holdout included, has every digit
    shares = counts / counts.sum()
    assert (shares == 1 / 5).all().all()  # each speaker says each digit equally often: exact proportions


def test_stratification_spreads_a_rare_class_over_every_fold():
    clips = speakers_table()
    folds = make_folds(clips, n_splits=5, seed=0)
    assert_grouped(folds)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    counts = pd.crosstab(folds["label"], folds["fold"])
    largest_group_share = clips.groupby(["label", "group"]).size().groupby("label").max()
    spread = counts.max(axis=1) - counts.min(axis=1)
    assert (spread <= largest_group_share).all(), counts  # no better is possible with whole speakers
    assert (counts.loc["rare"] > 0).all()


def test_holdout_is_a_grouped_stratified_fraction():
    clips = speakers_table()
    folds = make_folds(clips, n_splits=4, seed=3, holdout=0.2)
    assert_grouped(folds)
    held = folds[folds["fold"] == -1]
    assert held["group"].nunique() / clips["group"].nunique() == pytest.approx(0.2, abs=0.05)
    assert set(held["label"]) == {"a", "b", "rare"}
    assert sorted(folds.loc[folds["fold"] >= 0, "fold"].unique()) == [0, 1, 2, 3]


def test_same_seed_same_folds_other_seed_other_folds():
    clips = speakers_table()
    first = make_folds(clips, n_splits=5, seed=7, holdout=0.1)
    assert first.equals(make_folds(clips, n_splits=5, seed=7, holdout=0.1))
    other = make_folds(clips, n_splits=5, seed=8, holdout=0.1)
    assert not first["fold"].equals(other["fold"])
    assert_grouped(other)


def test_fewer_speakers_than_folds(fsdd_clips):
    _, clips = fsdd_clips
    with pytest.raises(UserError, match=r"only 6 groups \(speakers\) for 8 folds; lower folds\.n_splits"):
        make_folds(clips, n_splits=8, seed=0)


def test_holdout_needing_more_speakers_than_there_are(fsdd_clips):
    _, clips = fsdd_clips
    with pytest.raises(UserError, match=r"folds\.holdout=0\.1 holds out one group in 10, but there are only 6 groups"):
        make_folds(clips, n_splits=3, seed=0, holdout=0.1)


def test_class_counts_table(fsdd_clips):
    _, clips = fsdd_clips
    folds = make_folds(clips, n_splits=5, seed=0, holdout=1 / 6)
    counts = class_counts(folds)
    assert list(counts.columns) == ["holdout", 0, 1, 2, 3, 4]
    assert counts.loc["all clips"].sum() == len(clips)
    assert counts.loc["groups"].tolist() == [1] * 6
    assert counts.loc["0"].tolist() == [4] * 6  # digit 0: four takes by the one speaker of each fold


def test_write_folds_refuses_replaces_and_writes_atomically(workdir):
    clips = speakers_table()
    folds = make_folds(clips, n_splits=5, seed=0)
    path = workdir / "folds" / "speakers.csv"
    assert write_folds(folds, path, overwrite=False) is True
    assert [p.name for p in path.parent.iterdir()] == ["speakers.csv"]  # no temporary file left behind
    assert read_folds(path).equals(folds)
    assert write_folds(folds, path, overwrite=False) is False  # identical: nothing to do
    as_objects = folds.astype({"id": object, "label": object, "group": object})
    assert write_folds(as_objects, path, overwrite=False) is False  # same values in other dtypes are the same folds
    other = make_folds(clips, n_splits=5, seed=1)
    with pytest.raises(UserError, match=r"speakers\.csv exists with different folds.*overwrite=true"):
        write_folds(other, path, overwrite=False)
    assert read_folds(path).equals(folds)  # refused: untouched
    assert write_folds(other, path, overwrite=True) is True
    assert read_folds(path).equals(other)
    assert [p.name for p in path.parent.iterdir()] == ["speakers.csv"]


def test_overwrite_replaces_an_unreadable_fold_file(workdir):
    folds = make_folds(speakers_table(), n_splits=5, seed=0)
    path = workdir / "folds" / "speakers.csv"
    path.parent.mkdir()
    path.write_text("id;label\nx;1\n")
    with pytest.raises(UserError, match=r"speakers\.csv: not a fold file"):
        write_folds(folds, path, overwrite=False)
    assert write_folds(folds, path, overwrite=True) is True
    assert read_folds(path).equals(folds)


@pytest.mark.parametrize("text", ["id,label,fold\na,1,0\n", "id,label,group,fold\na,1,g,zero\n",
                                  "fold,id,label,group\n0,a,1,g\n"])
def test_read_folds_rejects_other_files(workdir, text):
    path = workdir / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=r"bad\.csv: not a fold file \(expected integer columns id,label,group,fold\)"):
        read_folds(path)


def test_read_folds_keeps_ids_and_labels_as_text(workdir):
    path = workdir / "f.csv"
    path.write_text("id,label,group,fold\n007,01,NA,0\n008,1,,-1\n")
    folds = read_folds(path)
    assert folds["id"].tolist() == ["007", "008"] and folds["label"].tolist() == ["01", "1"]
    assert folds["group"].tolist() == ["NA", ""] and folds["fold"].tolist() == [0, -1]


def test_check_folds_against_the_data(fsdd_clips):
    _, clips = fsdd_clips
    folds = make_folds(clips, n_splits=3, seed=0)
    path = Path("folds/digits.csv")
    check_folds(folds, clips, path)  # the data it was made from: fine
    with pytest.raises(UserError, match=r"does not match the data set: 1 clips not in it \(e\.g\. 0_george_0\)"):
        check_folds(folds[folds["id"] != "0_george_0"], clips, path)
    with pytest.raises(UserError, match=r"does not match the data set: 2 ids with no clip \(e\.g\. 0_george_0\)"):
        check_folds(folds, clips[~clips["id"].isin(["0_george_0", "1_theo_3"])], path)
    relabelled = folds.assign(label=folds["label"].where(folds["id"] != "3_lucas_2", "4"))
    with pytest.raises(UserError, match=r"1 clips have other labels than in the data set \(e\.g\. 3_lucas_2\)"):
        check_folds(relabelled, clips, path)


def test_ensure_folds_makes_the_file_once_then_checks_it(fsdd_clips, capsys):
    cfg, clips = fsdd_clips
    path = fold_path(cfg)
    assert path == Path("folds/digits.csv") and not path.exists()
    folds = ensure_folds(cfg, clips)
    assert path.is_file() and "no fold file yet: making folds/digits.csv" in capsys.readouterr().err
    assert_grouped(folds)
    assert ensure_folds(cfg, clips).equals(folds)
    with pytest.raises(UserError, match=r"folds/digits\.csv does not match the data set"):
        ensure_folds(cfg, clips[clips["group"] != "theo"])


# --- the command ---------------------------------------------------------------------------------------------


def run_folds(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMPETITION_CACHE": str(cwd / "cache-env")}
    return subprocess.run([sys.executable, "-m", "competition.folds", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_command_writes_the_fold_file_and_reports_user_mistakes(fsdd_clips, workdir):
    ok = run_folds(workdir, "exp=exp", "folds.n_splits=5", "folds.holdout=0.17", "audio.sample_rate=8000")
    assert ok.returncode == 0, ok.stderr
    folds = read_folds(workdir / "folds" / "digits.csv")
    assert len(folds) == 120 and sorted(folds["fold"].unique()) == [-1, 0, 1, 2, 3, 4]
    assert_grouped(folds)
    lines = ok.stdout.splitlines()
    assert lines[0].split() == ["fold", "holdout", "0", "1", "2", "3", "4"]
    assert lines[2].split() == ["0"] + ["4"] * 6  # digit 0: four takes per speaker, one speaker per fold
    assert "wrote folds/digits.csv (120 clips, 6 groups, 5 folds, 20 clips held out)" in lines[-1]

    other_seed = run_folds(workdir, "exp=exp", "folds.n_splits=5", "folds.holdout=0.17", "audio.sample_rate=8000",
                           "folds.seed=1")
    assert_one_line_error(other_seed, "folds/digits.csv exists with different folds", "overwrite=true")
    assert read_folds(workdir / "folds" / "digits.csv").equals(folds)

    typo = run_folds(workdir, "exp=exp", "folds.n_split=3")
    assert_one_line_error(typo, "unknown config key 'folds.n_split'", "folds.n_splits")

    missing = run_folds(workdir, "exp=exp", "data.train.path=nowhere.zip")
    assert_one_line_error(missing, "nowhere.zip: no such folder or zip")
