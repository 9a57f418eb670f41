"""The built-in demo data: layout, audio format, balance, hidden answers, determinism and caching."""

import collections
import hashlib
import pathlib
import re
import sys

import numpy as np
import pytest
import soundfile as sf

from competition import demo
from competition.errors import UserError

N_TRAIN = demo.N_TRAIN_SPEAKERS * len(demo.WORDS)
N_TEST = demo.N_TEST_SPEAKERS * len(demo.WORDS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A cache folder holding one generated demo, shared by the tests (generation takes seconds)."""
    cache = tmp_path_factory.mktemp("cache")
    demo.ensure_demo(cache / "demo" / demo.DEMO_VERSION)
    return cache


@pytest.fixture(scope="module")
def root(cache: pathlib.Path) -> pathlib.Path:
    return cache / "demo" / demo.DEMO_VERSION


def read_speakers(root: pathlib.Path) -> dict[str, dict[str, str]]:
    lines = (root / "speakers.csv").read_text().splitlines()
    assert lines[0] == "speaker,voice,variant,gender,pitch,rate,split"
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    return {row["speaker"]: row for row in rows}


def read_tsv(path: pathlib.Path) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split("\t") for line in path.read_text().splitlines())}


def digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_words_layout_is_balanced(root: pathlib.Path) -> None:
    train = root / "words" / "train"
    assert sorted(p.name for p in train.iterdir()) == sorted(demo.WORDS)
    for word in demo.WORDS:
        names = sorted(p.name for p in (train / word).iterdir())
        assert len(names) == demo.N_TRAIN_SPEAKERS
        assert all(re.fullmatch(r"s\d{3}_nohash_\d+\.wav", name) for name in names)

    test = sorted(p.name for p in (root / "words" / "test").iterdir())
    assert test == [f"clip_{i:06d}.wav" for i in range(N_TEST)]
    lines = (root / "words" / "test_answers.csv").read_text().splitlines()
    assert lines[0] == "fname,label"
    answers = dict(line.split(",") for line in lines[1:])
    assert sorted(answers) == test
    assert collections.Counter(answers.values()) == {word: demo.N_TEST_SPEAKERS for word in demo.WORDS}


def test_every_clip_is_one_second_of_16_bit_mono_audio(root: pathlib.Path) -> None:
    clips = sorted((root / "words").rglob("*.wav")) + sorted((root / "gender").rglob("*.wav"))
    assert len(clips) == 2 * (N_TRAIN + N_TEST)
    for path in clips:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16"), path
        audio, _ = sf.read(path, dtype="int16")
        peak = np.abs(audio.astype(np.int32)).max()
        assert 3000 < peak < 32767, path  # audible speech, never clipped


def test_speakers_table_and_splits(root: pathlib.Path) -> None:
    speakers = read_speakers(root)
    train = {name for name, row in speakers.items() if row["split"] == "train"}
    test = {name for name, row in speakers.items() if row["split"] == "test"}
    assert (len(train), len(test)) == (demo.N_TRAIN_SPEAKERS, demo.N_TEST_SPEAKERS)
    assert not train & test
    in_folders = {p.name.split("_nohash_")[0] for p in (root / "words" / "train").rglob("*.wav")}
    assert in_folders == train
    for split in (train, test):
        genders = collections.Counter(speakers[name]["gender"] for name in split)
        assert genders == {"0": len(split) // 2, "1": len(split) // 2}
    assert all("_" not in name for name in speakers)


def test_gender_train_targets_match_the_speakers(root: pathlib.Path) -> None:
    speakers = read_speakers(root)
    targets = read_tsv(root / "gender" / "train" / "targets.tsv")
    assert sorted(targets) == [f"{i:05d}" for i in range(N_TRAIN)]
    assert sorted(p.stem for p in (root / "gender" / "train").glob("*.wav")) == sorted(targets)
    assert collections.Counter(targets.values()) == {0: N_TRAIN // 2, 1: N_TRAIN // 2}
    speaker_of = {digest(p): p.name.split("_nohash_")[0] for p in (root / "words" / "train").rglob("*.wav")}
    for key, gender in targets.items():
        speaker = speaker_of[digest(root / "gender" / "train" / f"{key}.wav")]
        assert gender == int(speakers[speaker]["gender"])


def test_test_answers_match_a_fresh_synthesis(root: pathlib.Path) -> None:
    """Re-synthesising the test speakers gives the very same clips, and the hidden answers fit them."""
    speakers = demo._speakers()
    indices = [i for i, s in enumerate(speakers) if s.split == "test"]
    truth = {}  # clip bytes -> (word, gender)
    for index, clips in zip(indices, demo._render(indices)):
        for word, clip in zip(demo.WORDS, clips):
            truth[clip.tobytes()] = (word, speakers[index].gender)
    assert len(truth) == N_TEST

    words = dict(line.split(",") for line in (root / "words" / "test_answers.csv").read_text().splitlines()[1:])
    for fname, word in words.items():
        audio, _ = sf.read(root / "words" / "test" / fname, dtype="int16")
        assert truth[audio.tobytes()][0] == word
    genders = read_tsv(root / "gender" / "test_answers.tsv")
    assert sorted(genders) == [f"{i:05d}" for i in range(N_TEST)]
    for key, gender in genders.items():
        audio, _ = sf.read(root / "gender" / "test" / f"{key}.wav", dtype="int16")
        assert truth[audio.tobytes()][1] == gender


def test_generation_is_deterministic(root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Two speakers synthesised again, each twice, give byte-identical WAV files."""
    first, second = demo._render([0, 3]), demo._render([0, 3])
    speakers = demo._speakers()
    for index, clips_a, clips_b in zip([0, 3], first, second):
        for word, a, b in zip(demo.WORDS, clips_a, clips_b):
            assert np.array_equal(a, b)
            demo._write_wav(tmp_path / "clip.wav", a)
            stored = root / "words" / "train" / word / f"{speakers[index].name}_nohash_0.wav"
            assert (tmp_path / "clip.wav").read_bytes() == stored.read_bytes()


def test_female_voices_are_higher(root: pathlib.Path) -> None:
    """The gender contest is learnable: female speakers' median f0 is clearly above the male speakers'."""
    import librosa

    speakers = read_speakers(root)
    f0 = {0: [], 1: []}
    for word in ("seven", "zero", "happy"):
        for path in sorted((root / "words" / "train" / word).glob("*.wav")):
            audio, rate = sf.read(path, dtype="float32")
            loud = np.abs(audio) > 0.1 * np.abs(audio).max()
            track = librosa.yin(audio[np.flatnonzero(loud)[0] : np.flatnonzero(loud)[-1]], fmin=50, fmax=400, sr=rate)
            f0[int(speakers[path.name.split("_nohash_")[0]]["gender"])].append(np.median(track))
    male, female = np.median(f0[0]), np.median(f0[1])
    assert female > 1.4 * male, (male, female)


def test_complete_demo_is_not_generated_again(
    root: pathlib.Path, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    marker = root / "COMPLETE"
    assert marker.read_text().strip() == demo.DEMO_VERSION
    before = marker.stat().st_mtime_ns, (root / "speakers.csv").stat().st_mtime_ns
    monkeypatch.setenv("COMPETITION_CACHE", str(cache))
    assert demo.ensure_demo() == root
    assert demo.demo_path("words/train") == str(root / "words" / "train")
    assert (marker.stat().st_mtime_ns, (root / "speakers.csv").stat().st_mtime_ns) == before
    assert "generating" not in capsys.readouterr().err
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]


def test_demo_root_follows_the_cache_variable(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPETITION_CACHE", str(tmp_path))
    assert demo.demo_root() == tmp_path / "demo" / demo.DEMO_VERSION
    monkeypatch.delenv("COMPETITION_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo.demo_root() == tmp_path / "home" / ".cache" / "competition" / "demo" / demo.DEMO_VERSION


def test_a_foreign_folder_is_not_overwritten(tmp_path: pathlib.Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="COMPLETE"):
        demo.ensure_demo(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_missing_espeak_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    with pytest.raises(UserError, match="pip install espeakng-loader"):
        demo._espeak_paths()
