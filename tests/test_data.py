"""Indexing every supported layout, from folders and from zips read in place, and the errors users will meet."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from competition.cache import load_split
from competition.data import index_test, index_train, with_test_source
from competition.errors import UserError
from conftest import (FSDD, FSDD_REGEX, SPEAKERS, fsdd_names, fsdd_zip, make_config, shared_data, tone, write_clip,
                      zip_folder)

FREQ = {"0": 300.0, "1": 1200.0}  # voice-gender shape: label 0 / 1, one tone frequency per class


def voice_gender(root: Path, n: int = 6) -> dict[str, str]:
    """train/<id>.wav + train/targets.tsv (id<TAB>label, no header) and test/<id>.wav; returns id -> label."""
    labels = {f"{i:03d}": str(i % 2) for i in range(n)}
    for clip_id, label in labels.items():
        write_clip(root / "train" / f"{clip_id}.wav", tone(FREQ[label], 16000, 0.2 + 0.05 * int(clip_id)), 16000)
    (root / "train" / "targets.tsv").write_text("".join(f"{i}\t{g}\n" for i, g in labels.items()))
    for i in range(3):
        write_clip(root / "test" / f"t{i}.wav", tone(700.0, 16000, 0.3), 16000)
    return labels


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def as_dict(clips, column: str) -> dict[str, str]:
    return dict(zip(clips["id"], clips[column]))


# --- layouts -------------------------------------------------------------------------------------------------


def test_table_layout_voice_gender_folder(workdir):
    labels = voice_gender(workdir / "data")
    cfg = make_config(workdir, {"train": {"path": "data/train", "layout": "table", "table": "targets.tsv"},
                                "test": {"path": "data/test"}})
    split = index_train(cfg)
    assert as_dict(split.clips, "label") == labels  # ids keep their leading zeros
    assert as_dict(split.clips, "path") == {i: f"{i}.wav" for i in labels}
    assert as_dict(split.clips, "group") == {i: i for i in labels}  # no group rule: each clip is its own group
    test = index_test(cfg)
    assert test.clips["id"].tolist() == ["t0", "t1", "t2"] and "label" not in test.clips
    split, cache = load_split(split, cfg, skip_bad=False)
    for clip_id, label in labels.items():
        row = cache.rows(split.clips.loc[split.clips["id"] == clip_id, "path"])[0]
        offset, length = cache.clips.loc[row, ["offset", "length"]]
        assert length == round(16000 * (0.2 + 0.05 * int(clip_id)))
        assert peak_hz(cache.waves[offset: offset + length] / 32768, 16000) == pytest.approx(FREQ[label], abs=10)


def test_index_test_is_none_without_a_test_source(workdir):
    voice_gender(workdir / "data")
    cfg = make_config(workdir, {"train": {"path": "data/train", "table": "targets.tsv"}})
    assert index_test(cfg) is None


def test_csv_with_header_named_columns_ids_with_and_without_extension(workdir):
    rows = [("a.wav", "m", "spk1"), ("b", "f", "spk1"), ("c.wav", "m", "spk2"), ("d", "f", "spk2")]
    for clip_id, label, _ in rows:
        write_clip(workdir / "clips" / f"{clip_id.removesuffix('.wav')}.wav", tone(FREQ["0"], 8000, 0.1), 8000)
    (workdir / "labels.csv").write_text("speaker,file,sex\n" + "".join(f"{g},{i},{s}\n" for i, s, g in rows))
    cfg = make_config(workdir, {"train": {"path": "clips", "table": str(workdir / "labels.csv"), "header": True,
                                          "id_column": "file", "label_column": "sex", "group_column": "speaker"}})
    clips = index_train(cfg).clips
    assert as_dict(clips, "label") == {i: s for i, s, _ in rows}
    assert as_dict(clips, "group") == {i: g for i, _, g in rows}
    assert as_dict(clips, "path") == {i: f"{i.removesuffix('.wav')}.wav" for i, _, _ in rows}


def test_table_with_speaker_from_the_file_name(workdir):
    labels = {"anna_1": "f", "anna_2": "f", "bob_1": "m", "bob_2": "m", "cleo_1": "f"}
    for clip_id in labels:
        write_clip(workdir / "train" / f"{clip_id}.wav", tone(440, 8000, 0.05), 8000)
    (workdir / "train" / "targets.tsv").write_text("".join(f"{i}.wav\t{g}\n" for i, g in labels.items()))
    cfg = make_config(workdir, {"train": {"path": "train", "table": "targets.tsv",
                                          "filename_regex": r"(?P<group>[a-z]+)_\d"}})
    clips = index_train(cfg).clips
    assert as_dict(clips, "label") == {f"{i}.wav": g for i, g in labels.items()}
    assert as_dict(clips, "group") == {f"{i}.wav": i.split("_")[0] for i in labels}


def test_extensions_setting_picks_the_audio(workdir):
    for label in ("a", "b"):
        write_clip(workdir / "train" / label / "x.flac", tone(440, 8000, 0.05), 8000)
        write_clip(workdir / "train" / label / "x.wav", tone(440, 8000, 0.05), 8000)
    cfg = make_config(workdir, {"extensions": ["FLAC"], "train": {"path": "train", "layout": "class_folders"}})
    assert sorted(index_train(cfg).clips["path"]) == ["a/x.flac", "b/x.flac"]


def test_class_folders_with_group_from_filename(workdir):
    for label, freq in (("dog", 500.0), ("cat", 900.0), ("bird", 2000.0)):
        for speaker in ("s1", "s2"):
            for k in range(2):
                write_clip(workdir / "train" / label / f"{speaker}_{k}.wav", tone(freq, 16000, 0.1), 16000)
    cfg = make_config(workdir, {"train": {"path": "train", "layout": "class_folders",
                                          "filename_regex": r"(?P<group>s\d)_\d"}})
    clips = index_train(cfg).clips
    assert len(clips) == 12
    assert as_dict(clips, "label") == {i: i.split("/")[0] for i in clips["id"]}
    assert as_dict(clips, "group") == {i: i.split("/")[1].split("_")[0] for i in clips["id"]}
    assert set(clips["id"]) >= {"dog/s1_0", "cat/s2_1", "bird/s1_1"}  # same file name in two classes: two ids


def test_filename_layout_on_real_fsdd_in_place(workdir):
    fsdd = shared_data("fsdd", "recordings")
    cfg = make_config(workdir, {"train": {"path": str(fsdd), "layout": "filename", "filename_regex": FSDD_REGEX}})
    clips = index_train(cfg).clips
    assert len(clips) == len(list(fsdd.glob("*.wav"))) == 3000
    assert sorted(clips["group"].unique()) == SPEAKERS
    assert sorted(clips["label"].unique()) == [str(d) for d in range(10)]
    assert (clips["label"] == clips["id"].str.split("_").str[0]).all()
    assert (clips["group"] == clips["id"].str.split("_").str[1]).all()


def _build_layouts(root: Path) -> dict[str, tuple[Path, dict]]:
    """The same three small data sets as folders, for comparing against their zipped twins."""
    voice_gender(root / "vg")
    for label, freq in (("yes", 400.0), ("no", 800.0)):
        for k in range(3):
            write_clip(root / "cf" / "train" / label / f"{k}.wav", tone(freq, 8000, 0.1), 8000)
    names = fsdd_names(digits=range(2), speakers=SPEAKERS[:3], indexes=range(2))
    (root / "fn").mkdir()
    for name in names:
        (root / "fn" / name).write_bytes((FSDD / name).read_bytes())
    return {
        "table": (root / "vg" / "train", {"layout": "table", "table": "targets.tsv"}),
        "class_folders": (root / "cf" / "train", {"layout": "class_folders"}),
        "filename": (root / "fn", {"layout": "filename", "filename_regex": FSDD_REGEX}),
    }


@pytest.mark.parametrize("layout", ["table", "class_folders", "filename"])
@pytest.mark.parametrize("subdir", ["", "train"])
def test_every_layout_reads_the_same_from_a_zip(workdir, layout, subdir):
    folder, spec = _build_layouts(workdir / "src")[layout]
    archive = zip_folder(folder, workdir / "data.zip", prefix=subdir)
    in_folder = index_train(make_config(workdir, {"train": {"path": str(folder), **spec}}, name="folder"))
    in_zip = index_train(make_config(workdir, {"train": {"path": str(archive), "subdir": subdir, **spec}}, name="zip"))
    assert in_zip.source.is_zip and not in_folder.source.is_zip
    assert in_zip.clips.equals(in_folder.clips)
    rel = in_zip.clips["path"].iloc[0]
    assert in_zip.source.read(rel) == in_folder.source.read(rel)


def test_zip_with_table_beside_the_audio_folder_and_test_split(workdir):
    """A common contest archive: train/*.wav, test/*.wav and the label table at the zip's root."""
    labels = voice_gender(workdir / "src")
    (workdir / "src" / "train" / "targets.tsv").rename(workdir / "src" / "targets.tsv")
    archive = zip_folder(workdir / "src", workdir / "contest.zip")
    cfg = make_config(workdir, {"train": {"path": "contest.zip", "subdir": "train", "table": "../targets.tsv"},
                                "test": {"path": "contest.zip", "subdir": "test"}})
    split = index_train(cfg)
    assert as_dict(split.clips, "label") == labels
    test = index_test(cfg)
    assert test.clips["id"].tolist() == ["t0", "t1", "t2"]
    _, cache = load_split(test, cfg, skip_bad=False)
    assert cache.clips["length"].tolist() == [4800] * 3
    with zipfile.ZipFile(archive) as z:
        assert "train/000.wav" in z.namelist()  # read in place: nothing extracted beside the zip
    assert sorted(p.name for p in workdir.iterdir()) == ["cache", "contest.zip", "experiments", "src"]


def test_test_split_lists_every_audio_file_including_nested_and_flac(workdir):
    write_clip(workdir / "test" / "a.wav", tone(440, 16000, 0.1), 16000)
    write_clip(workdir / "test" / "b.flac", tone(440, 16000, 0.1), 16000)
    write_clip(workdir / "test" / "more" / "c.wav", tone(440, 16000, 0.1), 16000)
    (workdir / "test" / "notes.txt").write_text("not audio")
    voice_gender(workdir / "data")
    cfg = make_config(workdir, {"train": {"path": "data/train", "table": "targets.tsv"}, "test": {"path": "test"}})
    test = index_test(cfg)
    assert as_dict(test.clips, "path") == {"a": "a.wav", "b": "b.flac", "more/c": "more/c.wav"}


# --- decoding ------------------------------------------------------------------------------------------------


def test_flac_and_wav_decode_alike_and_stereo_is_mixed_to_mono(workdir):
    left, right = tone(500, 16000, 0.25, 0.6), tone(500, 16000, 0.25, 0.2)
    write_clip(workdir / "train" / "a" / "mono.wav", left, 16000)
    write_clip(workdir / "train" / "a" / "mono_flac.flac", left, 16000)
    write_clip(workdir / "train" / "b" / "stereo.wav", np.stack([left, right], axis=1), 16000)
    cfg = make_config(workdir, {"train": {"path": "train", "layout": "class_folders"}})
    split, cache = load_split(index_train(cfg), cfg, skip_bad=False)

    def wave(path: str) -> np.ndarray:
        offset, length = cache.clips.loc[cache.rows([path])[0], ["offset", "length"]]
        return cache.waves[offset: offset + length]

    for path in ("a/mono.wav", "a/mono_flac.flac"):  # a 16-bit source is cached bit for bit
        np.testing.assert_array_equal(wave(path), soundfile.read(workdir / "train" / path, dtype="int16")[0])
    np.testing.assert_allclose(wave("a/mono_flac.flac") / 32768, left, atol=1e-4)
    np.testing.assert_allclose(wave("b/stereo.wav") / 32768, (left + right) / 2, atol=1e-4)


@pytest.mark.parametrize("source_rate, target_rate", [(8000, 16000), (16000, 8000)])
def test_resampling_keeps_duration_and_frequency(workdir, source_rate, target_rate, capsys):
    for label, freq in (("low", 440.0), ("high", 1500.0)):
        write_clip(workdir / "train" / label / "x.wav", tone(freq, source_rate, 0.5), source_rate)
    write_clip(workdir / "train" / "low" / "native.wav", tone(440.0, target_rate, 0.5), target_rate)
    cfg = make_config(workdir, {"train": {"path": "train", "layout": "class_folders"}},
                      audio={"sample_rate": target_rate})
    split, cache = load_split(index_train(cfg), cfg, skip_bad=False)
    assert cache.clips["length"].tolist() == [target_rate // 2] * 3
    said = [line for line in capsys.readouterr().err.splitlines() if "resampled" in line]
    assert len(said) == 1 and f"2 of 3 train clips resampled to audio.sample_rate={target_rate} Hz " \
        f"(2 at {source_rate} Hz)" in said[0]
    load_split(index_train(cfg), cfg, skip_bad=False)  # the cache is reused: said once, when it was built
    assert "resampled" not in capsys.readouterr().err
    for path, freq in (("low/x.wav", 440.0), ("high/x.wav", 1500.0)):
        offset, length = cache.clips.loc[cache.rows([path])[0], ["offset", "length"]]
        assert peak_hz(cache.waves[offset: offset + length] / 32768, target_rate) == pytest.approx(freq, abs=4)


def _ramp_cache(workdir: Path):
    """Clips whose samples all differ (a ramp), so any crop shows where in the clip it was taken from."""
    rate = 16000
    write_clip(workdir / "train" / "long" / "x.wav", np.linspace(-0.9, 0.9, 3000, dtype=np.float32), rate)
    write_clip(workdir / "train" / "short" / "x.wav", np.linspace(0.1, 0.8, 700, dtype=np.float32), rate)
    cfg = make_config(workdir, {"train": {"path": "train", "layout": "class_folders"}})
    _, cache = load_split(index_train(cfg), cfg, skip_bad=False)
    rows = cache.rows(["long/x.wav", "short/x.wav"])

    def clip(row: int) -> np.ndarray:
        offset, length = cache.clips.loc[row, ["offset", "length"]]
        return cache.waves[offset: offset + length] / np.float32(32768)

    return cache, rows, clip(rows[0]), clip(rows[1])


def test_crops_are_centred_without_rng(workdir):
    cache, rows, long, short = _ramp_cache(workdir)
    batch = cache.crops(rows, 1000)
    assert batch.shape == (2, 1000) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], long[1000:2000])  # (3000 - 1000) / 2 cut from each side
    np.testing.assert_array_equal(batch[1, 150:850], short)  # (1000 - 700) / 2 silence on each side
    assert not batch[1, :150].any() and not batch[1, 850:].any()
    np.testing.assert_array_equal(cache.crops(rows, 1000), batch)


def test_moved_window_takes_the_clips_own_audio_and_silence_only_past_its_ends(workdir):
    cache, rows, long, short = _ramp_cache(workdir)
    later, earlier = cache.crops(rows, 1000, move=300), cache.crops(rows, 1000, move=-1200)
    np.testing.assert_array_equal(later[0], long[1300:2300])  # real audio where the long clip has it
    np.testing.assert_array_equal(earlier[0, 200:], long[:800])  # past the clip's start: silence
    assert not earlier[0, :200].any()
    np.testing.assert_array_equal(later[1, :550], short[150:])  # the short clip slides within its padding
    assert not later[1, 550:].any()
    np.testing.assert_array_equal(cache.crops(rows, 1000, move=0), cache.crops(rows, 1000))


def test_crops_are_random_windows_of_the_real_clip_with_rng(workdir):
    cache, rows, long, short = _ramp_cache(workdir)
    rng = np.random.default_rng(0)
    starts, pads = set(), set()
    for _ in range(20):
        batch = cache.crops(rows, 1000, rng)
        start = int(np.flatnonzero(long == batch[0, 0])[0])
        np.testing.assert_array_equal(batch[0], long[start: start + 1000])
        pad = int(np.flatnonzero(batch[1])[0])
        np.testing.assert_array_equal(batch[1, pad: pad + 700], short)
        assert not batch[1, :pad].any() and not batch[1, pad + 700:].any()
        starts.add(start)
        pads.add(pad)
    assert len(starts) > 10 and len(pads) > 10
    assert max(starts) <= 2000 and max(pads) <= 300


# --- mistakes ------------------------------------------------------------------------------------------------


def _table_config(workdir: Path, table: str, name: str = "targets.tsv", ids=("a", "b", "c", "d"), **spec):
    for i, clip_id in enumerate(ids):
        write_clip(workdir / "train" / f"{clip_id}.wav", tone(300 + 100 * i, 8000, 0.05), 8000)
    (workdir / "train" / name).write_text(table)
    return make_config(workdir, {"train": {"path": "train", "table": name, **spec}})


def test_missing_folder(workdir):
    cfg = make_config(workdir, {"train": {"path": "nowhere", "table": "targets.tsv"}})
    with pytest.raises(UserError, match=r"nowhere: no such folder or zip; check data\.train\.path in the experiment "
                                        r"config$"):
        index_train(cfg)


def test_a_file_that_is_not_a_zip(workdir):
    (workdir / "data.zip").write_bytes(b"not a zip at all")
    cfg = make_config(workdir, {"train": {"path": "data.zip", "table": "targets.tsv"}})
    with pytest.raises(UserError, match=r"data\.zip: not a folder or a readable \.zip; check data\.train\.path in the "
                                        r"experiment config$"):
        index_train(cfg)


def test_missing_subdir(workdir):
    voice_gender(workdir / "data")
    cfg = make_config(workdir, {"train": {"path": "data", "subdir": "trian", "table": "targets.tsv"}})
    with pytest.raises(UserError, match=r"trian: no such folder; check data\.train\.subdir in the experiment config$"):
        index_train(cfg)


def test_folder_without_audio(workdir):
    (workdir / "train").mkdir()
    (workdir / "train" / "targets.tsv").write_text("a\t0\n")
    (workdir / "train" / "a.mp3").write_bytes(b"")
    cfg = make_config(workdir, {"train": {"path": "train", "table": "targets.tsv"}})
    with pytest.raises(UserError, match=r"train: no audio files \(\.flac, \.wav\); check the path or data\.extensions"):
        index_train(cfg)


def test_missing_label_table(workdir):
    _table_config(workdir, "a\t0\n")
    cfg = make_config(workdir, {"train": {"path": "train", "table": "labels.tsv"}})
    with pytest.raises(UserError, match=r"labels\.tsv: label table not found; check data\.train\.table"):
        index_train(cfg)


def test_ids_without_audio_and_audio_without_label(workdir):
    cfg = _table_config(workdir, "a\t0\nb\t1\nc\t0\nghost\t1\n")  # d.wav has no label, ghost no audio
    with pytest.raises(UserError) as error:
        index_train(cfg)
    message = str(error.value)
    assert "1 ids in the label table have no audio file (ghost)" in message
    assert "1 audio files have no label (d.wav)" in message
    assert "data.strict=false" in message and "\n" not in message


def test_non_strict_leaves_unmatched_clips_out_with_a_warning(workdir, capsys):
    _table_config(workdir, "a\t0\nb\t1\nc\t0\nghost\t1\n")
    cfg = make_config(workdir, {"strict": False, "train": {"path": "train", "table": "targets.tsv"}})
    clips = index_train(cfg).clips
    assert as_dict(clips, "label") == {"a": "0", "b": "1", "c": "0"}
    warnings = capsys.readouterr().err
    assert "ghost" in warnings and "d.wav" in warnings and "left out" in warnings


def test_non_strict_with_nothing_matched(workdir):
    _table_config(workdir, "x\t0\ny\t1\n")
    cfg = make_config(workdir, {"strict": False, "train": {"path": "train", "table": "targets.tsv"}})
    with pytest.raises(UserError, match=r"train: no labelled audio after matching the table"):
        index_train(cfg)


def test_extra_column_on_one_line_of_a_headerless_table(workdir):
    cfg = _table_config(workdir, "a\t0\nb\t1\nc\t0\textra\nd\t1\n")
    with pytest.raises(UserError, match=r"targets\.tsv: malformed line \(Expected 2 fields in line 3, saw 3\)"):
        index_train(cfg)


def test_line_without_a_label(workdir):
    cfg = _table_config(workdir, "a\t0\nb\nc\t0\nd\t1\n")
    with pytest.raises(UserError, match=r"targets\.tsv: empty label on line 2;"):
        index_train(cfg)


def test_empty_label_with_header_counts_the_header_line(workdir):
    cfg = _table_config(workdir, "id,label\na,0\nb,1\nc, \nd,1\n", name="labels.csv", header=True)
    with pytest.raises(UserError, match=r"labels\.csv: empty label on line 4;"):
        index_train(cfg)


def test_duplicate_id(workdir):
    cfg = _table_config(workdir, "a\t0\nb\t1\nc\t0\nd\t1\nb\t0\n")
    with pytest.raises(UserError, match=r"targets\.tsv: id listed twice: b;"):
        index_train(cfg)


def test_two_ids_naming_the_same_file(workdir):
    cfg = _table_config(workdir, "a\t0\nb\t1\nc\t0\nd\t1\na.wav\t1\n")
    with pytest.raises(UserError, match=r"ids a, a\.wav name the same audio file"):
        index_train(cfg)


def test_missing_column_name(workdir):
    cfg = _table_config(workdir, "id,sex\na,m\nb,f\nc,m\nd,f\n", name="labels.csv", header=True,
                        label_column="gender")
    with pytest.raises(UserError, match=r"labels\.csv: no column 'gender'; columns are id, sex"):
        index_train(cfg)


def test_table_with_one_column(workdir):
    cfg = _table_config(workdir, "a 0\nb 1\nc 0\nd 1\n")
    with pytest.raises(UserError, match=r"targets\.tsv: expected lines .*found one column; check data\.train\.delim"):
        index_train(cfg)


def test_regex_that_misses_some_files(workdir):
    names = fsdd_names(digits=range(2), speakers=SPEAKERS[:2], indexes=range(2))
    archive = fsdd_zip(workdir / "digits.zip", names)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("extra_take.wav", (FSDD / names[0]).read_bytes())
    cfg = make_config(workdir, {"train": {"path": "digits.zip", "layout": "filename", "filename_regex": FSDD_REGEX}})
    with pytest.raises(UserError, match=r"1 file names do not match data\.train\.filename_regex .*extra_take\.wav"):
        index_train(cfg)


def test_filename_layout_needs_a_label_group(workdir):
    names = fsdd_names(digits=range(2), speakers=SPEAKERS[:2], indexes=range(1))
    fsdd_zip(workdir / "digits.zip", names)
    cfg = make_config(workdir, {"train": {"path": "digits.zip", "layout": "filename",
                                          "filename_regex": r"\d_(?P<group>[a-z]+)_\d+"}})
    with pytest.raises(UserError, match=r"needs data\.train\.filename_regex with a \(\?P<label>\.\.\.\) group"):
        index_train(cfg)


def test_class_folders_with_loose_files(workdir):
    write_clip(workdir / "train" / "yes" / "1.wav", tone(300, 8000, 0.05), 8000)
    write_clip(workdir / "train" / "no" / "1.wav", tone(600, 8000, 0.05), 8000)
    write_clip(workdir / "train" / "stray.wav", tone(600, 8000, 0.05), 8000)
    cfg = make_config(workdir, {"train": {"path": "train", "layout": "class_folders"}})
    with pytest.raises(UserError, match=r"1 files lie outside any class folder \(stray\.wav\)"):
        index_train(cfg)


def test_single_class(workdir):
    cfg = _table_config(workdir, "a\tcat\nb\tcat\nc\tcat\nd\tcat\n")
    with pytest.raises(UserError, match=r"only one class \(cat\) found"):
        index_train(cfg)


# --- file names, ids and table encodings ---------------------------------------------------------------------


def _two_classes(root: Path) -> None:
    """root/<a|b>/<label>_<k>.wav with a label table beside them (ids are paths without the extension)."""
    for label, freq in (("a", 300.0), ("b", 900.0)):
        for k in range(2):
            write_clip(root / label / f"{label}_{k}.wav", tone(freq, 8000, 0.05), 8000)
    (root / "targets.tsv").write_text("".join(f"{c}/{c}_{k}\t{c}\n" for c in "ab" for k in range(2)))


TWO_CLASS_SPECS = {
    "table": {"path": "train", "layout": "table", "table": "targets.tsv"},
    "class_folders": {"path": "train", "layout": "class_folders"},
    "filename": {"path": "train", "layout": "filename", "filename_regex": r"(?P<label>[ab])_\d"},
    "test": {"path": "train", "layout": "class_folders"},  # the test split reads the same folder
}


@pytest.mark.parametrize("layout", list(TWO_CLASS_SPECS))
def test_one_clip_in_two_formats_is_refused(workdir, layout):
    _two_classes(workdir / "train")
    write_clip(workdir / "train" / "a" / "a_1.flac", tone(300.0, 8000, 0.05), 8000)
    test = {"test": {"path": "train"}} if layout == "test" else {}
    index = index_test if layout == "test" else index_train
    cfg = make_config(workdir, {"train": TWO_CLASS_SPECS[layout], **test})
    with pytest.raises(UserError, match=r"^train: 2 files share an id with another file \(a/a_1\.flac and "
                                        r"a/a_1\.wav\); keep one of each, or narrow data\.extensions$"):
        index(cfg)
    narrowed = index(make_config(workdir, {"extensions": [".wav"], "train": TWO_CLASS_SPECS[layout], **test},
                                 name="narrowed"))
    assert sorted(narrowed.clips["id"]) == ["a/a_0", "a/a_1", "b/b_0", "b/b_1"]


LITHUANIAN = {"a": "katė", "b": "šuo", "c": "katė", "d": "šuo"}


def test_label_table_in_cp1257(workdir):
    data = ("id,label\n" + "".join(f"{i},{label}\n" for i, label in LITHUANIAN.items())).encode("cp1257")
    _table_config(workdir, "", name="labels.csv", header=True)
    (workdir / "train" / "labels.csv").write_bytes(data)
    spec = {"path": "train", "table": "labels.csv", "header": True}
    with pytest.raises(UserError) as error:
        index_train(make_config(workdir, {"train": spec}))
    first = data.index("ė".encode("cp1257"))
    assert str(error.value) == (f"train/labels.csv: not valid utf-8 (byte {first}, line 2); "
                                "set data.train.encoding to the table's encoding (e.g. cp1257, latin-1)")
    clips = index_train(make_config(workdir, {"train": {**spec, "encoding": "cp1257"}}, name="cp1257")).clips
    assert as_dict(clips, "label") == LITHUANIAN


def test_unknown_table_encoding(workdir):
    cfg = _table_config(workdir, "a\t0\nb\t1\n", encoding="utf-9")
    with pytest.raises(UserError, match=r"^data\.train\.encoding 'utf-9': unknown encoding; use a Python codec name"):
        index_train(cfg)


def test_file_name_that_is_not_utf8_in_a_folder(workdir):
    _two_classes(workdir / "train")
    wav = (workdir / "train" / "b" / "b_0.wav").read_bytes()
    (workdir / "train" / "b" / os.fsdecode(b"caf\xe9.wav")).write_bytes(wav)
    cfg = make_config(workdir, {"train": TWO_CLASS_SPECS["class_folders"]})
    with pytest.raises(UserError, match=r"^train: 1 file names are not valid UTF-8 \(b'b/caf\\xe9\.wav'\); "
                                        r"rename these files$"):
        index_train(cfg)


def _zip_with_name(workdir: Path, placeholder: str, raw_name: bytes) -> Path:
    """A zip whose member `placeholder` is renamed to raw bytes of the same length, without the UTF-8 flag,
    as Info-ZIP writes names on Linux (Python's zipfile cannot)."""
    _two_classes(workdir / "src")
    (workdir / "src" / placeholder).write_bytes((workdir / "src" / "b" / "b_0.wav").read_bytes())
    archive = zip_folder(workdir / "src", workdir / "data.zip")
    assert len(raw_name) == len(placeholder.encode())
    archive.write_bytes(archive.read_bytes().replace(placeholder.encode(), raw_name))
    return archive


def test_file_name_that_is_not_utf8_in_a_zip(workdir):
    _zip_with_name(workdir, "cafX.wav", b"caf\xe9.wav")
    cfg = make_config(workdir, {"test": {"path": "data.zip"}, "train": {"path": "data.zip", "layout": "filename",
                                                                       "filename_regex": r"(?P<label>[ab])_\d"}})
    for index in (index_train, index_test):
        with pytest.raises(UserError, match=r"data\.zip: a file name inside the zip is not valid UTF-8 "
                                            r"\(b'caf\\xe9\.wav'\); rename such files and re-create the zip$"):
            index(cfg)


def test_zip_names_are_read_as_utf8_without_the_flag(workdir):
    _zip_with_name(workdir, "cafXX.wav", "café.wav".encode())
    cfg = make_config(workdir, {"train": {"path": "data.zip", "table": "targets.tsv"}, "test": {"path": "data.zip"}})
    test, cache = load_split(index_test(cfg), cfg, skip_bad=False)
    assert "café" in set(test.clips["id"])  # not cp437's 'caf├⌐'
    assert cache.clips["path"].tolist() == sorted(test.clips["path"])


def test_a_test_set_named_on_the_command_line_is_blamed_there(workdir):
    """predict's test= (and test.subdir=) replace the config's test set: a wrong one names those, not the config."""
    voice_gender(workdir / "data")
    cfg = make_config(workdir, {"train": {"path": "data/train", "table": "targets.tsv"}, "test": {"path": "data/test"}})
    with pytest.raises(UserError, match=r"^nowhere: no such folder or zip; check test= on the command line$"):
        with_test_source(cfg, {"path": "nowhere"})
    with pytest.raises(UserError, match=r"^data/tset: no such folder; check test\.subdir= on the command line$"):
        with_test_source(cfg, {"path": "data", "subdir": "tset"})
    assert index_test(with_test_source(cfg, {"path": "data", "subdir": "test"})).clips["id"].tolist() == ["t0", "t1", "t2"]


@pytest.mark.parametrize("name, subdir", [("test/../../x.wav", "test"), ("../x.wav", ""), ("/x.wav", "")])
def test_a_zip_member_outside_its_folder_is_refused_not_dropped(workdir, name: str, subdir: str):
    """A member named test/../../x.wav was taken for a dot folder and left out: 3 answers for 4 clips."""
    voice_gender(workdir / "src")
    archive = zip_folder(workdir / "src" / "test", workdir / "test.zip", prefix=subdir)
    with zipfile.ZipFile(archive, "a") as z:  # a ZipInfo keeps the name as given; ZipFile.write would normalise it
        z.writestr(zipfile.ZipInfo(name), (workdir / "src" / "test" / "t0.wav").read_bytes())
    cfg = make_config(workdir, {"train": {"path": "src/train", "table": "targets.tsv"},
                                "test": {"path": "test.zip", "subdir": subdir}})
    with pytest.raises(UserError) as refused:
        index_test(cfg)
    assert str(refused.value) == (f"test.zip: the zip has members whose path has '..' or a leading '/' ('{name}'); "
                                  "rename them inside the zip")
