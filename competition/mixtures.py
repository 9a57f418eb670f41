"""A multi-label development contest mixed from single-label recordings, with known truth at clip and window level.

Why: multi-label contests (`data.task: multilabel`; BirdCLEF-like soundscapes scored per 5-second window) need a
contest whose answers are known exactly, offline, with real voices, for tests and benchmarks. This one is mixed
from labelled single-word recordings: the Free Spoken Digit Dataset (../shared/data/fsdd/recordings, real voices)
or any class-folder set such as the built-in demo's words (`competition.demo.demo_path("words/train")`).

Each clip lasts `duration` seconds at `sample_rate` and holds 1 to `max_sources` utterances (repeated classes
allowed), trimmed of silence, each at a random onset (they may overlap) and a random gain, over a random excerpt of
a noise file at a random SNR (`snr` in dB, speech power measured where speech is). Every source of a clip is said
by ONE speaker, who is the clip's `speaker`: no recording appears in clips of two groups, so grouped folds stay
honest. Test clips and soundscapes are said by the test speakers only (test_speakers=, default the last quarter of
the speakers in sorted order), so the test measures unseen voices.

A soundscape is a long recording (`soundscape_seconds`) with utterances at random onsets (`density` per second on
average, Poisson) over noise. Its answer per `window`-second window lists the classes of the utterances that overlap
the window by at least half the utterance's length (so an utterance on a window boundary counts in the window
holding most of it, and in both when exactly half is on each side); `soundscape_events.csv` gives every
utterance's onset and offset, to recompute the answers for any window length.

Layout::

    <out>/train/<id>.wav                 train_00000, train_00001, ...
    <out>/train/labels.csv               id,labels,speaker: labels = the sorted distinct classes, space-separated
    <out>/test/<id>.wav                  test_00000, ...
    <out>/test_answers.csv               id,labels
    <out>/soundscapes/<rec>.wav          rec000, rec001, ...
    <out>/soundscape_answers.csv         row_id,labels: row_id = <rec>_<end second> (rec000_5, rec000_10, ...),
                                         labels empty when no utterance is in the window
    <out>/soundscape_events.csv          rec,label,onset,offset (seconds)
    <out>/COMPLETE                       the settings, written last (the folder is built under a temporary name)

Deterministic given the seed: each clip and soundscape draws from its own numpy Generator (seed, part, index).
Making it again with the same settings leaves a finished contest as it is; other settings need overwrite=true.

    python -m competition.mixtures source=<folder> out=<folder> [layout=auto|fsdd|class_folders] [noise=<folder>]
                                   [clips=1200] [test_clips=300] [recordings=20] [duration=3]
                                   [soundscape_seconds=30] [window=5] [sample_rate=16000] [max_sources=3]
                                   [snr=5,20] [density=0.25] [test_speakers=a,b] [seed=0] [overwrite=false]

layout=fsdd reads `{digit}_{speaker}_{index}.wav`; layout=class_folders reads `<label>/<speaker>_<anything>.wav`
(the demo's `<word>/<speaker>_nohash_<k>.wav`; folders starting with `_` are skipped); auto picks class_folders when
the source has subfolders. noise= is a folder of noise recordings (or one file), e.g.
../shared/data/background_noise; without it the noise is generated (coloured, white to brown). The fsdd benchmark:

    python -m competition.mixtures source=../shared/data/fsdd/recordings out=<folder> \\
        noise=../shared/data/background_noise

and an experiment on it: data: {task: multilabel, train: {path: <out>/train, layout: table, table: labels.csv,
header: true, label_column: labels, group_column: speaker}, test: {path: <out>/test}}.
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs neither pandas nor librosa

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import soundfile

from competition.cli import main_guard, parse_bool, parse_options
from competition.errors import UserError

VERSION = 1
EXTENSIONS = (".wav", ".flac")
FSDD_NAME = re.compile(r"(?P<label>\d+)_(?P<speaker>[A-Za-z0-9]+)_\d+")
GAIN_DB = (-9.0, 0.0)  # each utterance's gain after levelling every utterance to the same RMS
SPEECH_RMS = 0.05
PEAK = 0.95  # a mix louder than this is scaled down as a whole (the SNR is kept)
TRIM_DB = 40  # silence below the utterance's peak by this much is trimmed from its ends
COMMAND_KEYS = {"source": "", "out": "", "layout": "auto", "noise": "", "clips": "1200", "test_clips": "300",
                "recordings": "20", "duration": "3", "soundscape_seconds": "30", "window": "5",
                "sample_rate": "16000", "max_sources": "3", "snr": "5,20", "density": "0.25", "test_speakers": "",
                "seed": "0", "overwrite": "false"}


def _examples(items: list, n: int = 3) -> str:
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


def _audio_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))


def read_fsdd(folder: Path) -> pd.DataFrame:
    """path, label, speaker of `{label}_{speaker}_{index}.wav` files (the Free Spoken Digit Dataset)."""
    files = _audio_files(Path(folder), "*")
    matches = [FSDD_NAME.fullmatch(p.stem) for p in files]
    odd = [p.name for p, m in zip(files, matches) if m is None]
    if odd:
        raise UserError(f"{folder}: {len(odd)} files not named {{label}}_{{speaker}}_{{index}} ({_examples(odd)}); "
                        "is it layout=class_folders?")
    return pd.DataFrame({"path": files, "label": [m["label"] for m in matches],
                         "speaker": [m["speaker"] for m in matches]})


def read_class_folders(folder: Path) -> pd.DataFrame:
    """path, label, speaker of `<label>/<speaker>_<anything>.wav` files (the demo's `<word>/<speaker>_nohash_<k>.wav`);
    folders starting with `_` (Speech Commands' `_background_noise_`) are not classes."""
    files = [p for p in _audio_files(Path(folder), "*/*") if not p.parent.name.startswith("_")]
    return pd.DataFrame({"path": files, "label": [p.parent.name for p in files],
                         "speaker": [p.stem.split("_")[0] for p in files]})


READERS: dict[str, Callable[[Path], pd.DataFrame]] = {"fsdd": read_fsdd, "class_folders": read_class_folders}


def read_source(source: Path, layout: str = "auto") -> pd.DataFrame:
    """The source's recordings (path, label, speaker), checked: labels fit a space-separated list, two speakers."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"source={source}: no such folder")
    if layout == "auto":
        layout = "class_folders" if any(p.is_dir() and not p.name.startswith((".", "_")) for p in source.iterdir()) \
            else "fsdd"
    if layout not in READERS:
        raise UserError(f"layout={layout}: choose auto, {' or '.join(READERS)}")
    recordings = READERS[layout](source)
    if recordings.empty:
        raise UserError(f"source={source}: no {'/'.join(EXTENSIONS)} recordings in layout {layout}")
    spaced = sorted({label for label in recordings["label"] if not label or re.search(r"\s", label)})
    if spaced:
        raise UserError(f"{source}: class names {_examples(spaced)} hold spaces, which separate a clip's labels")
    if recordings["speaker"].nunique() < 2:
        raise UserError(f"source={source}: one speaker only; train and test need speakers of their own")
    return recordings


def split_speakers(speakers: list[str], test_speakers: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(train, test) speakers; by default the test takes the last quarter (at least one) in sorted order."""
    speakers = sorted(set(speakers))
    if not test_speakers:
        test_speakers = speakers[-math.ceil(len(speakers) / 4):]
    unknown = sorted(set(test_speakers) - set(speakers))
    if unknown:
        raise UserError(f"test_speakers: {_examples(unknown)} not among the speakers {_examples(speakers, 8)}")
    train = [s for s in speakers if s not in test_speakers]
    if not train:
        raise UserError("test_speakers= names every speaker; leave some to train on")
    return train, sorted(set(test_speakers))


def window_labels(events: pd.DataFrame, recs: list[str], seconds: int, window: int) -> pd.DataFrame:
    """row_id (`<rec>_<end second>`), labels: per window, the sorted distinct classes of the utterances overlapping
    it by at least half the utterance's length (events: rec, label, onset, offset in seconds)."""
    rows = []
    for rec in recs:
        mine = events[events["rec"] == rec]
        onset, offset = mine["onset"].to_numpy(float), mine["offset"].to_numpy(float)
        for end in range(window, seconds + 1, window):
            overlap = np.minimum(offset, end) - np.maximum(onset, end - window)
            inside = mine["label"][overlap >= 0.5 * (offset - onset)]
            rows.append((f"{rec}_{end}", " ".join(sorted(set(inside)))))
    return pd.DataFrame(rows, columns=["row_id", "labels"])


def _loader(sample_rate: int) -> Callable[[Path], np.ndarray]:
    """Mono float32 audio at `sample_rate`, each file decoded (and resampled) once."""
    import librosa

    waves: dict[Path, np.ndarray] = {}

    def load(path: Path) -> np.ndarray:
        if path not in waves:
            try:
                wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
            except (RuntimeError, soundfile.LibsndfileError) as exc:
                raise UserError(f"{path}: unreadable audio ({exc})") from None
            wave = wave.mean(axis=1)
            if rate != sample_rate and len(wave):
                wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
            waves[path] = wave.astype(np.float32)
        return waves[path]

    return load


def _utterance(wave: np.ndarray, limit: int) -> np.ndarray:
    """Silence trimmed from both ends, at most `limit` samples, levelled to SPEECH_RMS."""
    import librosa

    trimmed = librosa.effects.trim(wave, top_db=TRIM_DB)[0] if len(wave) else wave
    trimmed = (trimmed if len(trimmed) else wave)[:limit].astype(np.float64)
    return trimmed * SPEECH_RMS / max(float(np.sqrt(np.mean(trimmed ** 2))) if len(trimmed) else 0.0, 1e-8)


def _generated_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Coloured noise, 1/f^alpha in power with alpha drawn between 0 (white) and 2 (brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum *= np.maximum(np.arange(len(spectrum)), 1) ** (-rng.uniform(0.0, 2.0) / 2)
    return np.fft.irfft(spectrum, n)


def _noise_excerpt(rng: np.random.Generator, noises: list[np.ndarray], n: int) -> np.ndarray:
    if not noises:
        return _generated_noise(rng, n)
    wave = noises[rng.integers(len(noises))]
    if len(wave) < n:
        wave = np.tile(wave, n // len(wave) + 1)
    start = rng.integers(len(wave) - n + 1)
    return wave[start:start + n].astype(np.float64)


def _place(rng: np.random.Generator, picks: pd.DataFrame, load: Callable, n: int) -> tuple[np.ndarray, list]:
    """The picked recordings at random onsets and gains in n samples: the speech and (label, start, end) per pick."""
    speech, placed = np.zeros(n), []
    for path, label in zip(picks["path"], picks["label"]):
        wave = _utterance(load(path), n) * 10 ** (rng.uniform(*GAIN_DB) / 20)
        start = int(rng.integers(n - len(wave) + 1))
        speech[start:start + len(wave)] += wave
        placed.append((label, start, start + len(wave)))
    return speech, placed


def _over_noise(rng: np.random.Generator, speech: np.ndarray, placed: list, noises: list, snr: tuple) -> np.ndarray:
    """Speech plus a noise excerpt at a random SNR (speech power where speech is), scaled down below PEAK if loud."""
    active = np.zeros(len(speech), bool)
    for _, start, end in placed:
        active[start:end] = True
    noise = _noise_excerpt(rng, noises, len(speech))
    speech_power = float(np.mean(speech[active] ** 2)) if active.any() else SPEECH_RMS ** 2
    noise_power = max(float(np.mean(noise ** 2)), 1e-12)
    mix = speech + noise * np.sqrt(speech_power / (noise_power * 10 ** (rng.uniform(*snr) / 10)))
    peak = float(np.abs(mix).max())
    return (mix * (PEAK / peak if peak > PEAK else 1.0)).astype(np.float32)


def _clip(rng: np.random.Generator, recordings: pd.DataFrame, speakers: list[str], load: Callable, n: int,
          max_sources: int, noises: list, snr: tuple) -> tuple[np.ndarray, str, str]:
    """One clip: 1 to max_sources recordings of one speaker over noise; the audio, its labels and its speaker."""
    speaker = speakers[rng.integers(len(speakers))]
    own = recordings[recordings["speaker"] == speaker]
    count = int(rng.integers(1, max_sources + 1))
    picks = own.iloc[rng.choice(len(own), size=count, replace=len(own) < count)]
    speech, placed = _place(rng, picks, load, n)
    return _over_noise(rng, speech, placed, noises, snr), " ".join(sorted(set(picks["label"]))), speaker


def _settings_text(settings: dict) -> str:
    return json.dumps({"version": VERSION, **settings}, indent=1, sort_keys=True) + "\n"


def _check_out(out: Path, text: str, overwrite: bool) -> bool:
    """Whether to build: False when `out` is a finished contest with these settings; refused when it is another."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())) or overwrite:
        return True
    complete = out / "COMPLETE"
    if not complete.is_file():
        raise UserError(f"out={out} exists but is no finished mixture contest (no COMPLETE file); delete it or "
                        "choose another out=")
    if complete.read_text() != text:
        raise UserError(f"out={out} was made with other settings ({complete}); pass overwrite=true to replace it")
    return False


def make_mixtures(source: str | Path, out: str | Path, *, layout: str = "auto", noise: str | Path = "",
                  clips: int = 1200, test_clips: int = 300, recordings: int = 20, duration: float = 3.0,
                  soundscape_seconds: int = 30, window: int = 5, sample_rate: int = 16000, max_sources: int = 3,
                  snr: tuple[float, float] = (5.0, 20.0), density: float = 0.25,
                  test_speakers: list[str] | None = None, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the contest described in this module's docstring into `out` (unless it is there already) and return out."""
    source, out = Path(source), Path(out)
    table = read_source(source, layout)
    train_speakers, test_speakers = split_speakers(table["speaker"].tolist(), test_speakers)
    if min(clips, test_clips, max_sources) < 1 or recordings < 0 or duration <= 0 or density < 0 or sample_rate < 1:
        raise UserError("clips, test_clips, max_sources and sample_rate must be 1 or more; recordings and density 0 "
                        "or more; duration above 0")
    if window < 1 or soundscape_seconds < window or soundscape_seconds % window:
        raise UserError(f"soundscape_seconds={soundscape_seconds}, window={window}: give whole seconds, the "
                        "soundscape a multiple of the window")
    if not snr[0] <= snr[1]:
        raise UserError(f"snr={snr[0]:g},{snr[1]:g}: give the lowest SNR first")
    noise_files = []
    if str(noise):
        noise = Path(noise)
        noise_files = [noise] if noise.is_file() else _audio_files(noise, "*") if noise.is_dir() else []
        if not noise_files:
            raise UserError(f"noise={noise}: no such audio file or folder of {'/'.join(EXTENSIONS)} files")
    settings = {"source": str(source.resolve()), "layout": layout, "noise": [str(p.resolve()) for p in noise_files],
                "clips": clips, "test_clips": test_clips, "recordings": recordings, "duration": duration,
                "soundscape_seconds": soundscape_seconds, "window": window, "sample_rate": sample_rate,
                "max_sources": max_sources, "snr": list(snr), "density": density, "train_speakers": train_speakers,
                "test_speakers": test_speakers, "seed": seed}
    text = _settings_text(settings)
    if not _check_out(out, text, overwrite):
        return out
    from tqdm import tqdm

    load = _loader(sample_rate)
    noises = [load(p) for p in noise_files]
    noises = [wave for wave in noises if len(wave)]
    test_table = table[table["speaker"].isin(test_speakers)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had our process id
    try:
        for part, count, speakers in (("train", clips, train_speakers), ("test", test_clips, test_speakers)):
            (tmp / part).mkdir(parents=True)
            rows = []
            for i in tqdm(range(count), desc=f"mixing {part} clips", unit="clip", file=sys.stderr, leave=False,
                          disable=None):
                rng = np.random.default_rng([seed, 0 if part == "train" else 1, i])
                wave, labels, speaker = _clip(rng, table, speakers, load, round(duration * sample_rate),
                                              max_sources, noises, snr)
                rows.append((f"{part}_{i:05d}", labels, speaker))
                soundfile.write(tmp / part / f"{rows[-1][0]}.wav", wave, sample_rate, subtype="PCM_16")
            frame = pd.DataFrame(rows, columns=["id", "labels", "speaker"])
            target = tmp / "train" / "labels.csv" if part == "train" else tmp / "test_answers.csv"
            (frame if part == "train" else frame[["id", "labels"]]).to_csv(target, index=False, lineterminator="\n")
        (tmp / "soundscapes").mkdir()
        events, recs, n = [], [], soundscape_seconds * sample_rate
        for i in range(recordings):
            rng = np.random.default_rng([seed, 2, i])
            picks = test_table.iloc[rng.integers(len(test_table), size=rng.poisson(density * soundscape_seconds))]
            speech, placed = _place(rng, picks, load, n)
            recs.append(f"rec{i:03d}")
            soundfile.write(tmp / "soundscapes" / f"{recs[-1]}.wav", _over_noise(rng, speech, placed, noises, snr),
                            sample_rate, subtype="PCM_16")
            events += [(recs[-1], label, start / sample_rate, end / sample_rate) for label, start, end in placed]
        events = pd.DataFrame(events, columns=["rec", "label", "onset", "offset"]).sort_values(
            ["rec", "onset", "offset", "label"], kind="stable")
        events.to_csv(tmp / "soundscape_events.csv", index=False, lineterminator="\n")
        window_labels(events, recs, soundscape_seconds, window).to_csv(
            tmp / "soundscape_answers.csv", index=False, lineterminator="\n")
        (tmp / "COMPLETE").write_text(text)
        if out.is_dir():
            shutil.rmtree(out)  # empty, or replaced with overwrite=true (checked above)
        elif out.exists():
            out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _parse(argv: list[str]) -> dict[str, str]:
    options = parse_options(argv, COMMAND_KEYS, "source=<folder> out=<folder> clips=100")
    for key in ("source", "out"):
        if not options[key]:
            raise UserError(f"{key}= is missing: python -m competition.mixtures source=<folder> out=<folder>")
    return options


def _number(options: dict, key: str, kind: type):
    try:
        return kind(options[key])
    except ValueError:
        raise UserError(f"{key}={options[key]}: expected {'a whole number' if kind is int else 'a number'}") from None


def main(argv: list[str]) -> None:
    options = _parse(argv)
    snr = [part.strip() for part in options["snr"].split(",")]
    if len(snr) != 2:
        raise UserError(f"snr={options['snr']}: give the lowest and highest SNR in dB, e.g. snr=5,20")
    snr = tuple(_number({"snr": part}, "snr", float) for part in snr)
    ints = {key: _number(options, key, int) for key in ("clips", "test_clips", "recordings", "soundscape_seconds",
                                                        "window", "sample_rate", "max_sources", "seed")}
    floats = {key: _number(options, key, float) for key in ("duration", "density")}
    test_speakers = [s.strip() for s in options["test_speakers"].split(",") if s.strip()] or None
    out = Path(options["out"])
    before = (out / "COMPLETE").read_text() if (out / "COMPLETE").is_file() else None
    make_mixtures(options["source"], out, layout=options["layout"], noise=options["noise"], snr=snr,
                  test_speakers=test_speakers, overwrite=parse_bool("overwrite", options["overwrite"]), **ints,
                  **floats)
    after = (out / "COMPLETE").read_text()
    settings, state = json.loads(after), "unchanged:" if before == after else "wrote"
    print(f"{state} {out}: {settings['clips']} train clips (speakers {', '.join(settings['train_speakers'])}), "
          f"{settings['test_clips']} test clips and {settings['recordings']} soundscapes of "
          f"{settings['soundscape_seconds']} s (speakers {', '.join(settings['test_speakers'])}), "
          f"{'noise from ' + str(len(settings['noise'])) + ' files' if settings['noise'] else 'generated noise'}")


if __name__ == "__main__":
    main_guard(main)
