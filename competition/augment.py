"""Training augmentation: batched waveform and spectrogram ops on the training device, per-clip heavy ops on loader
workers, mixup/cutmix, and deterministic test-time views.

Per-clip Python augmentation becomes the bottleneck once the model runs on a GPU, so the cheap ops (gain, shift,
noise, background mixing, SpecAugment masks, mixup, cutmix) are tensor ops over the whole batch. Pitch shift and
time stretch have no cheap batched form; they run through audiomentations on loader workers, and only when enabled.

`AUGMENTATIONS` is the single list: it gives the config keys (`AugmentConfig`), their checks and the order of
application. Adding an augmentation is a params dataclass, an implementation class and one line there.
"""
from __future__ import annotations

import difflib
import math
import random
from dataclasses import dataclass, field, make_dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from competition.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


# ---- parameters: every augmentation has p, the probability of applying it (0 = off) -------------------------------

@dataclass
class GainParams:
    p: float = 0.0
    db: float = 6.0  # uniform gain in [-db, +db] dB


@dataclass
class ShiftParams:
    p: float = 0.0
    max_fraction: float = 0.1  # shift by up to this fraction of the clip, either direction
    rollover: bool = False  # false fills the vacated part with zeros; true wraps the clip around


@dataclass
class NoiseParams:
    p: float = 0.0
    snr_min: float = 10.0  # dB, relative to each clip's own power
    snr_max: float = 40.0


@dataclass
class BackgroundParams:
    p: float = 0.0
    folder: str = ""  # recordings mixed in as background, e.g. Speech Commands' _background_noise_
    snr_min: float = 5.0  # dB, relative to each clip's own power
    snr_max: float = 20.0
    max_seconds: float = 60.0  # read at most this much of each recording into the device-resident noise bank


@dataclass
class PitchShiftParams:
    p: float = 0.0
    min_semitones: float = -2.0
    max_semitones: float = 2.0


@dataclass
class TimeStretchParams:
    p: float = 0.0
    min_rate: float = 0.8  # below 1 slows down (longer), above 1 speeds up; the clip keeps its length
    max_rate: float = 1.25


@dataclass
class MaskParams:
    p: float = 0.0
    count: int = 2  # masks per spectrogram
    max_fraction: float = 0.1  # each mask spans up to this fraction of the axis, so strength survives n_mels changes


@dataclass
class MixupParams:
    p: float = 0.0  # chance per batch; mixup.p + cutmix.p must not exceed 1 (one mixing per batch)
    alpha: float = 0.4  # the mixing weight is Beta(alpha, alpha)


@dataclass
class CutmixParams:
    p: float = 0.0
    alpha: float = 1.0  # the replaced fraction of the time axis is Beta(alpha, alpha)


# ---- implementations ------------------------------------------------------------------------------------------------

def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device, then moved (a no-op when the generator is on `device`)."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _uniform(low: float, high: float, shape: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> Tensor:
    return low + (high - low) * _rand(shape, generator, device)


def _integers(high: Tensor | int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Integers in [0, high] inclusive; `high` may be a tensor of per-sample bounds. Drawn in float64 so that
    rounding never reaches high + 1, even for bounds in the millions (noise-bank offsets)."""
    uniform = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)
    return (uniform * (high + 1)).floor().long()


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw by inverting its CDF, so it comes from `generator` (torch's Beta takes none)."""
    from scipy.special import betaincinv

    return float(betaincinv(alpha, alpha, torch.rand((), generator=generator, device=generator.device).item()))


def _order(params: Any, low: str, high: str) -> Iterator[tuple[str, str]]:
    if getattr(params, low) > getattr(params, high):
        yield low, f"must be at most {high} ({getattr(params, high)}), got {getattr(params, low)}"


def _fraction(params: Any, key: str) -> Iterator[tuple[str, str]]:
    if not 0.0 <= getattr(params, key) <= 1.0:
        yield key, f"must be in [0, 1], got {getattr(params, key)}"


def audio_files(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def load_noise_bank(folder: str | Path, sample_rate: int, max_seconds: float) -> list[np.ndarray]:
    """Every recording in `folder`, mono float32 at `sample_rate`, each cut to its first `max_seconds`."""
    return [librosa.load(path, sr=sample_rate, mono=True, duration=max_seconds)[0] for path in audio_files(folder)]


class Augmentation:
    """A registry entry built from its parameters; `stage` says where it runs."""

    stage = ""

    def __init__(self, params: Any, sample_rate: int, device: torch.device) -> None:
        self.params = params

    @staticmethod
    def check(params: Any) -> Iterator[tuple[str, str]]:
        """(key, problem) for each impossible parameter; p is checked for every augmentation."""
        return iter(())


class PerSample(Augmentation):
    """Batched; `picked` (batch,) marks the samples that apply it (each with probability p) and the others must come
    out unchanged. Folding `picked` into per-sample strengths (zero gain, zero shift, zero-width masks) is free, where
    selecting outputs afterwards would cost one more pass over the batch."""

    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


class WaveAugmentation(PerSample):
    """Waveforms (batch, samples) on the training device."""

    stage = "wave"


class SpecAugmentation(PerSample):
    """Spectrograms (batch, 1, n_mels, frames) on the training device."""

    stage = "spec"


class MixAugmentation(Augmentation):
    """Mixes the batch with a permutation of itself, inputs and soft targets alike; p is the chance per batch."""

    stage = "mix"

    def __call__(self, x: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class ClipAugmentation(Augmentation):
    """One clip (numpy float32) at a time through audiomentations, on loader workers; see HeavyAugment."""

    stage = "clip"

    def transform(self) -> Any:
        """The audiomentations transform, with its own p."""
        raise NotImplementedError


class Gain(WaveAugmentation):
    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        db = _uniform(-self.params.db, self.params.db, (x.shape[0], 1), generator, x.device) * picked[:, None]
        return x * 10.0 ** (db / 20.0)

    @staticmethod
    def check(params: GainParams) -> Iterator[tuple[str, str]]:
        if params.db < 0:
            yield "db", f"must not be negative, got {params.db}"


def shift_samples(x: Tensor, offsets: Tensor, most: int, rollover: bool = False) -> Tensor:
    """Each row of `x` (batch, samples) moved later by its offset (earlier if negative; |offset| <= most), the vacated
    part zero-filled or, with rollover, wrapped around: one padded copy, viewed as all its windows, one row gather."""
    n = x.shape[-1]
    padded = torch.cat([x[:, n - most:], x, x[:, :most]], -1) if rollover else F.pad(x, (most, most))
    return padded.unfold(-1, n, 1)[torch.arange(x.shape[0], device=x.device), most - offsets]


class Shift(WaveAugmentation):
    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        most = int(self.params.max_fraction * x.shape[-1])
        offsets = (_integers(2 * most, (x.shape[0],), generator, x.device) - most) * picked
        return shift_samples(x, offsets, most, self.params.rollover)

    @staticmethod
    def check(params: ShiftParams) -> Iterator[tuple[str, str]]:
        yield from _fraction(params, "max_fraction")


def _mix_at_snr(x: Tensor, noise: Tensor, snr_db: Tensor, picked: Tensor) -> Tensor:
    """x + noise scaled to `snr_db` below each clip's power, for the picked clips; a silent clip stays silent."""
    clip_energy = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square()
    noise_energy = torch.linalg.vector_norm(noise, dim=-1, keepdim=True).square().clamp_min(1e-20)
    scale = torch.sqrt(clip_energy / noise_energy * 10.0 ** (-snr_db / 10.0)) * picked[:, None]
    return torch.addcmul(x, noise, scale)


class Noise(WaveAugmentation):
    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        snr = _uniform(self.params.snr_min, self.params.snr_max, (x.shape[0], 1), generator, x.device)
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        return _mix_at_snr(x, noise, snr, picked)

    @staticmethod
    def check(params: NoiseParams) -> Iterator[tuple[str, str]]:
        yield from _order(params, "snr_min", "snr_max")


class Background(WaveAugmentation):
    """Excerpts of real recordings from a noise bank kept on the device: the folder's recordings end to end.

    Each sample starts at a random point of the bank (uniform over its time, so longer recordings are picked more
    often) and takes one unfolded window of it: a single gather. An excerpt may run from one recording into the
    next, which only mixes two backgrounds; a bank shorter than one clip is looped.
    """

    def __init__(self, params: BackgroundParams, sample_rate: int, device: torch.device) -> None:
        super().__init__(params, sample_rate, device)
        waves = load_noise_bank(params.folder, sample_rate, params.max_seconds)
        if not sum(len(w) for w in waves):
            raise UserError(f"'augment.background.folder' '{params.folder}' has no audio to mix in")
        self.bank = torch.from_numpy(np.concatenate(waves)).to(device)

    def excerpts(self, batch: int, samples: int, generator: torch.Generator) -> Tensor:
        """(batch, samples) random excerpts of the bank, on the bank's device."""
        bank = self.bank if len(self.bank) >= samples else self.bank.repeat(-(-samples // len(self.bank)))
        start = _integers(len(bank) - samples, (batch,), generator, bank.device)
        return bank.unfold(0, samples, 1)[start]

    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        snr = _uniform(self.params.snr_min, self.params.snr_max, (x.shape[0], 1), generator, x.device)
        noise = self.excerpts(x.shape[0], x.shape[-1], generator).to(x.device, x.dtype)
        return _mix_at_snr(x, noise, snr, picked)

    @staticmethod
    def check(params: BackgroundParams) -> Iterator[tuple[str, str]]:
        yield from _order(params, "snr_min", "snr_max")
        if params.max_seconds <= 0:
            yield "max_seconds", f"must be positive, got {params.max_seconds}"
        if params.p > 0:
            if not params.folder:
                yield "folder", "is empty; name a folder of background recordings (or set augment.background.p=0)"
            elif not Path(params.folder).is_dir():
                yield "folder", f"'{params.folder}' is not a folder"
            elif not audio_files(params.folder):
                yield "folder", f"'{params.folder}' has no audio files ({', '.join(AUDIO_EXTENSIONS)})"


class PitchShift(ClipAugmentation):
    def transform(self) -> Any:
        import audiomentations

        return audiomentations.PitchShift(self.params.min_semitones, self.params.max_semitones, p=self.params.p)

    @staticmethod
    def check(params: PitchShiftParams) -> Iterator[tuple[str, str]]:
        yield from _order(params, "min_semitones", "max_semitones")
        if params.min_semitones < -24:
            yield "min_semitones", f"must be at least -24, got {params.min_semitones}"
        if params.max_semitones > 24:
            yield "max_semitones", f"must be at most 24, got {params.max_semitones}"


class TimeStretch(ClipAugmentation):
    def transform(self) -> Any:
        import audiomentations

        return audiomentations.TimeStretch(self.params.min_rate, self.params.max_rate, leave_length_unchanged=False,
                                           p=self.params.p)

    @staticmethod
    def check(params: TimeStretchParams) -> Iterator[tuple[str, str]]:
        yield from _order(params, "min_rate", "max_rate")
        if params.min_rate < 0.1:
            yield "min_rate", f"must be at least 0.1, got {params.min_rate}"
        if params.max_rate > 10:
            yield "max_rate", f"must be at most 10, got {params.max_rate}"


class Mask(SpecAugmentation):
    """SpecAugment masking along one axis: `count` bands, each 0..max_fraction of the axis wide, set to the
    spectrogram's own mean (0 after per-clip standardisation), so a mask carries no loudness cue."""

    axis = -1

    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        size, batch, count = x.shape[self.axis], x.shape[0], self.params.count
        width = _integers(int(self.params.max_fraction * size), (batch, count), generator, x.device) * picked[:, None]
        start = _integers(size - width, (batch, count), generator, x.device)
        position = torch.arange(size, device=x.device)
        masked = ((position >= start[..., None]) & (position < (start + width)[..., None])).any(1)
        shape = [batch] + [1] * (x.dim() - 1)
        shape[self.axis] = size
        fill = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        return torch.where(masked.view(shape), fill, x)

    @staticmethod
    def check(params: MaskParams) -> Iterator[tuple[str, str]]:
        if params.count < 0:
            yield "count", f"must not be negative, got {params.count}"
        yield from _fraction(params, "max_fraction")


class TimeMask(Mask):
    axis = -1


class FreqMask(Mask):
    axis = -2


class Mixup(MixAugmentation):
    """lam * x + (1 - lam) * x[perm], one lam ~ Beta(alpha, alpha) per batch; targets mixed by the same lam."""

    def __call__(self, x: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        lam = _beta(self.params.alpha, generator)
        perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
        return lam * x + (1.0 - lam) * x[perm], lam * targets + (1.0 - lam) * targets[perm.to(targets.device)]

    @staticmethod
    def check(params: MixupParams) -> Iterator[tuple[str, str]]:
        if params.alpha <= 0:
            yield "alpha", f"must be positive, got {params.alpha}"


class Cutmix(MixAugmentation):
    """A span of the last (time) axis replaced by the same-width span of another sample (its start drawn per sample);
    targets weighted by the span's share of the axis. Works on waveforms and spectrograms alike."""

    def __call__(self, x: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        size, batch = x.shape[-1], x.shape[0]
        width = round((1.0 - _beta(self.params.alpha, generator)) * size)
        perm = torch.randperm(batch, generator=generator, device=generator.device).to(x.device)
        start = _integers(size - width, (batch, 1), generator, x.device)
        position = torch.arange(size, device=x.device)
        inside = ((position >= start) & (position < start + width)).view(batch, *[1] * (x.dim() - 2), size)
        share = width / size
        return torch.where(inside, x[perm], x), (1.0 - share) * targets + share * targets[perm.to(targets.device)]

    @staticmethod
    def check(params: CutmixParams) -> Iterator[tuple[str, str]]:
        if params.alpha <= 0:
            yield "alpha", f"must be positive, got {params.alpha}"


# ---- registry: config key -> (parameters, implementation); order within a stage is the order of application ------
# Shift runs before background and noise so the zero-filled gap is covered like the rest of the clip.

AUGMENTATIONS: dict[str, tuple[type, type[Augmentation]]] = {
    "pitch_shift": (PitchShiftParams, PitchShift),
    "time_stretch": (TimeStretchParams, TimeStretch),
    "shift": (ShiftParams, Shift),
    "gain": (GainParams, Gain),
    "background": (BackgroundParams, Background),
    "noise": (NoiseParams, Noise),
    "spec_time": (MaskParams, TimeMask),
    "spec_freq": (MaskParams, FreqMask),
    "mixup": (MixupParams, Mixup),
    "cutmix": (CutmixParams, Cutmix),
}

AugmentConfig = make_dataclass(
    "AugmentConfig", [(name, params, field(default_factory=params)) for name, (params, _) in AUGMENTATIONS.items()],
    namespace={"__doc__": "The `augment:` section: one entry per augmentation in AUGMENTATIONS, all off by default."})
AugmentConfig.__module__ = __name__  # pickling and OmegaConf's messages name the class by its module


def augment_config(cfg_augment: Any) -> Any:
    """An AugmentConfig from the `augment` section (a DictConfig, an AugmentConfig, or a partial plain mapping)."""
    if isinstance(cfg_augment, AugmentConfig):
        return cfg_augment
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AugmentConfig), cfg_augment))


def _build(cfg: Any, stage: str, sample_rate: int, device: torch.device | None) -> list[Augmentation]:
    """The enabled augmentations of one stage, in registry order."""
    return [impl(getattr(cfg, name), sample_rate, device) for name, (_, impl) in AUGMENTATIONS.items()
            if impl.stage == stage and getattr(cfg, name).p > 0]


def validate_augment(cfg_augment: Any, origin: str) -> None:
    """Raise UserError (one line, naming the key) for a probability outside [0, 1] or an impossible parameter."""
    cfg = augment_config(cfg_augment)
    for name, (_, impl) in AUGMENTATIONS.items():
        params = getattr(cfg, name)
        problems = list(_fraction(params, "p")) + list(impl.check(params))
        if problems:
            key, problem = problems[0]
            raise UserError(f"{origin}: 'augment.{name}.{key}' {problem}")
    mixing = [name for name, (_, impl) in AUGMENTATIONS.items() if impl.stage == "mix"]
    total = sum(getattr(cfg, name).p for name in mixing)
    if total > 1.0 + 1e-9:
        keys = " + ".join(f"'augment.{name}.p'" for name in mixing)
        raise UserError(f"{origin}: {keys} must be at most 1 (at most one mixing per batch), got {total:g}")


def heavy_enabled(cfg_augment: Any) -> bool:
    """Whether any heavy per-clip augmentation is on, i.e. whether loader workers need a HeavyAugment."""
    cfg = augment_config(cfg_augment)
    return any(impl.stage == "clip" and getattr(cfg, name).p > 0 for name, (_, impl) in AUGMENTATIONS.items())


class Augmenter:
    """The batched augmentations of the `augment` section, on the training device.

    All randomness comes from the `generator` passed to each call, so a fixed seed repeats training exactly. Pass a
    generator on x's device (`torch.Generator(device=x.device).manual_seed(seed)`): draws are made on the
    generator's device and moved to x's, which is free when they match and costs a copy otherwise. CPU and CUDA
    generators give different streams. With everything off, each method returns its input object untouched.
    """

    def __init__(self, cfg_augment: Any, sample_rate: int, device: torch.device | str = "cpu") -> None:
        cfg = augment_config(cfg_augment)
        device = torch.device(device)
        self.wave_ops = _build(cfg, "wave", sample_rate, device)
        self.spec_ops = _build(cfg, "spec", sample_rate, device)
        self.mix_ops = _build(cfg, "mix", sample_rate, device)

    @staticmethod
    def _apply(ops: list[Augmentation], x: Tensor, generator: torch.Generator) -> Tensor:
        for op in ops:
            x = op(x, _rand((x.shape[0],), generator, x.device) < op.params.p, generator)
        return x

    def wave(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Waveforms (batch, samples): each enabled op, in registry order, on the samples it picks."""
        return self._apply(self.wave_ops, x, generator)

    def spec(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Spectrograms (batch, 1, n_mels, frames): time and frequency masks on the samples they pick."""
        return self._apply(self.spec_ops, x, generator)

    def mix(self, x: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """At most one of mixup / cutmix per batch, chosen with probabilities mixup.p and cutmix.p; `targets` are
        (batch, classes) probabilities (one-hot or smoothed). One host sync per batch for the choice and the weight."""
        if not self.mix_ops:
            return x, targets
        draw = torch.rand((), generator=generator, device=generator.device).item()
        for op in self.mix_ops:
            if draw < op.params.p:
                return op(x, targets, generator)
            draw -= op.params.p
        return x, targets


class HeavyAugment:
    """Pitch shift and time stretch on one clip (1-D numpy float32), for loader workers; picklable.

    The output has the input's length: a stretched clip is centre-cropped or zero-padded on both sides, so the
    (usually centred) sound stays in the window. Randomness: audiomentations draws from Python's `random` and
    numpy's global state. A torch DataLoader seeds both in every worker from its base seed (drawn from torch's
    generator), so worker runs repeat under torch.manual_seed with no worker_init_fn; elsewhere (the main
    process, a multiprocessing.Pool worker) call `HeavyAugment.seed(seed)` first.
    """

    def __init__(self, cfg_augment: Any, sample_rate: int) -> None:
        import audiomentations

        self.sample_rate = sample_rate
        ops = _build(augment_config(cfg_augment), "clip", sample_rate, None)
        self.transform = audiomentations.Compose([op.transform() for op in ops])

    @staticmethod
    def seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        n = len(wave)
        out = self.transform(np.ascontiguousarray(wave, dtype=np.float32), self.sample_rate)
        if len(out) > n:
            start = (len(out) - n) // 2
            return out[start:start + n]
        before = (n - len(out)) // 2
        return np.pad(out, (before, n - len(out) - before))


# ---- test-time views: deterministic, written as strings in config ----------------------------------------------------

@dataclass(frozen=True)
class View:
    """A deterministic test-time view: where the window sits in the clip (`move`, a fraction of the window, slid along
    the clip's own audio) and what is done to the waveforms (batch, samples) cut there. A `whole` view instead slides
    the window over the whole clip, half a window at a time, and pools the windows' probabilities (mean or max)."""

    transform: Callable[[Tensor], Tensor]
    move: float = 0.0
    whole: str = ""  # "", "mean" or "max"

    def __call__(self, x: Tensor) -> Tensor:
        return self.transform(x)


def _plain(x: Tensor) -> Tensor:
    return x


def _shifted(x: Tensor, fraction: float, rollover: bool) -> Tensor:
    offset = round(fraction * x.shape[-1])
    return shift_samples(x, torch.full((x.shape[0],), offset, device=x.device), abs(offset), rollover)


def _gained(x: Tensor, db: float) -> Tensor:
    return x * 10.0 ** (db / 20.0)


def _fraction_view(fraction: float, rollover: bool) -> View:
    if not -1.0 < fraction < 1.0:
        raise ValueError("the fraction must be in (-1, 1)")
    return View(partial(_shifted, fraction=fraction, rollover=rollover))


def _window_view(fraction: float) -> View:
    if not -1.0 < fraction < 1.0:
        raise ValueError("the fraction must be in (-1, 1)")
    return View(_plain, move=fraction)


# view name -> (how it is written, factory taking the number after ':' if the written form has one). A new view is
# one entry here: config validation, prediction and the fold records pick it up by name.
TTA_VIEWS: dict[str, tuple[str, Callable[..., View]]] = {
    "plain": ("plain", lambda: View(_plain)),
    # the window slid along the clip by fraction * its length (earlier if < 0): the clip's own audio comes in, silence
    # only past the clip's ends
    "window": ("window:<fraction>", _window_view),
    # the window's samples moved later by fraction * length (earlier if < 0), zeros in: cuts sound at a hard edge
    "shift": ("shift:<fraction>", partial(_fraction_view, rollover=False)),
    "roll": ("roll:<fraction>", partial(_fraction_view, rollover=True)),  # like shift, what falls off wraps around
    "gain": ("gain:<db>", lambda db: View(partial(_gained, db=db))),
    # clips longer than audio.duration seen whole: the window slid over the clip, the windows' predictions averaged
    "whole": ("whole", lambda: View(_plain, whole="mean")),
    "whole_max": ("whole_max", lambda: View(_plain, whole="max")),  # ... or their class-wise maximum, renormalised
}


def parse_tta_view(spec: str) -> View:
    """A test-time view from its written form, e.g. "plain", "window:-0.1", "shift:-0.1", "roll:0.05", "gain:6"."""
    valid = ", ".join(usage for usage, _ in TTA_VIEWS.values())
    name, sep, number = str(spec).strip().partition(":")
    if name not in TTA_VIEWS:
        close = difflib.get_close_matches(name, TTA_VIEWS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"TTA view '{spec}' is unknown; {hint}valid views: {valid}")
    usage, make = TTA_VIEWS[name]
    if bool(sep) != (":" in usage):
        raise UserError(f"TTA view '{spec}' must be written {usage}; valid views: {valid}")
    if not sep:
        return make()
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"TTA view '{spec}': '{number}' is not a finite number (written {usage}); valid views: {valid}")
    try:
        return make(value)
    except ValueError as exc:  # the factory's own range check
        raise UserError(f"TTA view '{spec}': {exc} (written {usage}); valid views: {valid}") from None
