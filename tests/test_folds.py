"""Speaker-grouped stratified folds, the fold file contract, and the `python -m competition.folds` command."""
from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest

from competition.config import load_config
from competition.data import index_train
from competition.errors import UserError
from competition.folds import (COLUMNS, check_folds, class_counts, ensure_folds, fold_path, make_folds, purity,
                               read_folds, together, validate_folds, write_folds)
from conftest import (FSDD_REGEX, fsdd_names, fsdd_zip, make_config, run_here, run_verb, shared_data, tone,
                      write_clip)



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
    check_folds(folds, clips, path, "exp")  # the data it was made from: fine
    with pytest.raises(UserError, match=r"does not match the data set: 1 clips not in it \(e\.g\. 0_george_0\)"):
        check_folds(folds[folds["id"] != "0_george_0"], clips, path, "exp")
    with pytest.raises(UserError, match=r"does not match the data set: 2 ids with no clip \(e\.g\. 0_george_0\)"):
        check_folds(folds, clips[~clips["id"].isin(["0_george_0", "1_theo_3"])], path, "exp")
    relabelled = folds.assign(label=folds["label"].where(folds["id"] != "3_lucas_2", "4"))
    with pytest.raises(UserError, match=r"1 clips have other labels than in the data set \(e\.g\. 3_lucas_2\); "
                                        r"the data changed .* remake them with python -m competition\.folds "
                                        r"exp=exp2 overwrite=true$"):  # the experiment's own folds, not the default's
        check_folds(relabelled, clips, path, "exp2")


def test_ensure_folds_makes_the_file_once_then_checks_it(fsdd_clips, capsys):
    cfg, clips = fsdd_clips
    path = fold_path(cfg)
    assert path == Path("folds/digits.csv") and not path.exists()
    folds = ensure_folds(cfg, clips, "exp")
    assert path.is_file() and "no fold file yet: making folds/digits.csv" in capsys.readouterr().err
    assert_grouped(folds)
    assert ensure_folds(cfg, clips, "exp").equals(folds)
    with pytest.raises(UserError, match=r"folds/digits\.csv does not match the data set"):
        ensure_folds(cfg, clips[clips["group"] != "theo"], "exp")


# --- validating a fold file as a whole ----------------------------------------------------------------------


def solo_table() -> pd.DataFrame:
    """20 speakers saying 'a' and 'b' twice each, and class 'solo' said three times by one speaker alone."""
    rows = [(f"s{g}_{k}", "ab"[(g + k) % 2], f"s{g}") for g in range(20) for k in range(4)]
    return pd.DataFrame(rows + [(f"x_{k}", "solo", "x") for k in range(3)], columns=["id", "label", "group"])


def per_clip_table() -> pd.DataFrame:
    """Every clip its own group: classes a-e with 8 clips each and f, the largest, with 9."""
    rows = [(f"{c}{i}", c, f"{c}{i}") for c in "abcdef" for i in range(9 if c == "f" else 8)]
    return pd.DataFrame(rows, columns=["id", "label", "group"])


def hand_edited(workdir: Path, folds: pd.DataFrame, n_splits: int = 5):
    """A config with folds.n_splits, and folds/t.csv holding `folds` as if edited by hand."""
    cfg = make_config(workdir, {"train": {"path": "unused"}}, folds={"n_splits": n_splits})
    fold_path(cfg).parent.mkdir(exist_ok=True)
    folds.to_csv(fold_path(cfg), index=False)
    return cfg


REMAKE = "python -m competition.folds exp=exp overwrite=true"


@pytest.mark.parametrize("made, configured", [(6, 5), (4, 5)])
def test_fold_file_with_other_folds_than_the_config_is_refused(workdir, made, configured):
    clips = speakers_table()
    cfg = hand_edited(workdir, make_folds(clips, n_splits=made, seed=0, holdout=0.1), n_splits=configured)
    with pytest.raises(UserError) as refused:
        ensure_folds(cfg, clips, "exp")
    assert str(refused.value) == (f"folds/t.csv has {made} folds (0..{made - 1}) but folds.n_splits is {configured}: "
                                  f"set folds.n_splits={made} in experiments/exp/config.yaml, "
                                  f"or remake the folds with {REMAKE}")


@pytest.mark.parametrize("edit, found", [({"s3": 7}, "fold 7"), ({"s3": -2, "s5": -3}, "fold -3, -2"),
                                         ("merged", "no fold 2"), ("shifted", "fold 5 and no fold 2")])
def test_fold_numbers_outside_0_to_k_minus_1_are_refused(workdir, edit, found):
    clips = speakers_table()
    folds = make_folds(clips, n_splits=5, seed=0, holdout=0.1)
    if edit == "merged":  # folds 0, 1, 3, 4
        folds["fold"] = folds["fold"].replace(2, 1)
    elif edit == "shifted":  # folds 0, 1, 3, 4, 5: five folds, but not 0..4
        folds["fold"] = folds["fold"].where(folds["fold"] < 2, folds["fold"] + 1)
    else:
        folds["fold"] = folds["group"].map(edit).fillna(folds["fold"]).astype(int)
    cfg = hand_edited(workdir, folds)
    with pytest.raises(UserError) as refused:
        ensure_folds(cfg, clips, "exp")
    assert str(refused.value) == (f"folds/t.csv: folds must be 0..4 (folds.n_splits=5) and -1 for the holdout, but it "
                                  f"has {found}; fix the file or remake it with {REMAKE}")


def test_a_speaker_in_two_folds_is_refused(workdir):
    clips = speakers_table()
    folds = make_folds(clips, n_splits=5, seed=0)
    first = folds.index[folds["group"] == "s7"][0]
    home = folds.loc[first, "fold"]
    folds.loc[first, "fold"] = (home + 2) % 5  # one clip of s7 moved by hand: that voice leaks into validation
    cfg = hand_edited(workdir, folds)
    with pytest.raises(UserError) as refused:
        ensure_folds(cfg, clips, "exp")
    assert str(refused.value) == (f"folds/t.csv: every group (speaker) must be in one fold, or validation scores "
                                  f"voices the model trained on, but it has 's7' in folds "
                                  f"{', '.join(map(str, sorted([home, (home + 2) % 5])))}; fix the file or remake it "
                                  f"with {REMAKE}")


def test_a_class_held_out_entirely_is_refused_in_a_file(workdir):
    clips = speakers_table()
    folds = make_folds(clips, n_splits=5, seed=0)
    folds.loc[folds["group"].isin(["s0", "s10", "s20", "s30", "s40"]), "fold"] = -1  # every speaker of 'rare'
    cfg = hand_edited(workdir, folds)
    with pytest.raises(UserError) as refused:
        ensure_folds(cfg, clips, "exp")
    assert str(refused.value) == (f"folds/t.csv: the holdout (fold -1) has every clip of class 'rare' (15 clips), "
                                  f"so no fold can learn it; try another folds.seed or a smaller folds.holdout "
                                  f"(0 for none), then remake the folds with {REMAKE}")


def test_a_class_in_one_fold_only_is_a_warning(workdir, capsys):
    clips = speakers_table()
    folds = make_folds(clips, n_splits=5, seed=0)
    folds.loc[folds["group"].isin(["s0", "s10", "s20", "s30", "s40"]), "fold"] = 2  # every speaker of 'rare'
    cfg = hand_edited(workdir, folds)
    assert ensure_folds(cfg, clips, "exp")["fold"].tolist() == folds["fold"].tolist()
    assert capsys.readouterr().err.splitlines() == [
        "warning: folds/t.csv: the model of a fold never trains on a class found only in that fold: "
        "'rare' only in fold 2 (15 clips)"]


def test_holdout_that_takes_a_whole_class_is_refused_before_any_file_is_written(workdir):
    clips = solo_table()  # the one speaker of 'solo' is the most lopsided group: scikit-learn holds it out first
    cfg = make_config(workdir, {"train": {"path": "unused"}}, folds={"n_splits": 5, "holdout": 0.25})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's own multi-line warning about 'solo' must not escape either
        with pytest.raises(UserError, match=r"^folds\.holdout=0\.25 holds out every clip of class 'solo' \(3 clips\), "
                                            r"so no fold could learn it; folds\.holdout=[\d.]+( with folds\.seed=\d+)? "
                                            r"works \(tried: it makes valid folds\), or 0 for no holdout$") as refused:
            ensure_folds(cfg, clips, "exp")
    assert not fold_path(cfg).exists()
    assert_works(clips, 5, 42, str(refused.value))


def test_a_class_smaller_than_n_splits_gives_one_warning_line(workdir, capsys):
    clips = solo_table()  # 'solo' has 3 clips from one speaker, for 5 folds: scikit-learn warns in several lines
    cfg = make_config(workdir, {"train": {"path": "unused"}}, folds={"n_splits": 5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = ensure_folds(cfg, clips, "exp")
    solo_fold = folds.loc[folds["label"] == "solo", "fold"].unique().tolist()
    assert len(solo_fold) == 1 and read_folds(fold_path(cfg)).equals(folds)
    assert capsys.readouterr().err.splitlines() == [
        "no fold file yet: making folds/t.csv",
        "warning: folds/t.csv: the model of a fold never trains on a class found only in that fold: "
        f"'solo' only in fold {solo_fold[0]} (3 clips)"]


def followed(message: str, key: str) -> float:
    """The value an error message tells the user to set `key` to."""
    return float(re.search(rf"set {re.escape(key)} to at (?:least|most) ([\d.]+)", message).group(1))


def suggested(message: str) -> dict[str, float]:
    """The settings a refused holdout's message says work: `folds.holdout=0.2 with folds.seed=43 works (tried...`."""
    clause = re.search(r"((?:folds\.\w+=[\d.]+(?: with )?)+) works \(tried", message)
    assert clause, message
    return {key: float(value) for key, value in re.findall(r"(folds\.\w+)=([\d.]+)", clause.group(1))}


def assert_works(clips: pd.DataFrame, n_splits: int, seed: int, message: str) -> pd.DataFrame:
    """Following a refusal's suggestion makes valid folds with a holdout, in one step."""
    settings = {"folds.n_splits": n_splits, "folds.seed": seed, **suggested(message)}
    folds = make_folds(clips, n_splits=int(settings["folds.n_splits"]), seed=int(settings["folds.seed"]),
                       holdout=settings["folds.holdout"] if "folds.holdout" in settings else 0.0)
    validate_folds(folds, int(settings["folds.n_splits"]), Path("folds/t.csv"), "exp")
    assert (folds["fold"] == -1).any()
    return folds


def test_holdout_finer_than_every_class():
    clips = per_clip_table()  # scikit-learn: "n_splits=10 cannot be greater than the number of members in each class"
    with pytest.raises(UserError) as refused:
        make_folds(clips, n_splits=5, seed=0, holdout=0.1)
    assert str(refused.value) == ("folds.holdout=0.1 splits each class into 10 parts to hold one out, but no class "
                                  "has 10 clips (the largest, 'f', has 9); folds.holdout=0.11 works (tried: it makes "
                                  "valid folds), or 0 for no holdout")
    assert_works(clips, 5, 0, str(refused.value))


def test_more_folds_than_clips_in_every_class():
    clips = per_clip_table()  # scikit-learn: "n_splits=10 cannot be greater than the number of members in each class"
    with pytest.raises(UserError) as refused:
        make_folds(clips, n_splits=10, seed=0)
    assert str(refused.value) == ("folds.n_splits=10 but no class has 10 clips (the largest, 'f', has 9); "
                                  "set folds.n_splits to at most 9")
    n_splits = int(followed(str(refused.value), "folds.n_splits"))
    validate_folds(make_folds(clips, n_splits=n_splits, seed=0), n_splits, Path("folds/t.csv"), "exp")


def test_more_folds_than_clips_left_in_every_class_after_the_holdout():
    clips = per_clip_table()
    with pytest.raises(UserError, match=r"^folds\.n_splits=8 but no class has 8 clips outside the holdout \(the "
                                        r"largest, '\w', has [67]\); folds\.holdout=0\.\d+( with folds\.seed=\d)? "
                                        r"works") as refused:
        make_folds(clips, n_splits=8, seed=0, holdout=0.2)
    assert_works(clips, 8, 0, str(refused.value))


def test_holdout_needing_more_groups_suggests_a_holdout_that_works():
    rows = [(f"s{g}_{k}", "ab"[k % 2], f"s{g}") for g in range(30) for k in range(4)]
    clips = pd.DataFrame(rows, columns=["id", "label", "group"])
    with pytest.raises(UserError, match=r"holds out one group in 50, but there are only 30 groups; folds\.holdout="
                                        r"0\.04 works") as refused:
        make_folds(clips, n_splits=5, seed=0, holdout=0.02)
    assert_works(clips, 5, 0, str(refused.value))  # 0.03 would ask for 33 of the 30 groups


def loop_table(speakers: int | None, sole: int = 0) -> pd.DataFrame:
    """50 classes of 4 or 5 clips: each clip its own speaker (`speakers` None), or clip i of class c said by speaker
    (c + i) mod `speakers`; the first `sole` classes are said by speaker s0 alone (the most lopsided speaker, which
    scikit-learn puts in the holdout first, whatever the seed)."""
    rows = [(f"c{c}_{i}", f"class{c}", f"c{c}_{i}" if speakers is None else f"s{0 if c < sole else (c + i) % speakers}")
            for c in range(50) for i in range(4 + c % 2)]
    return pd.DataFrame(rows, columns=["id", "label", "group"])


@pytest.mark.parametrize("speakers, sole, holdout", [(8, 3, 0.1), (8, 3, 0.13), (8, 3, 0.15), (8, 3, 0.17),
                                                     (20, 0, 0.1), (20, 3, 0.17)])
def test_a_refused_holdout_names_a_setting_that_works_in_one_step(speakers: int, sole: int, holdout: float):
    """The suggestions went round in a loop: 0.1 -> 'at least 0.13' -> 'no class has 8 clips' -> ... Now the setting
    suggested is one that was tried and passes every check."""
    clips = loop_table(speakers, sole)
    with pytest.raises(UserError) as refused:
        make_folds(clips, n_splits=5, seed=42, holdout=holdout)
    assert str(refused.value).startswith(f"folds.holdout={holdout} ")
    assert_works(clips, 5, 42, str(refused.value))


def test_when_no_holdout_works_with_these_folds_it_says_why_and_what_does():
    clips = loop_table(None)  # one clip per speaker, at most 5 clips a class: a holdout leaves no class 5 for 5 folds
    with pytest.raises(UserError) as refused:
        make_folds(clips, n_splits=5, seed=42, holdout=0.1)
    message = str(refused.value)
    assert ("no folds.holdout tried (near 0.1, folds.seed 42 to 46) works with folds.n_splits=5: each needs more than "
            "the 5 clips of the largest class or leaves no class 5 clips outside the holdout; folds.n_splits=4 with "
            "folds.holdout=0.2 works") in message, message
    assert_works(clips, 5, 42, message)


def test_when_no_holdout_works_at_all_it_says_so():
    clips = loop_table(10, sole=3)  # the holdout always takes s0, and with it three classes whole
    with pytest.raises(UserError) as refused:
        make_folds(clips, n_splits=5, seed=42, holdout=0.2)
    message = str(refused.value)
    assert message.startswith("folds.holdout=0.2 holds out every clip of class 'class1' (5 clips), 'class0' (4 clips), "
                              "'class2' (4 clips), so no fold could learn it; no folds.holdout tried (near 0.2, "
                              "folds.seed 42 to 46) works with folds.n_splits=5: each "), message
    assert "holds out every clip of some class" in message and message.endswith("; use folds.holdout=0 (no holdout)")
    validate_folds(make_folds(clips, n_splits=5, seed=42), 5, Path("folds/t.csv"), "exp")


def test_every_class_a_single_clip_is_a_label_rule_mistake():
    clips = pd.DataFrame({"id": ["a", "b", "c"], "label": ["a", "b", "c"], "group": ["g", "h", "i"]})
    with pytest.raises(UserError, match=r"^every class has a single clip \(e\.g\. '\w'\), so none can be both "
                                        r"trained on and validated; check the label rule"):
        make_folds(clips, n_splits=2, seed=0)


# --- the command ---------------------------------------------------------------------------------------------


def run_folds(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_here("competition.folds", *args, cwd=cwd)


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
    assert_one_line_error(missing, "command line: 'data.train.path' is 'nowhere.zip': no such folder or zip")

    for holdout in ("0.9", "0.51", "-0.1"):  # 0.9 was a holdout of 0.5 without a word
        too_large = run_folds(workdir, "exp=exp", f"folds.holdout={holdout}")
        assert_one_line_error(too_large, f"command line: 'folds.holdout' is {holdout}, but it works from 0 (no "
                                         "holdout) to 0.5")


def test_command_refuses_a_holdout_that_takes_a_whole_class(workdir):
    names = fsdd_names(digits=range(4), indexes=range(3)) + fsdd_names(digits=range(4, 5), speakers=["george"])
    fsdd_zip(workdir / "digits.zip", names)  # digit 4 is said by george alone
    make_config(workdir, {"name": "digits", "train": {"path": "digits.zip", "layout": "filename",
                                                      "filename_regex": FSDD_REGEX}})
    kept = run_folds(workdir, "exp=exp", "folds.n_splits=3", "folds.holdout=0.17", "audio.sample_rate=8000")
    assert kept.returncode == 0, kept.stderr  # this holdout keeps george: digit 4 is in one fold, with a warning
    warned = [line for line in kept.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: folds/digits.csv: the model of a fold never trains on "
                                                     "a class found only in that fold: '4' only in fold ")
    folds = read_folds(workdir / "folds" / "digits.csv")
    result = run_folds(workdir, "exp=exp", "folds.n_splits=3", "folds.holdout=0.2", "audio.sample_rate=8000",
                       "overwrite=true")  # holds george, the most lopsided speaker, out first
    assert_one_line_error(result, "folds.holdout=0.2 holds out every clip of class '4' (3 clips), so no fold could "
                          "learn it; folds.holdout=", "works (tried: it makes valid folds)")
    assert read_folds(workdir / "folds" / "digits.csv").equals(folds)  # refused before writing, even with overwrite


def test_per_clip_groups_warn_exactly_when_no_speaker_is_known(workdir, capsys):
    from competition import folds

    for label, freq in (("0", 300.0), ("1", 900.0)):
        for take in range(6):
            write_clip(workdir / "data" / f"{label}{take}.wav", tone(freq, 8000, 0.1), 8000)
    (workdir / "data" / "targets.tsv").write_text("".join(f"{label}{take}\t{label}\ts{take % 3}\n"
                                                          for label in "01" for take in range(6)))
    train = {"path": "data", "layout": "table", "table": "targets.tsv"}
    make_config(workdir, {"name": "nogroup", "train": train}, folds={"n_splits": 2})
    code, _, err = run_verb(capsys, folds, "exp=exp")
    assert code == 0 and "folds/nogroup.csv knows no speaker (group)" in err and "data.train.group_column" in err
    assert "or group the clips by voice with folds.groups=voice" in err
    make_config(workdir, {"name": "grouped", "train": {**train, "group_column": "group"}}, folds={"n_splits": 2})
    code, _, err = run_verb(capsys, folds, "exp=exp")
    assert code == 0 and "knows no speaker" not in err
    assert read_folds(workdir / "folds" / "grouped.csv")["group"].nunique() == 3


# --- groups found by voice (folds.groups=voice) ----------------------------------------------------------------

# Two male and two female speakers of speechocean762 whose six clips each lie at most 0.21 apart in the speaker
# encoder's cosine distance, and at least 0.4 from each other speaker's on average: measured well inside the 0.3
# at which voice clusters stop merging, so each is found as exactly one group.
VOICES = {"spk9628": "0", "spk0981": "0", "spk0135": "1", "spk2116": "1"}


@pytest.fixture
def voices(workdir):
    """24 real clips (4 speakers x 6) laid out as the voice-gender contest: train/<id>.wav and targets.tsv with
    id<TAB>gender, no speaker column; the experiment asks for folds.groups=voice and 2 folds."""
    clips = shared_data("speechocean762_gender", "clips")
    train = workdir / "data" / "train"
    train.mkdir(parents=True)
    lines = []
    for speaker, gender in VOICES.items():
        for take in range(6):
            (train / f"{speaker}_{take:02d}.wav").symlink_to(clips / f"{speaker}_{take:02d}.wav")
            lines.append(f"{speaker}_{take:02d}\t{gender}\n")
    (train / "targets.tsv").write_text("".join(lines))
    data = {"name": "voices", "train": {"path": "data/train", "layout": "table", "table": "targets.tsv"}}
    make_config(workdir, data, folds={"n_splits": 2, "groups": "voice"})
    return workdir


def test_voice_groups_keep_each_real_speaker_in_one_group_and_fold(voices, capsys):
    from competition import folds as folds_module

    code, out, err = run_verb(capsys, folds_module, "exp=exp")
    assert code == 0, err
    assert "embedding 24 clips with the speaker encoder" in err and "knows no speaker" not in err
    assert "wrote folds/voices.csv (24 clips, 4 groups found by voice, 2 folds" in out
    folds = read_folds(voices / "folds" / "voices.csv")
    speakers = folds["id"].str.split("_").str[0]
    assert folds["group"].str.fullmatch(r"voice\d{4}").all()
    assert purity(folds["group"], speakers) == 1.0 and together(folds["group"], speakers) == 1.0
    assert (folds.groupby(speakers)["fold"].nunique() == 1).all()  # no voice leaks into another fold
    assert (pd.crosstab(folds["label"], folds["fold"]) == 6).all().all()  # one speaker of each gender per fold

    # the same file again, from the embeddings now in the store; then every fold reads it without re-embedding
    code, out, err = run_verb(capsys, folds_module, "exp=exp")
    assert code == 0 and "unchanged: folds/voices.csv" in out
    config = Path("experiments/exp/config.yaml")
    cfg = load_config(config)
    clips = index_train(cfg).clips
    assert ensure_folds(cfg, clips, "exp").equals(folds) and "embedding" not in capsys.readouterr().err

    # the file made by voice is not the per-clip file of the same data, and is not taken for it
    with pytest.raises(UserError, match=r"^folds/voices\.csv was made with folds\.groups=voice: set "
                                        r"folds\.groups=voice in experiments/exp/config\.yaml, or remake"):
        ensure_folds(load_config(config, ["folds.groups=''"]), clips, "exp")
    per_clip = make_folds(clips, n_splits=2, seed=42)
    with pytest.raises(UserError, match=r"^folds/voices\.csv was made without folds\.groups=voice"):
        check_folds(per_clip, clips, Path("folds/voices.csv"), "exp", voice=True)


def test_voice_groups_refused_where_the_data_names_its_speakers(fsdd_clips):
    _, clips = fsdd_clips
    cfg = load_config(Path("experiments/exp/config.yaml"), ["folds.groups=voice"])
    with pytest.raises(UserError, match=r"^folds\.groups=voice guesses the speakers from their voices, but this data "
                                        r"names them already \(data\.train\.group_column .*\); drop folds\.groups"
                                        r"=voice to use the named speakers$"):
        ensure_folds(cfg, clips, "exp")
    assert not fold_path(cfg).exists()


def test_purity_and_together_of_known_speakers():
    speakers = pd.Series(["a", "a", "a", "b", "b", "c"])
    assert purity(pd.Series(["g1", "g1", "g2", "g2", "g2", "g3"]), speakers) == 5 / 6  # g2's majority is b
    assert together(pd.Series(["g1", "g1", "g2", "g2", "g2", "g3"]), speakers) == 2 / 4  # a split; b together
    assert purity(pd.Series(["g"] * 6), speakers) == 0.5 and together(pd.Series(["g"] * 6), speakers) == 1.0


@pytest.mark.parametrize("where", ["command line", "file"])
def test_an_unknown_folds_groups_value_is_one_line_naming_the_key(workdir, where):
    make_config(workdir, {"train": {"path": "unused"}})
    if where == "file":
        config = workdir / "experiments" / "exp" / "config.yaml"
        config.write_text(config.read_text() + "folds:\n  groups: speaker\n")
    result = run_folds(workdir, "exp=exp", *(["folds.groups=voices"] if where == "command line" else []))
    value, blamed = ("voices", "command line") if where == "command line" else ("speaker", "experiments/exp/config.yaml")
    assert_one_line_error(result, f"{blamed}: 'folds.groups' is '{value}'", "choose one of '', voice")
