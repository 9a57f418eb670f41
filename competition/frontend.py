"""What the model sees of a waveform batch, computed batched on the training device.

`logmel` gives images for CNNs: per-clip librosa on loader workers becomes the bottleneck as soon as the model runs
on a GPU; one torch STFT over the whole batch with librosa's own filterbank gives the same numbers (within 0.01 dB)
at batch speed. `clip_stats` gives one vector per clip (each band's level and spread, the voice's pitch) for linear
models, which generalise from a few speakers where a CNN learns the voices; `encoder` gives a pretrained encoder's
pooled embeddings (competition.encoders). A new frontend is one entry in FRONTENDS.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import librosa
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from competition.config import STATS
from competition.encoders import EncoderFrontend, fine_tuned

PITCH_RANGE = (50.0, 500.0)  # Hz: adult and child voices
PITCH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class LogMel(torch.nn.Module):
    """Waveforms (batch, samples) -> log-mel images (batch, 1, n_mels, frames).

    Matches librosa.feature.melspectrogram(center=True, pad_mode='constant', power=2, slaney filterbank)
    followed by power_to_db(ref=1.0, amin=1e-10, top_db) per clip. `normalize`: `clip` standardises each image on its
    own (loudness-independent: gain changes nothing the model sees), `dataset` with each band's mean and spread over
    the training clips (fitted once per fold with `fit`, stored in the fold's model.pt), so level cues and gain
    augmentation count; `none` leaves decibels.
    """

    def __init__(self, sample_rate: int, n_mels: int = 64, n_fft: int = 1024, hop_length: int = 160,
                 f_min: float = 0.0, f_max: float | None = None, top_db: float | None = 80.0,
                 normalize: str = "clip") -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.top_db, self.normalize = n_fft, hop_length, top_db, normalize
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
        self.register_buffer("mel", torch.from_numpy(mel), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("band_mean", torch.zeros(n_mels, 1))
        self.register_buffer("band_std", torch.ones(n_mels, 1))

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "LogMel":
        f = cfg.frontend
        return cls(cfg.audio.sample_rate, f.n_mels, f.n_fft, f.hop_length, f.f_min, f.f_max, f.top_db, f.normalize)

    def decibels(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel power in dB, (batch, n_mels, frames), clipped to top_db below each clip's peak."""
        spec = torch.stft(wave.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        db = 10.0 * torch.log10(torch.clamp(self.mel @ power, min=1e-10))
        if self.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.top_db)
        return db

    @torch.no_grad()
    def fit(self, waves: Iterable[torch.Tensor]) -> None:
        """Each band's mean and spread in dB over every frame of the given (training) batches, for `dataset`."""
        total, squares, count = 0.0, 0.0, 0
        for wave in waves:
            db = self.decibels(wave.to(self.mel.device)).double()
            total, squares = total + db.sum((0, 2)), squares + db.square().sum((0, 2))
            count += db.shape[0] * db.shape[2]
        mean = total / count
        self.band_mean.copy_(mean[:, None])
        self.band_std.copy_((squares / count - mean.square()).clamp_min(1e-6).sqrt()[:, None])

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        db = self.decibels(wave)
        if self.normalize == "clip":  # loudness-independent input; each image has zero mean and unit spread
            mean = db.mean(dim=(-2, -1), keepdim=True)
            std = db.std(dim=(-2, -1), keepdim=True)
            db = (db - mean) / (std + 1e-5)
        elif self.normalize == "dataset":
            db = (db - self.band_mean) / self.band_std
        return db.unsqueeze(1)

    def frames(self, samples: int) -> int:
        return samples // self.hop_length + 1


def log_pitch(wave: torch.Tensor, sample_rate: int, hop_length: int, low: float = PITCH_RANGE[0],
              high: float = PITCH_RANGE[1], threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """YIN (de Cheveigné and Kawahara, 2002) on every frame of a batch at once: the log fundamental frequency and the
    frame's energy, each (batch, frames), frames centred every `hop_length` samples. The period is the first dip of
    the cumulative-mean-normalised difference below `threshold` (the deepest one if none is), refined by a parabola."""
    tau_min, tau_max = int(sample_rate / high), int(math.ceil(sample_rate / low))
    width = round(0.025 * sample_rate)  # the integration window, 25 ms
    length = width + tau_max + 1
    frames = F.pad(wave.float(), (length // 2, length // 2)).unfold(-1, length, hop_length)
    size = 1 << (length - 1).bit_length()
    head = frames[..., :width]
    correlation = torch.fft.irfft(torch.fft.rfft(frames, size) * torch.fft.rfft(head, size).conj(), size)
    correlation = correlation[..., :tau_max + 2]  # sum_j head[j] frame[j + tau]
    squares = F.pad(frames.square().cumsum(-1), (1, 0))
    shifted_energy = squares[..., width:width + tau_max + 2] - squares[..., :tau_max + 2]
    energy = shifted_energy[..., :1]
    difference = (energy + shifted_energy - 2 * correlation).clamp_min(0)
    taus = torch.arange(tau_max + 2, device=wave.device)
    cmnd = torch.ones_like(difference)
    cmnd[..., 1:] = difference[..., 1:] * taus[1:] / difference[..., 1:].cumsum(-1).clamp_min(1e-12)
    here, before, after = cmnd[..., tau_min:tau_max + 1], cmnd[..., tau_min - 1:tau_max], cmnd[..., tau_min + 1:tau_max + 2]
    dips = (here <= before) & (here <= after) & (here < threshold)
    pick = torch.where(dips.any(-1), dips.int().argmax(-1), here.argmin(-1))[..., None]
    a, b, c = before.gather(-1, pick), here.gather(-1, pick), after.gather(-1, pick)
    curvature = a - 2 * b + c
    step = torch.where(curvature > 1e-9, 0.5 * (a - c) / curvature.clamp_min(1e-9), torch.zeros_like(b)).clamp(-1, 1)
    period = (pick + tau_min).float() + step
    return torch.log(sample_rate / period[..., 0]), energy[..., 0]


class ClipStats(torch.nn.Module):
    """Waveforms -> one vector per clip, (batch, 1, features, 1): with `bands`, each mel band's mean and spread in dB
    over the clip (2 * n_mels); with `pitch`, quantiles of the log pitch over its voiced frames (those at least as
    loud as the clip's median frame; 5). Pitch alone generalises best from very few speakers (the README's
    voice-gender benchmark): band levels also describe the room and the microphone."""

    def __init__(self, logmel: LogMel, sample_rate: int, stats: tuple[str, ...] = STATS) -> None:
        super().__init__()
        self.logmel, self.sample_rate, self.stats = logmel, sample_rate, tuple(stats)
        self.register_buffer("quantiles", torch.tensor(PITCH_QUANTILES), persistent=False)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "ClipStats":
        f = cfg.frontend
        logmel = LogMel(cfg.audio.sample_rate, f.n_mels, f.n_fft, f.hop_length, f.f_min, f.f_max, f.top_db, "none")
        return cls(logmel, cfg.audio.sample_rate, f.stats)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        features = []
        if "bands" in self.stats:
            db = self.logmel.decibels(wave)
            features += [db.mean(-1), db.std(-1)]
        if "pitch" in self.stats:
            pitch, energy = log_pitch(wave, self.sample_rate, self.logmel.hop_length)
            sounding = torch.where(energy > 0, energy, torch.nan)
            voiced = energy >= sounding.nanmedian(-1, keepdim=True).values
            pitch = torch.nanquantile(torch.where(voiced, pitch, torch.nan), self.quantiles, dim=-1).T
            features.append(torch.nan_to_num(pitch))  # silence: pitch 0
        return torch.cat(features, -1)[:, None, :, None]


class Waveforms(torch.nn.Module):
    """The samples themselves, for a model that computes its own features differentiably: a fine-tuned encoder
    (frontend.trainable, competition.encoders.EncoderClassifier)."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return wave


def encoder_frontend(cfg: DictConfig) -> EncoderFrontend | Waveforms:
    """Frozen, the encoder is a frontend whose embeddings are cached; fine-tuned, it is part of the model."""
    return Waveforms() if fine_tuned(cfg) else EncoderFrontend.from_config(cfg)


Frontend = LogMel | ClipStats | EncoderFrontend | Waveforms
FRONTENDS: dict[str, Callable[[DictConfig], Frontend]] = {"logmel": LogMel.from_config,
                                                          "clip_stats": ClipStats.from_config,
                                                          "encoder": encoder_frontend}


def make_frontend(cfg: DictConfig) -> Frontend:
    """The configured frontend (`frontend.kind`)."""
    return FRONTENDS[cfg.frontend.kind](cfg)
