"""Shared helpers: small generated clips, the generated 'tones' contest, subsets of the real recordings in
../shared/data, and configs built like a user's."""
from __future__ import annotations

import os
import signal
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from omegaconf import OmegaConf

from competition.cli import main_guard
from competition.config import load_config

# Tests that are not about dashboards write no W&B runs; tests/test_tracking.py turns tracking on where it checks it.
os.environ["WANDB_MODE"] = "disabled"

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FSDD = SHARED / "fsdd" / "recordings"
FSDD_REGEX = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+"
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(path: Path, wave: np.ndarray, rate: int) -> Path:
    """A 16-bit clip; the format (WAV or FLAC) follows the extension, channels the array's second axis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, rate, subtype="PCM_16")
    return path


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    """Every file under `folder` into a zip, under `prefix/` if given (as an archive of a folder would be)."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}" if prefix else
                          path.relative_to(folder).as_posix())
    return target


def shared_data(*parts: str) -> Path:
    """A file or folder of the real recordings in ../shared/data, which a fresh clone does not have: the test is
    skipped there, saying why; with COMPETITION_REQUIRE_SHARED=1 (set by CI, which has them) it fails instead."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"needs the real recordings in {path} (../shared/data beside the repository)"
        if os.environ.get("COMPETITION_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def fsdd_names(digits: range = range(4), speakers: list[str] = SPEAKERS, indexes: range = range(3)) -> list[str]:
    names = [f"{d}_{s}_{i}.wav" for d in digits for s in speakers for i in indexes]
    for name in names:
        shared_data("fsdd", "recordings", name)
    return names


def fsdd_zip(target: Path, names: list[str], prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for name in names:
            archive.write(FSDD / name, f"{prefix}/{name}" if prefix else name)
    return target


def require_extra(*modules: str, what: str) -> list:
    """The optional dependencies `modules` (requirements-extra.txt), imported; without them the test is skipped, saying
    why, except where COMPETITION_REQUIRE_EXTRAS=1 (set by CI, which installs them) turns the skip into a failure."""
    import importlib

    try:
        return [importlib.import_module(name) for name in modules]
    except ImportError:
        message = f"needs {what}: pip install -r requirements-extra.txt"
        if os.environ.get("COMPETITION_REQUIRE_EXTRAS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def make_config(tmp_path: Path, data: dict, name: str = "exp", **sections: dict):
    """Write experiments/<name>/config.yaml the way a user would and load it through the real loader."""
    body = {"data": {"name": "t", "cache_dir": str(tmp_path / "cache"), **data}, **sections}
    folder = tmp_path / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(body))
    return load_config(folder / "config.yaml")


def run_verb(capsys: pytest.CaptureFixture, module, *args: str) -> tuple[int, str, str]:
    """A verb's main run in-process as `python -m competition.<verb>` runs it: exit code, stdout, stderr."""
    try:
        main_guard(module.main, list(args))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def run_here(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m <module> args` as its entry point runs it, but in this process (no interpreter and torch start-up per
    call), in `cwd`: its exit code and everything it printed. Tests that need a process of its own (signals, a kill,
    the entry point itself) start one instead."""
    import importlib
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main_guard(importlib.import_module(module).main, list(args))
                code = 0
            except SystemExit as exit_info:
                code = exit_info.code
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def error_line(err: str) -> str:
    """The one `error:` line a user's mistake must produce."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """folds/ and experiments/ resolve against the working directory; the waveform cache stays in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPETITION_CACHE", str(tmp_path / "cache-env"))
    return tmp_path


# The 'tones' contest: three tones ("classes") said by eight "speakers", class folders with the speaker in the file
# name, and a test folder; small enough that a fold trains in seconds on a CPU.

TONES = {"low": 300.0, "mid": 800.0, "high": 2000.0}
TONES_CONFIG = {
    "data": {"name": "tones", "train": {"path": "data/train", "layout": "class_folders",
                                         "filename_regex": r"(?P<group>[^_]+)_nohash_\d+"},
             "test": {"path": "data/test"}},
    "audio": {"sample_rate": 8000, "duration": 0.75},
    "folds": {"n_splits": 3, "holdout": 0.25},
    "frontend": {"n_mels": 32, "n_fft": 256, "hop_length": 64},
    "model": {"name": "resnet10t"},
    "train": {"epochs": 4, "batch_size": 16, "lr": 0.01},
}


def write_tone(path: Path, freq: float, rng: np.random.Generator, rate: int = 8000) -> None:
    t = np.arange(int(rate * rng.uniform(0.5, 0.9))) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t) + 0.02 * rng.standard_normal(len(t))
    write_clip(path, wave.astype(np.float32), rate)


def write_tones_data(root: Path, tones: dict[str, float] = TONES, speakers: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for label, freq in tones.items():
        for speaker in range(speakers):
            for take in range(3):
                write_tone(root / "data" / "train" / label / f"spk{speaker}_nohash_{take}.wav", freq, rng)
    for i in range(6):
        write_tone(root / "data" / "test" / f"clip_{i}.wav", list(TONES.values())[i % 3], rng)


def write_tones_experiment(root: Path, name: str = "tones", **sections: dict) -> Path:
    """experiments/<name>/config.yaml: the tones contest's config with `sections` merged over it."""
    body = OmegaConf.to_container(OmegaConf.merge(TONES_CONFIG, {"data": {"cache_dir": str(root / "cache")}}, sections))
    folder = root / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(body))
    return folder


def train_every_fold(root: Path, name: str) -> None:
    """Train every fold of experiments/<name> under `root` on the CPU, as `run exp=<name> fold=all` would."""
    from competition.config import load_experiment
    from competition.train import train_fold

    cwd = os.getcwd()
    os.chdir(root)
    try:
        exp = load_experiment(name)
        for fold in range(exp.cfg.folds.n_splits):
            train_fold(exp, fold, "cpu")
    finally:
        os.chdir(cwd)


# The 'chords' contest (multi-label): the tones mixed one to three at a time by competition.mixtures, each clip said by
# one "speaker", the test clips by two others.

CHORDS_CONFIG = {
    "data": {"name": "chords", "task": "multilabel",
             "train": {"path": "mix/train", "layout": "table", "table": "labels.csv", "header": True,
                       "label_column": "labels", "group_column": "speaker"},
             "test": {"path": "mix/test"}},
    "audio": {"sample_rate": 8000, "duration": 1.0},
    "folds": {"n_splits": 3},
    "frontend": {"n_mels": 32, "n_fft": 256, "hop_length": 64},
    "model": {"name": "resnet10t"},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "metric": "lwlrap"},
}


def write_chords_experiment(root: Path, name: str = "chords", **sections: dict) -> Path:
    body = OmegaConf.to_container(OmegaConf.merge(CHORDS_CONFIG, {"data": {"cache_dir": str(root / "cache")}},
                                                  sections))
    folder = root / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(body))
    return folder


@pytest.fixture
def chords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The chords contest (mix/: train, test, soundscapes) and an experiment on it, working directory at its root."""
    from competition.mixtures import make_mixtures

    write_tones_data(tmp_path)
    make_mixtures(tmp_path / "data" / "train", tmp_path / "mix", layout="class_folders", clips=90, test_clips=12,
                  recordings=3, duration=1.0, soundscape_seconds=20, sample_rate=8000, snr=(15.0, 25.0),
                  test_speakers=["spk6", "spk7"])
    write_chords_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tones contest and an experiment on it, with the working directory at its root."""
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def signal_handlers_put_back() -> Iterator[None]:
    """A command or script a test runs in this process may set signal handlers meant for a process of its own: a
    script's SIGTERM handler, torch's SIGCHLD handler for DataLoader workers (which would fire on every child process
    that ends from then on, in any later test). Each is put back after the test."""
    handlers = {number: signal.getsignal(number) for number in signal.valid_signals()}
    yield
    for number, handler in handlers.items():
        if handler is not None and signal.getsignal(number) != handler:
            signal.signal(number, handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The benchmark scripts' smoke runs go last: they run whole scripts in this process (threads of inference
    runtimes, signal handlers, W&B's service), and nothing they leave behind should meet another module's tests."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_benchmarks.py"))
