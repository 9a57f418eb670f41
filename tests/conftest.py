"""Shared helpers: small generated clips, a subset of the real FSDD recordings, and configs built like a user's."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from competition.config import load_config

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
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


def fsdd_names(digits: range = range(4), speakers: list[str] = SPEAKERS, indexes: range = range(3)) -> list[str]:
    names = [f"{d}_{s}_{i}.wav" for d in digits for s in speakers for i in indexes]
    missing = [n for n in names if not (FSDD / n).is_file()]
    if missing:
        pytest.skip(f"FSDD recordings not found in {FSDD}")
    return names


def fsdd_zip(target: Path, names: list[str], prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for name in names:
            archive.write(FSDD / name, f"{prefix}/{name}" if prefix else name)
    return target


def make_config(tmp_path: Path, data: dict, name: str = "exp", **sections: dict):
    """Write experiments/<name>/config.yaml the way a user would and load it through the real loader."""
    body = {"data": {"name": "t", "cache_dir": str(tmp_path / "cache"), **data}, **sections}
    folder = tmp_path / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(body))
    return load_config(folder / "config.yaml")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """folds/ and experiments/ resolve against the working directory; the waveform cache stays in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPETITION_CACHE", str(tmp_path / "cache-env"))
    return tmp_path
