"""The `augment:` section without torch: each augmentation's parameters, the stage it runs in and the values it cannot
take, so that a config is checked, and a mistyped command line refused, before torch is imported.

`AUGMENTATIONS` is the single list: it gives the config keys (`AugmentConfig`), their checks and the order of
application. Adding an augmentation is a params dataclass and one line there, and its implementation class with one
line in `competition.augment.IMPLEMENTATIONS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

from omegaconf import OmegaConf

from competition.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # what a background folder's recordings may be


def audio_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)

@dataclass
class Params:
    """Every augmentation has p, the probability of applying it (0 = off). `stage`: per clip on loader workers
    (clip), batched on waveforms (wave) or spectrograms (spec), or mixing the batch with itself (mix)."""

    stage: ClassVar[str] = "wave"
    p: float = 0.0

    def problems(self) -> Iterator[tuple[str, str]]:
        """(key, problem) for each impossible parameter besides p, which is checked for every augmentation."""
        return iter(())

    def _order(self, low: str, high: str) -> Iterator[tuple[str, str]]:
        if getattr(self, low) > getattr(self, high):
            yield low, f"must be at most {high} ({getattr(self, high)}), got {getattr(self, low)}"

    def _range(self, low: str, high: str, lowest: float, highest: float) -> Iterator[tuple[str, str]]:
        """low <= high, both within [lowest, highest]."""
        yield from self._order(low, high)
        if getattr(self, low) < lowest:
            yield low, f"must be at least {lowest:g}, got {getattr(self, low)}"
        if getattr(self, high) > highest:
            yield high, f"must be at most {highest:g}, got {getattr(self, high)}"

    def _fraction(self, key: str) -> Iterator[tuple[str, str]]:
        if not 0.0 <= getattr(self, key) <= 1.0:
            yield key, f"must be in [0, 1], got {getattr(self, key)}"


@dataclass
class GainParams(Params):
    db: float = 6.0  # uniform gain in [-db, +db] dB

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.db < 0:
            yield "db", f"must not be negative, got {self.db}"


@dataclass
class ShiftParams(Params):
    max_fraction: float = 0.1  # shift by up to this fraction of the clip, either direction
    rollover: bool = False  # false fills the vacated part with zeros; true wraps the clip around

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from self._fraction("max_fraction")


@dataclass
class NoiseParams(Params):
    snr_min: float = 10.0  # dB, relative to each clip's own power
    snr_max: float = 40.0

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from self._order("snr_min", "snr_max")


@dataclass
class BackgroundParams(Params):
    folder: str = ""  # recordings mixed in as background, e.g. Speech Commands' _background_noise_
    snr_min: float = 5.0  # dB, relative to each clip's own power
    snr_max: float = 20.0
    max_seconds: float = 60.0  # read at most this much of each recording into the device-resident noise bank

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from self._order("snr_min", "snr_max")
        if self.max_seconds <= 0:
            yield "max_seconds", f"must be positive, got {self.max_seconds}"
        if self.p > 0:
            if not self.folder:
                yield "folder", "is empty; name a folder of background recordings (or set augment.background.p=0)"
            elif not Path(self.folder).is_dir():
                yield "folder", f"'{self.folder}' is not a folder"
            elif not audio_files(self.folder):
                yield "folder", f"'{self.folder}' has no audio files ({', '.join(AUDIO_EXTENSIONS)})"


@dataclass
class PitchShiftParams(Params):
    stage: ClassVar[str] = "clip"
    min_semitones: float = -2.0
    max_semitones: float = 2.0

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from self._range("min_semitones", "max_semitones", -24, 24)


@dataclass
class TimeStretchParams(Params):
    stage: ClassVar[str] = "clip"
    min_rate: float = 0.8  # below 1 slows down (longer), above 1 speeds up; the clip keeps its length
    max_rate: float = 1.25

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from self._range("min_rate", "max_rate", 0.1, 10)


@dataclass
class MaskParams(Params):
    stage: ClassVar[str] = "spec"
    count: int = 2  # masks per spectrogram
    max_fraction: float = 0.1  # each mask spans up to this fraction of the axis, so strength survives n_mels changes

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.count < 0:
            yield "count", f"must not be negative, got {self.count}"
        yield from self._fraction("max_fraction")


@dataclass
class MixupParams(Params):
    """p is the chance per batch; mixup.p + cutmix.p must not exceed 1 (one mixing per batch)."""

    stage: ClassVar[str] = "mix"
    alpha: float = 0.4  # the mixing weight is Beta(alpha, alpha)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.alpha <= 0:
            yield "alpha", f"must be positive, got {self.alpha}"


@dataclass
class CutmixParams(MixupParams):
    alpha: float = 1.0  # the replaced fraction of the time axis is Beta(alpha, alpha)


# ---- registry: config key -> parameters; order within a stage is the order of application --------------------------
# Shift runs before background and noise so the zero-filled gap is covered like the rest of the clip.

AUGMENTATIONS: dict[str, type[Params]] = {
    "pitch_shift": PitchShiftParams,
    "time_stretch": TimeStretchParams,
    "shift": ShiftParams,
    "gain": GainParams,
    "background": BackgroundParams,
    "noise": NoiseParams,
    "spec_time": MaskParams,
    "spec_freq": MaskParams,
    "mixup": MixupParams,
    "cutmix": CutmixParams,
}

AugmentConfig = make_dataclass(
    "AugmentConfig", [(name, params, field(default_factory=params)) for name, params in AUGMENTATIONS.items()],
    namespace={"__doc__": "The `augment:` section: one entry per augmentation in AUGMENTATIONS, all off by default."})
AugmentConfig.__module__ = __name__  # pickling and OmegaConf's messages name the class by its module


def augment_config(cfg_augment: Any) -> Any:
    """An AugmentConfig from the `augment` section (a DictConfig, an AugmentConfig, or a partial plain mapping)."""
    if isinstance(cfg_augment, AugmentConfig):
        return cfg_augment
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AugmentConfig), cfg_augment))


def enabled(cfg_augment: Any, stage: str) -> list[str]:
    """The augmentations of one stage that are on, in registry order."""
    cfg = augment_config(cfg_augment)
    return [name for name, params in AUGMENTATIONS.items() if params.stage == stage and getattr(cfg, name).p > 0]


def validate_augment(cfg_augment: Any, origin: str) -> None:
    """Raise UserError (one line, naming the key) for a probability outside [0, 1] or an impossible parameter."""
    cfg = augment_config(cfg_augment)
    for name in AUGMENTATIONS:
        params = getattr(cfg, name)
        problems = list(params._fraction("p")) + list(params.problems())
        if problems:
            key, problem = problems[0]
            raise UserError(f"{origin}: 'augment.{name}.{key}' {problem}")
    mixing = [name for name, params in AUGMENTATIONS.items() if params.stage == "mix"]
    total = sum(getattr(cfg, name).p for name in mixing)
    if total > 1.0 + 1e-9:
        keys = " + ".join(f"'augment.{name}.p'" for name in mixing)
        raise UserError(f"{origin}: {keys} must be at most 1 (at most one mixing per batch), got {total:g}")


def heavy_enabled(cfg_augment: Any) -> bool:
    """Whether any heavy per-clip augmentation is on, i.e. whether loader workers need a HeavyAugment."""
    return bool(enabled(cfg_augment, "clip"))
