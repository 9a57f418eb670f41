"""competition.mixtures: the multi-label contest mixed from single-label recordings, checked against its own answers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from competition import mixtures
from competition.errors import UserError
from conftest import SPEAKERS, error_line, run_verb, shared_data, tone, write_clip

SMALL = {"clips": 24, "test_clips": 8, "recordings": 2, "soundscape_seconds": 15}
TONES = {"low": 300.0, "mid": 800.0, "high": 2000.0}
TONE_SPEAKERS = ["spk0", "spk1", "spk2", "spk3"]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def check_contest(root: Path, classes: set[str], train_speakers: list[str], test_speakers: list[str],
                  seconds: int = 15, window: int = 5, duration: float = 3.0, rate: int = 16000) -> None:
    """Everything a user of the contest relies on, recomputed here from the files alone."""
    assert (root / "COMPLETE").is_file()
    assert not list(root.parent.glob(f".{root.name}.tmp*"))
    settings = json.loads((root / "COMPLETE").read_text())
    assert settings["train_speakers"] == train_speakers and settings["test_speakers"] == test_speakers
    assert not set(train_speakers) & set(test_speakers)

    train, test = read(root / "train" / "labels.csv"), read(root / "test_answers.csv")
    assert list(train.columns) == ["id", "labels", "speaker"] and list(test.columns) == ["id", "labels"]
    assert set(train["speaker"]) <= set(train_speakers) and len(set(train["speaker"])) > 1
    assert not set(train["id"]) & set(test["id"])
    for table, folder in ((train, root / "train"), (test, root / "test")):
        assert sorted(p.stem for p in folder.glob("*.wav")) == sorted(table["id"])
        for labels in table["labels"]:
            parts = labels.split(" ")
            assert 1 <= len(parts) <= 3 and parts == sorted(set(parts)) and set(parts) <= classes, labels
        for clip in table["id"]:
            info = soundfile.info(folder / f"{clip}.wav")
            assert (info.samplerate, info.frames, info.channels) == (rate, round(duration * rate), 1)
    assert train["labels"].str.contains(" ").any()  # some clips really are multi-label

    events, answers = read(root / "soundscape_events.csv"), read(root / "soundscape_answers.csv")
    assert list(events.columns) == ["rec", "label", "onset", "offset"] and list(answers.columns) == ["row_id", "labels"]
    recs = sorted(p.stem for p in (root / "soundscapes").glob("*.wav"))
    assert recs == [f"rec{i:03d}" for i in range(settings["recordings"])]
    for rec in recs:
        info = soundfile.info(root / "soundscapes" / f"{rec}.wav")
        assert (info.samplerate, info.frames) == (rate, seconds * rate)
    ends = range(window, seconds + 1, window)
    assert answers["row_id"].tolist() == [f"{rec}_{end}" for rec in recs for end in ends]
    assert len(events) > 0 and set(events["label"]) <= classes and set(events["rec"]) <= set(recs)
    expected = {}
    for rec in recs:
        for end in ends:
            inside = set()
            for event in events[events["rec"] == rec].itertuples():
                onset, offset = float(event.onset), float(event.offset)
                assert 0 <= onset < offset <= seconds
                overlap = min(offset, end) - max(onset, end - window)
                if overlap >= (offset - onset) / 2:
                    inside.add(event.label)
            expected[f"{rec}_{end}"] = " ".join(sorted(inside))
    assert dict(zip(answers["row_id"], answers["labels"])) == expected
    assert (answers["labels"] != "").any()


def label_files(root: Path) -> dict[str, bytes]:
    names = ["train/labels.csv", "test_answers.csv", "soundscape_answers.csv", "soundscape_events.csv", "COMPLETE"]
    return {name: (root / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def fsdd_contest(tmp_path_factory) -> Path:
    source, noise = shared_data("fsdd", "recordings"), shared_data("background_noise")
    return mixtures.make_mixtures(source, tmp_path_factory.mktemp("fsdd") / "mix", noise=noise, **SMALL)


def test_fsdd_contest_matches_its_answers(fsdd_contest):
    # the default test speakers: the last quarter in sorted order
    check_contest(fsdd_contest, {str(d) for d in range(10)}, SPEAKERS[:4], SPEAKERS[4:])
    assert len(json.loads((fsdd_contest / "COMPLETE").read_text())["noise"]) == 6  # the real noise recordings


def test_same_seed_same_files_and_a_finished_contest_is_kept(fsdd_contest, tmp_path):
    noise = shared_data("background_noise")
    again = mixtures.make_mixtures(shared_data("fsdd", "recordings"), tmp_path / "again", noise=noise, **SMALL)
    assert label_files(again) == label_files(fsdd_contest)
    assert (again / "test" / "test_00003.wav").read_bytes() == (fsdd_contest / "test" / "test_00003.wav").read_bytes()

    stamp = (again / "COMPLETE").stat().st_mtime_ns  # the same settings again: nothing is rebuilt
    mixtures.make_mixtures(shared_data("fsdd", "recordings"), again, noise=noise, **SMALL)
    assert (again / "COMPLETE").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="other settings.*overwrite=true"):
        mixtures.make_mixtures(shared_data("fsdd", "recordings"), again, noise=noise, seed=1, **SMALL)
    mixtures.make_mixtures(shared_data("fsdd", "recordings"), again, noise=noise, seed=1, overwrite=True, **SMALL)
    assert label_files(again)["train/labels.csv"] != label_files(fsdd_contest)["train/labels.csv"]


def write_class_folders(root: Path) -> tuple[Path, Path]:
    """The demo's layout in miniature: tones padded with silence at 8 kHz, and a 16 kHz noise recording."""
    rng = np.random.default_rng(0)
    for label, freq in TONES.items():
        for speaker in TONE_SPEAKERS:
            for take in range(2):
                wave = np.concatenate([np.zeros(800, np.float32), tone(freq * rng.uniform(0.95, 1.05), 8000, 0.4),
                                       np.zeros(800, np.float32)])
                write_clip(root / "src" / label / f"{speaker}_nohash_{take}.wav", wave, 8000)
    write_clip(root / "src" / "_background_noise_" / "hum.wav", tone(50, 8000, 1.0), 8000)  # not a class
    noise = write_clip(root / "noise" / "room.wav", (0.1 * rng.standard_normal(16000 * 4)).astype(np.float32), 16000)
    return root / "src", noise.parent


def test_class_folders_by_the_command(tmp_path, capsys):
    source, noise = write_class_folders(tmp_path)
    args = [f"source={source}", f"out={tmp_path / 'mix'}", f"noise={noise}", "clips=16", "test_clips=6",
            "recordings=2", "soundscape_seconds=10", "density=0.5", "duration=2", "test_speakers=spk1"]
    code, out, err = run_verb(capsys, mixtures, *args)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'mix'}: 16 train clips (speakers spk0, spk2, spk3)"), out
    check_contest(tmp_path / "mix", set(TONES), ["spk0", "spk2", "spk3"], ["spk1"], seconds=10, duration=2.0)
    first = label_files(tmp_path / "mix")
    code, out, err = run_verb(capsys, mixtures, *args)
    assert code == 0 and out.startswith("unchanged:"), out + err

    code, out, err = run_verb(capsys, mixtures, *[f"out={tmp_path / 'b'}" if a.startswith("out=") else a for a in args])
    assert code == 0, err
    assert label_files(tmp_path / "b") == first  # the same seed elsewhere: the same files


def test_generated_noise_and_default_test_speaker(tmp_path):
    source, _ = write_class_folders(tmp_path)
    root = mixtures.make_mixtures(source, tmp_path / "mix", clips=12, test_clips=4, recordings=1,
                                  soundscape_seconds=10, density=0.5, layout="class_folders", seed=3)
    check_contest(root, set(TONES), TONE_SPEAKERS[:3], TONE_SPEAKERS[3:], seconds=10)
    assert json.loads((root / "COMPLETE").read_text())["noise"] == []


def test_interrupted_build_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    source, noise = write_class_folders(tmp_path)
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    real = mixtures._over_noise
    monkeypatch.setattr(mixtures, "_over_noise", failing)
    with pytest.raises(KeyboardInterrupt):
        mixtures.make_mixtures(source, tmp_path / "mix", noise=noise, clips=6, test_clips=2, recordings=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise", "src"]


def test_missing_source_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"source={missing}: no such folder"):
        mixtures.make_mixtures(missing, tmp_path / "mix")
    code, out, err = run_verb(capsys, mixtures, f"source={missing}", f"out={tmp_path / 'mix'}")
    assert code == 2 and str(missing) in error_line(err) and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "mix").exists()
    for args, message in ((["out=x"], "source= is missing"), ([f"source={tmp_path}", "out=x", "clip=3"],
                                                                 "did you mean clips"),
                          ([f"source={tmp_path}", "out=x", "snr=5"], "snr=5: give the lowest and highest")):
        code, _, err = run_verb(capsys, mixtures, *args)
        assert code == 2 and message in error_line(err), err


def test_wrong_layout_says_so(tmp_path):
    source, _ = write_class_folders(tmp_path)
    with pytest.raises(UserError, match="not named .*class_folders"):
        mixtures.make_mixtures(source / "low", tmp_path / "mix", layout="fsdd")
