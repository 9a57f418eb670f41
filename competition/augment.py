"""Training augmentation: batched waveform and spectrogram ops on the training device, per-clip heavy ops on loader
workers, and mixup/cutmix.

Per-clip Python augmentation becomes the bottleneck once the model runs on a GPU, so the cheap ops (gain, shift,
noise, background mixing, SpecAugment masks, mixup, cutmix) are tensor ops over the whole batch. Pitch shift and
time stretch have no cheap batched form; they run through audiomentations on loader workers, and only when enabled.

Each augmentation's parameters, checks and stage are in competition.augment_params (no torch, so that configs are
checked before torch is imported); its implementation is a class here, registered in `IMPLEMENTATIONS` under the
same key.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from competition.augment_params import BackgroundParams, audio_files, augment_config, enabled
from competition.errors import UserError

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


def load_noise_bank(folder: str | Path, sample_rate: int, max_seconds: float) -> list[np.ndarray]:
    """Every recording in `folder`, mono float32 at `sample_rate`, each cut to its first `max_seconds`."""
    return [librosa.load(path, sr=sample_rate, mono=True, duration=max_seconds)[0] for path in audio_files(folder)]


class Augmentation:
    """A registry entry built from its parameters (competition.augment_params), run in their `stage`."""

    def __init__(self, params: Any, sample_rate: int, device: torch.device) -> None:
        self.params = params


class PerSample(Augmentation):
    """Batched; `picked` (batch,) marks the samples that apply it (each with probability p) and the others must come
    out unchanged. Folding `picked` into per-sample strengths (zero gain, zero shift, zero-width masks) is free, where
    selecting outputs afterwards would cost one more pass over the batch."""

    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


class WaveAugmentation(PerSample):
    """Waveforms (batch, samples) on the training device."""


class SpecAugmentation(PerSample):
    """Spectrograms (batch, 1, n_mels, frames) on the training device."""


class MixAugmentation(Augmentation):
    """Mixes the batch with a permutation of itself, inputs and soft targets alike; p is the chance per batch."""

    def __call__(self, x: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class ClipAugmentation(Augmentation):
    """One clip (numpy float32) at a time through audiomentations, on loader workers; see HeavyAugment."""

    def transform(self) -> Any:
        """The audiomentations transform, with its own p."""
        raise NotImplementedError


class Gain(WaveAugmentation):
    def __call__(self, x: Tensor, picked: Tensor, generator: torch.Generator) -> Tensor:
        db = _uniform(-self.params.db, self.params.db, (x.shape[0], 1), generator, x.device) * picked[:, None]
        return x * 10.0 ** (db / 20.0)


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


class PitchShift(ClipAugmentation):
    def transform(self) -> Any:
        import audiomentations

        return audiomentations.PitchShift(self.params.min_semitones, self.params.max_semitones, p=self.params.p)


class TimeStretch(ClipAugmentation):
    def transform(self) -> Any:
        import audiomentations

        return audiomentations.TimeStretch(self.params.min_rate, self.params.max_rate, leave_length_unchanged=False,
                                           p=self.params.p)


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


# ---- registry: config key (competition.augment_params.AUGMENTATIONS) -> implementation --------------------------

IMPLEMENTATIONS: dict[str, type[Augmentation]] = {
    "pitch_shift": PitchShift,
    "time_stretch": TimeStretch,
    "shift": Shift,
    "gain": Gain,
    "background": Background,
    "noise": Noise,
    "spec_time": TimeMask,
    "spec_freq": FreqMask,
    "mixup": Mixup,
    "cutmix": Cutmix,
}


def _build(cfg: Any, stage: str, sample_rate: int, device: torch.device | None) -> list[Augmentation]:
    """The enabled augmentations of one stage, in registry order."""
    return [IMPLEMENTATIONS[name](getattr(cfg, name), sample_rate, device) for name in enabled(cfg, stage)]


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
