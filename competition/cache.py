"""Decode every clip once into a memory-mapped int16 waveform cache shared by all experiments, folds and trials.

The cache folder's name carries a hash of the source files (name, size, change stamp) and the audio settings,
so editing the data or the sample rate builds a new cache instead of silently reusing a stale one. Its
`fingerprint` hashes the decoded content instead: it survives moving or touching the data and changes when audio
is replaced under the same name, so outputs made from the cache can tell whether their data changed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import struct
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from competition.data import Source, Split, examples
from competition.errors import UserError

CACHE_FORMAT = 3
_worker_source: Source | None = None


def decode(data: bytes, sample_rate: int) -> tuple[np.ndarray, int]:
    """Any soundfile-readable clip as mono float32 at `sample_rate` (channels averaged, then resampled), and the rate
    it was stored at."""
    import soundfile

    wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if wave.size == 0:
        raise ValueError("no samples")
    wave = wave.mean(axis=1)
    if rate != sample_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return wave.astype(np.float32), rate


def to_int16(wave: np.ndarray) -> np.ndarray:
    """soundfile's scale (int / 32768, as `crops` reads it back), so 16-bit sources are cached bit for bit."""
    return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)


def _use_source(source: Source) -> None:
    global _worker_source
    _worker_source = source


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _decoding_pool(workers: int, source: Source):
    """Worker processes that start with one BLAS/OpenMP thread each: N workers with default threading
    oversubscribe the cores and run ~5x slower. The variables must be set before the child imports numpy, so
    they are set here while the children are spawned, and restored afterwards."""
    with environment({name: "1" for name in THREAD_VARIABLES}):
        return get_context("spawn").Pool(workers, initializer=_use_source, initargs=(source,))


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """The block runs with `values` set in os.environ; afterwards each of those variables is as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def _missing_bytes(data: bytes) -> int:
    """How many bytes of sample data a WAV or AIFF header promises beyond the end of the file. libsndfile
    quietly shortens such a file to what is there (soundfile.info reports the shortened length), so the header
    is read here; 0 when complete, or when the format or a streamed header (size 0 or 0xFFFFFFFF) gives no size."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        order, wanted = "<I", b"data"
    elif data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        order, wanted = ">I", b"SSND"
    else:
        return 0
    position = 12
    while position + 8 <= len(data):
        chunk, size = data[position: position + 4], struct.unpack(order, data[position + 4: position + 8])[0]
        if chunk == wanted:
            return 0 if size in (0, 0xFFFFFFFF) else max(0, size - (len(data) - position - 8))
        position += 8 + size + size % 2  # chunks are padded to an even length
    return 0


class Decoded(NamedTuple):
    """One clip's outcome in a decoding worker: its waveform and stored sample rate, or why it could not be decoded."""

    rel: str
    wave: np.ndarray | None
    error: str
    truncated: bool
    rate: int = 0


def _decode_one(job: tuple[str, int]) -> Decoded:
    rel, sample_rate = job
    try:
        data = _worker_source.read(rel)
        if not data:  # libsndfile would call it "Format not recognised"
            return Decoded(rel, None, "empty file (0 bytes)", False)
        wave, rate = decode(data, sample_rate)
        return Decoded(rel, to_int16(wave), "", _missing_bytes(data) > 0, rate)
    except Exception as exc:  # corrupt audio is the user's data problem: reported per file, not raised
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        return Decoded(rel, None, f"{type(exc).__name__}: {reason}", False)


def default_cache_dir() -> Path:
    root = os.environ.get("COMPETITION_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "competition") / "waveforms"


def cache_key(source: Source, paths: list[str], sample_rate: int) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, sample_rate, str(source.path.resolve()), source.subdir]).encode())
    for rel in paths:
        digest.update(f"{rel}\0{source.fingerprint(rel)}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class WaveCache:
    """Clips of one split, concatenated in one int16 memmap; `clips` maps path to offset and length."""

    dir: Path
    clips: pd.DataFrame  # path, offset, length (decoded clips only)
    bad: pd.DataFrame  # path, error (clips that could not be decoded)
    waves: np.ndarray
    fingerprint: str  # sha256 of the decoded content: clip paths and lengths, waveforms, bad paths

    @classmethod
    def open(cls, folder: Path) -> "WaveCache":
        clips = pd.read_csv(folder / "clips.csv", dtype={"path": str})
        bad = pd.read_csv(folder / "bad.csv", dtype=str)
        size = int(clips["length"].sum())
        waves = np.memmap(folder / "waves.int16", dtype=np.int16, mode="r", shape=(size,)) if size else np.zeros(0, np.int16)
        return cls(folder, clips, bad, waves, json.loads((folder / "COMPLETE").read_text())["fingerprint"])

    def rows(self, paths: pd.Series) -> np.ndarray:
        """Positions in this cache of the given clip paths."""
        position = pd.Series(np.arange(len(self.clips)), index=self.clips["path"])
        return position.loc[paths].to_numpy()

    def crops(self, rows: np.ndarray, length: int, rng: np.random.Generator | None = None,
              move: int = 0) -> np.ndarray:
        """A float32 batch (len(rows), length): clips padded with silence or cropped, at random if `rng` is given
        (training) and centred otherwise (evaluation), so the model always sees the same duration. `move` slides the
        centred window that many samples later (earlier if negative) along the clip: real audio comes in where the
        clip has it, silence only past its ends (a test-time view that does not cut a word at a hard edge)."""
        offsets = self.clips["offset"].to_numpy()[rows]
        lengths = self.clips["length"].to_numpy()[rows]
        batch = np.zeros((len(rows), length), np.float32)
        for i, (offset, size) in enumerate(zip(offsets, lengths)):
            if rng is not None:  # window start in clip samples; negative means silence first
                start = rng.integers(0, size - length + 1) if size >= length else -rng.integers(0, length - size + 1)
            else:
                start = (size - length) // 2 if size >= length else -((length - size) // 2)
                start += move
            first, last = max(start, 0), min(start + length, size)
            if last > first:
                batch[i, first - start: last - start] = self.waves[offset + first: offset + last]
        return batch / 32768.0


    def windows(self, row: int, length: int) -> np.ndarray:
        """Every window of `length` samples over one clip, half a window apart, the last one ending at the clip's end
        (float32, (windows, length)); a clip no longer than one window gives its centred crop."""
        size = int(self.clips["length"].iat[row])
        if size <= length:
            return self.crops(np.array([row]), length)
        offset = int(self.clips["offset"].iat[row])
        starts = window_starts(size, length)
        return np.stack([self.waves[offset + start: offset + start + length] for start in starts]) / np.float32(32768.0)


@dataclass
class JoinedCache:
    """Two caches read as one, rows past the first's in the second: the training clips and the pseudo-labelled
    clips of another split (competition.labels), without copying either."""

    first: WaveCache
    second: WaveCache

    @property
    def clips(self) -> pd.DataFrame:
        """Each row's length (the offsets index the two caches apart, so they are not given)."""
        return pd.concat([self.first.clips[["length"]], self.second.clips[["length"]]], ignore_index=True)

    def crops(self, rows: np.ndarray, length: int, rng: np.random.Generator | None = None,
              move: int = 0) -> np.ndarray:
        split = len(self.first.clips)
        batch, mine = np.empty((len(rows), length), np.float32), rows < split
        batch[mine] = self.first.crops(rows[mine], length, rng, move)
        batch[~mine] = self.second.crops(rows[~mine] - split, length, rng, move)
        return batch

    def windows(self, row: int, length: int) -> np.ndarray:
        split = len(self.first.clips)
        return self.first.windows(row, length) if row < split else self.second.windows(row - split, length)


def windowed(cache: WaveCache, rows: np.ndarray, ids: np.ndarray, seconds: float,
             sample_rate: int) -> tuple[np.ndarray, WaveCache, np.ndarray]:
    """Each clip cut into consecutive windows of `seconds` (the last one shorter, padded like any short clip), as the
    contests that answer long recordings window by window (BirdCLEF) want: a cache whose rows are the windows, over
    the same memmap, and their ids `<clip id>_<end second>` (rec_5, rec_10, ...)."""
    length = round(seconds * sample_rate)
    offsets, sizes = cache.clips["offset"].to_numpy()[rows], cache.clips["length"].to_numpy()[rows]
    counts = np.maximum(1, -(-sizes // length))  # ceiling: a partial last window is still answered
    k = np.concatenate([np.arange(n) for n in counts])
    starts = np.repeat(offsets, counts) + k * length
    lengths = np.minimum(length, np.repeat(offsets + sizes, counts) - starts)
    ends = [f"{(i + 1) * seconds:g}" for i in k]
    window_ids = np.array([f"{clip}_{end}" for clip, end in zip(np.repeat(ids, counts), ends)])
    clips = pd.DataFrame({"path": window_ids, "offset": starts, "length": lengths})
    return window_ids, WaveCache(cache.dir, clips, cache.bad, cache.waves, cache.fingerprint), np.arange(len(clips))


def window_starts(size: int, length: int) -> list[int]:
    """Where the windows of `length` samples over a clip of `size` samples start: half a window apart, the last one
    ending at the clip's end; a clip no longer than one window has one (its centred crop)."""
    if size <= length:
        return [0]
    return sorted(set(range(0, size - length + 1, max(1, length // 2))) | {size - length})


PARTIAL = re.compile(r"\.partial-(?:(?P<host>.+)-)?(?P<pid>\d+)$")  # <cache>.partial-<host>-<pid>, or -<pid>


def _remove_abandoned_partials(cache_dir: Path) -> None:
    """Partial folders of builds killed mid-way on this host (their process is gone) would stay forever.
    Those of other hosts sharing the cache folder are left alone: their pids mean nothing here. Partials of
    format 2 builds name no host and are taken as this host's."""
    for path in cache_dir.iterdir():
        match = PARTIAL.search(path.name)
        if not match or not path.is_dir() or match["host"] not in (None, socket.gethostname()):
            continue
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, run by another user
            pass


def build_cache(split: Split, sample_rate: int, cache_dir: Path, workers: int, dataset: str) -> WaveCache:
    """Decode the split's clips in parallel once; later calls with unchanged sources open the existing cache."""
    paths = sorted(split.clips["path"].unique())
    key = cache_key(split.source, paths, sample_rate)
    folder = cache_dir.expanduser() / f"{dataset}-{split.name}-{key}"
    if (folder / "COMPLETE").exists():
        return WaveCache.open(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(folder.parent)
    partial = folder.with_name(f"{folder.name}.partial-{socket.gethostname()}-{os.getpid()}")  # see PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    workers = 1 if len(paths) < 500 else workers or os.cpu_count() or 1  # starting workers costs seconds
    jobs = [(rel, sample_rate) for rel in paths]
    records, bad, truncated, offset = [], [], [], 0
    resampled: dict[int, int] = {}  # stored sample rate -> clips decoded from it
    fingerprint = hashlib.sha256()  # in path order, each clip's path and length before its samples
    with open(partial / "waves.int16", "wb") as out, tqdm(total=len(jobs), desc=f"decoding {split.name} clips",
                                                         unit="clip", file=sys.stderr, leave=False,
                                                         disable=None) as bar:  # None: no bar in a redirected log
        if workers == 1:  # in-process: leave this process's (and its children's) thread settings alone
            _use_source(split.source)
            results = map(_decode_one, jobs)
            pool = None
        else:
            pool = _decoding_pool(workers, split.source)
            results = pool.imap(_decode_one, jobs, chunksize=64)
        try:
            for rel, wave, error, short, rate in results:
                bar.update()
                if wave is None:
                    bad.append((rel, error))
                    fingerprint.update(json.dumps([rel, "bad"]).encode())
                    continue
                if short:
                    truncated.append(rel)
                if rate != sample_rate:
                    resampled[rate] = resampled.get(rate, 0) + 1
                samples = wave.tobytes()
                out.write(samples)
                fingerprint.update(json.dumps([rel, len(wave)]).encode())
                fingerprint.update(samples)
                records.append((rel, offset, len(wave)))
                offset += len(wave)
        finally:
            if pool is not None:
                pool.terminate()
    pd.DataFrame(records, columns=["path", "offset", "length"]).to_csv(partial / "clips.csv", index=False)
    pd.DataFrame(bad, columns=["path", "error"]).to_csv(partial / "bad.csv", index=False)
    (partial / "COMPLETE").write_text(json.dumps({"clips": len(records), "bad": len(bad), "sample_rate": sample_rate,
                                                  "fingerprint": fingerprint.hexdigest()}))
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same cache first; theirs is as good as ours
        shutil.rmtree(partial, ignore_errors=True)
    if truncated:
        print(f"warning: {split.source}: {len(truncated)} truncated audio files, used as far as they go: "
              f"{examples(truncated)}", file=sys.stderr)
    if resampled:  # said once, when the cache is built; the cache holds every clip at the configured rate
        rates = ", ".join(f"{count} at {rate} Hz" for rate, count in sorted(resampled.items()))
        print(f"{split.source}: {sum(resampled.values())} of {len(records)} {split.name} clips resampled to "
              f"audio.sample_rate={sample_rate} Hz ({rates})", file=sys.stderr)
    print(f"cached {len(records)} {split.name} clips in {folder}", file=sys.stderr)
    return WaveCache.open(folder)


def load_split(split: Split, cfg, skip_bad: bool,
               skip_key: str = "data.skip_bad_audio") -> tuple[Split, WaveCache]:
    """The split's waveform cache, with undecodable clips listed and either refused or left out; a refusal names
    `skip_key`, the key of the running command that leaves them out (predict's is skip_bad_audio)."""
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    cache = build_cache(split, cfg.audio.sample_rate, cache_dir, cfg.data.workers, cfg.data.name)
    if len(cache.bad):
        listing = examples([f"{p} ({e})" for p, e in zip(cache.bad["path"], cache.bad["error"])])
        if not skip_bad:
            raise UserError(f"{split.source}: {len(cache.bad)} unreadable audio files: {listing}; "
                            f"replace them or set {skip_key}=true to leave them out")
        print(f"warning: leaving out {len(cache.bad)} unreadable audio files: {listing}", file=sys.stderr)
        clips = split.clips[~split.clips["path"].isin(set(cache.bad["path"]))].reset_index(drop=True)
        split = Split(split.name, split.source, clips)
    return split, cache
