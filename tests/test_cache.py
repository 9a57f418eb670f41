"""The waveform cache: decoded once, reused, rebuilt when the sources or the sample rate change; bad audio named."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import competition.cache as cache_module
from competition.cache import WaveCache, build_cache, decode, default_cache_dir, load_split
from competition.data import index_train
from competition.errors import UserError
from conftest import FSDD, FSDD_REGEX, fsdd_names, fsdd_zip, make_config, tone, write_clip


def _tones(workdir: Path, cache_dir: str | None = None, rate: int = 16000):
    for label, freq in (("low", 300.0), ("high", 1500.0)):
        for k in range(3):
            write_clip(workdir / "train" / label / f"{k}.wav", tone(freq, 8000, 0.1 + 0.05 * k), 8000)
    data = {"train": {"path": "train", "layout": "class_folders"}}
    if cache_dir is not None:
        data["cache_dir"] = cache_dir
    return make_config(workdir, data, audio={"sample_rate": rate})


def _count_decoding(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Decoding goes on as usual; the returned list grows by one per clip decoded."""
    calls, real = [], cache_module.decode

    def counting(data: bytes, sample_rate: int) -> np.ndarray:
        calls.append(sample_rate)
        return real(data, sample_rate)

    monkeypatch.setattr(cache_module, "decode", counting)
    return calls


def test_decoded_once_then_reused(workdir, monkeypatch):
    cfg = _tones(workdir)
    split = index_train(cfg)
    _, first = load_split(split, cfg, skip_bad=False)
    stamp = (first.dir / "waves.int16").stat().st_mtime_ns
    calls = _count_decoding(monkeypatch)
    _, second = load_split(index_train(cfg), cfg, skip_bad=False)
    assert calls == []
    assert second.dir == first.dir
    assert (second.dir / "waves.int16").stat().st_mtime_ns == stamp
    assert second.clips.equals(first.clips) and np.array_equal(second.waves, first.waves)
    assert sorted(p.name for p in first.dir.parent.iterdir()) == [first.dir.name]  # no partial folder left


def test_cache_holds_every_clip_at_its_offset(workdir):
    cfg = _tones(workdir)
    split, cache = load_split(index_train(cfg), cfg, skip_bad=False)
    assert sorted(cache.clips["path"]) == sorted(split.clips["path"])
    assert cache.clips["offset"].tolist() == [0, *np.cumsum(cache.clips["length"])[:-1]]
    assert len(cache.waves) == cache.clips["length"].sum()
    for path, offset, length in cache.clips.itertuples(index=False):
        expected, _ = decode((workdir / "train" / path).read_bytes(), 16000)
        np.testing.assert_allclose(cache.waves[offset: offset + length] / 32768, expected, atol=1 / 32768)


def test_rebuilt_when_a_source_file_changes(workdir, monkeypatch):
    cfg = _tones(workdir)
    _, old = load_split(index_train(cfg), cfg, skip_bad=False)
    changed = workdir / "train" / "low" / "0.wav"
    write_clip(changed, tone(300.0, 8000, 0.3), 8000)  # a longer take replaces the old one
    _, new = load_split(index_train(cfg), cfg, skip_bad=False)
    assert new.dir != old.dir and old.dir.is_dir()
    lengths = dict(zip(new.clips["path"], new.clips["length"]))
    assert lengths["low/0.wav"] == 4800 and dict(zip(old.clips["path"], old.clips["length"]))["low/0.wav"] == 1600
    calls = _count_decoding(monkeypatch)  # an edit that keeps the size is noticed by its time stamp
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    _, touched = load_split(index_train(cfg), cfg, skip_bad=False)
    assert touched.dir not in (old.dir, new.dir) and len(calls) == 6


def test_rebuilt_when_the_sample_rate_changes(workdir):
    cfg8 = _tones(workdir, rate=8000)
    cfg16 = make_config(workdir, {"train": {"path": "train", "layout": "class_folders"}}, audio={"sample_rate": 16000},
                        name="other")
    _, at8 = load_split(index_train(cfg8), cfg8, skip_bad=False)
    _, at16 = load_split(index_train(cfg16), cfg16, skip_bad=False)
    assert at8.dir != at16.dir
    assert (at16.clips["length"] == 2 * at8.clips["length"]).all()


def test_cache_dir_setting_and_environment(workdir):
    cfg = _tones(workdir, cache_dir="")
    assert default_cache_dir() == workdir / "cache-env" / "waveforms"
    _, cache = load_split(index_train(cfg), cfg, skip_bad=False)
    assert cache.dir.parent == workdir / "cache-env" / "waveforms"
    assert cache.dir.name.startswith("t-train-")
    cfg = _tones(workdir, cache_dir=str(workdir / "elsewhere"))
    _, cache = load_split(index_train(cfg), cfg, skip_bad=False)
    assert cache.dir.parent == workdir / "elsewhere"


def _with_corrupt_file(workdir: Path):
    cfg = _tones(workdir)
    (workdir / "train" / "low" / "x.wav").write_bytes(b"RIFF\x00\x01garbage that is not audio" * 10)
    return cfg


def test_corrupt_file_is_named_and_refused(workdir):
    cfg = _with_corrupt_file(workdir)
    with pytest.raises(UserError) as error:
        load_split(index_train(cfg), cfg, skip_bad=False)
    message = str(error.value)
    assert "1 unreadable audio files: low/x.wav (" in message
    assert "data.skip_bad_audio=true" in message and "\n" not in message


def test_corrupt_file_left_out_with_skip_bad(workdir, capsys):
    cfg = _with_corrupt_file(workdir)
    split = index_train(cfg)
    assert "low/x.wav" in set(split.clips["path"])
    kept, cache = load_split(split, cfg, skip_bad=True)
    assert cache.bad["path"].tolist() == ["low/x.wav"]
    assert sorted(kept.clips["path"]) == sorted(set(split.clips["path"]) - {"low/x.wav"})
    assert len(kept.clips) == 6 and set(cache.rows(kept.clips["path"])) == set(range(6))
    assert "leaving out 1 unreadable audio files: low/x.wav" in capsys.readouterr().err


def test_empty_audio_file_counts_as_bad(workdir):
    cfg = _tones(workdir)
    soundfile.write(workdir / "train" / "high" / "empty.wav", np.zeros(0, np.float32), 8000)
    with pytest.raises(UserError, match=r"high/empty\.wav \(ValueError: no samples\)"):
        load_split(index_train(cfg), cfg, skip_bad=False)


def test_worker_pool_decodes_a_zip_like_the_main_process(workdir, monkeypatch):
    """Caches of 500 clips or more decode in worker processes, each reopening the zip once."""
    names = fsdd_names(digits=range(10), indexes=range(9))[:500]
    fsdd_zip(workdir / "digits.zip", names)
    cfg = make_config(workdir, {"workers": 2, "train": {"path": "digits.zip", "layout": "filename",
                                                        "filename_regex": FSDD_REGEX}},
                      audio={"sample_rate": 8000})
    split = index_train(cfg)
    calls = _count_decoding(monkeypatch)
    cache = build_cache(split, 8000, Path(cfg.data.cache_dir), workers=2, dataset="pool")
    assert calls == []  # all decoded in the workers
    assert len(cache.clips) == 500 and cache.bad.empty
    for row in (0, 137, 499):
        path, offset, length = cache.clips.iloc[row]
        source, rate = soundfile.read(FSDD / path, dtype="int16")
        assert rate == 8000
        np.testing.assert_array_equal(cache.waves[offset: offset + length], source)


def test_decoding_in_process_leaves_thread_settings_alone(workdir, monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    cfg = _tones(workdir)
    load_split(index_train(cfg), cfg, skip_bad=False)
    assert not {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"} & set(os.environ)


# --- content fingerprint -------------------------------------------------------------------------------------


def test_fingerprint_survives_moving_and_touching_the_data(workdir):
    cfg = _tones(workdir)
    _, first = load_split(index_train(cfg), cfg, skip_bad=False)
    assert json.loads((first.dir / "COMPLETE").read_text())["fingerprint"] == first.fingerprint
    shutil.copytree(workdir / "train", workdir / "moved")
    moved_cfg = make_config(workdir, {"train": {"path": "moved", "layout": "class_folders"}}, name="moved")
    _, moved = load_split(index_train(moved_cfg), moved_cfg, skip_bad=False)
    touched = workdir / "train" / "high" / "1.wav"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    _, after_touch = load_split(index_train(cfg), cfg, skip_bad=False)
    assert len({first.dir, moved.dir, after_touch.dir}) == 3  # each a new cache: the folder key hashes stamps
    assert first.fingerprint == moved.fingerprint == after_touch.fingerprint
    assert len(first.fingerprint) == 64 and WaveCache.open(first.dir).fingerprint == first.fingerprint


def test_fingerprint_changes_when_audio_is_replaced_under_the_same_name(workdir):
    cfg = _tones(workdir)
    _, before = load_split(index_train(cfg), cfg, skip_bad=False)
    replaced = workdir / "train" / "low" / "1.wav"
    size = replaced.stat().st_size
    write_clip(replaced, tone(350.0, 8000, 0.15), 8000)  # another take of the same length
    assert replaced.stat().st_size == size
    _, after = load_split(index_train(cfg), cfg, skip_bad=False)
    assert after.clips.equals(before.clips)  # same names, same lengths: only the samples differ
    assert after.fingerprint != before.fingerprint


def test_fingerprint_counts_bad_files(workdir):
    cfg = _tones(workdir)
    _, clean = load_split(index_train(cfg), cfg, skip_bad=True)
    (workdir / "train" / "low" / "x.wav").write_bytes(b"not audio")
    _, with_bad = load_split(index_train(cfg), cfg, skip_bad=True)
    assert with_bad.clips.equals(clean.clips) and with_bad.bad["path"].tolist() == ["low/x.wav"]
    assert with_bad.fingerprint != clean.fingerprint


# --- leftovers of killed builds ------------------------------------------------------------------------------


def test_partial_folders_of_dead_builds_are_removed_live_ones_kept(workdir):
    cfg = _tones(workdir)
    cache_dir = Path(cfg.data.cache_dir)
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()  # its pid now names no process
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    try:
        left = {"dead": f"t-train-0123.partial-{host}-{finished.pid}",
                "dead, format 2 name": f"other-test-4567.partial-{finished.pid}",
                "alive": f"t-train-0123.partial-{host}-{sleeper.pid}",
                "another host's": f"t-train-0123.partial-not-{host}-{finished.pid}"}
        for name in left.values():
            (cache_dir / name).mkdir(parents=True)
            (cache_dir / name / "waves.int16").write_bytes(b"\0" * 64)
        _, cache = load_split(index_train(cfg), cfg, skip_bad=False)
        assert {p.name for p in cache_dir.iterdir()} == {cache.dir.name, left["alive"], left["another host's"]}
    finally:
        sleeper.kill()
        sleeper.wait()


# --- broken audio --------------------------------------------------------------------------------------------


def test_zero_byte_file_is_called_empty(workdir):
    cfg = _tones(workdir)
    (workdir / "train" / "high" / "blank.wav").write_bytes(b"")
    with pytest.raises(UserError, match=r"1 unreadable audio files: high/blank\.wav \(empty file \(0 bytes\)\);"):
        load_split(index_train(cfg), cfg, skip_bad=False)


@pytest.mark.parametrize("suffix", [".wav", ".aiff"])
def test_truncated_file_is_used_as_far_as_it_goes_with_one_warning(workdir, capsys, suffix):
    for label, freq in (("low", 300.0), ("high", 1500.0)):
        for k in range(2):
            write_clip(workdir / "train" / label / f"{k}{suffix}", tone(freq, 8000, 0.3), 8000)
    cut = workdir / "train" / "high" / f"1{suffix}"
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    remaining = len(soundfile.read(cut, dtype="int16")[0])
    assert 0 < remaining < 2400  # libsndfile reads what is there, without a word
    cfg = make_config(workdir, {"extensions": [suffix], "train": {"path": "train", "layout": "class_folders"}},
                      audio={"sample_rate": 8000})
    _, cache = load_split(index_train(cfg), cfg, skip_bad=False)
    assert dict(zip(cache.clips["path"], cache.clips["length"])) == {
        f"high/0{suffix}": 2400, f"high/1{suffix}": remaining, f"low/0{suffix}": 2400, f"low/1{suffix}": 2400}
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: train: 1 truncated audio files, used as far as they go: high/1{suffix}"]


# --- progress bar --------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(workdir, monkeypatch, capsys):
    cfg = _tones(workdir)
    load_split(index_train(cfg), cfg, skip_bad=False)
    assert "decoding train clips" not in capsys.readouterr().err  # stderr is no terminal here, as in a redirected log
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    write_clip(workdir / "train" / "low" / "3.wav", tone(300.0, 8000, 0.1), 8000)  # a change: built again
    load_split(index_train(cfg), cfg, skip_bad=False)
    assert "decoding train clips" in terminal.getvalue()
