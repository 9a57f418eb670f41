"""The batched torch log-mel must give librosa's numbers, so features match what users validate offline."""

import librosa
import numpy as np
import pytest
import torch

from competition.frontend import PITCH_QUANTILES, ClipStats, LogMel, log_pitch
from conftest import fsdd_names, shared_data


def clips() -> list[np.ndarray]:
    """Generated tones, noise and silence, and four real recordings."""
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    generated = [0.3 * np.sin(2 * np.pi * 440 * t), 0.05 * rng.standard_normal(16000), np.zeros(16000)]
    real = [librosa.load(shared_data("fsdd", "recordings", name), sr=16000)[0]
            for name in fsdd_names(digits=range(1), speakers=["george", "jackson"], indexes=range(2))]
    return [c.astype(np.float32) for c in generated + real]


@pytest.mark.parametrize("n_mels,n_fft,hop", [(64, 1024, 160), (128, 512, 128), (224, 1024, 72)])
def test_log_mel_matches_librosa(n_mels: int, n_fft: int, hop: int) -> None:
    frontend = LogMel(16000, n_mels=n_mels, n_fft=n_fft, hop_length=hop, normalize="none")
    for wave in clips():
        expected = librosa.power_to_db(
            librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=n_fft, hop_length=hop, n_mels=n_mels,
                                           center=True, pad_mode="constant", power=2.0),
            ref=1.0, amin=1e-10, top_db=80.0)
        got = frontend.decibels(torch.from_numpy(wave)[None])[0].numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 0.01


def test_batch_equals_single_clips_and_normalises() -> None:
    waves = clips()[:2] + clips()[3:5]
    batch = torch.from_numpy(np.stack([w[:2000] for w in waves]))
    frontend = LogMel(16000, n_mels=64)
    together = frontend(batch)
    assert together.shape == (4, 1, 64, frontend.frames(2000))
    for i in range(4):
        alone = frontend(batch[i:i + 1])
        assert torch.allclose(together[i], alone[0], atol=1e-4)
    flat = together.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(flat.std(1), torch.ones(4), atol=1e-3)


def harmonic(f0: float, rate: int, seconds: float = 1.0, amplitude: float = 0.1) -> np.ndarray:
    """A voiced-like tone: f0 and six overtones falling off as 1/k."""
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))).astype(np.float32)


def test_gain_changes_the_input_under_dataset_normalisation_only() -> None:
    rng = np.random.default_rng(0)
    train = torch.from_numpy(np.stack([harmonic(f, 16000) for f in (120, 180, 240)])
                             + 0.01 * rng.standard_normal((3, 16000)).astype(np.float32))
    clip_level, dataset = LogMel(16000, normalize="clip"), LogMel(16000, normalize="dataset")
    dataset.fit([train[:2], train[2:]])
    db = dataset.decibels(train)
    torch.testing.assert_close(dataset.band_mean[:, 0], db.mean((0, 2)), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dataset.band_std[:, 0], db.permute(1, 0, 2).reshape(64, -1).std(1, unbiased=False),
                               rtol=1e-3, atol=1e-3)
    louder = train * 10 ** (6 / 20)
    torch.testing.assert_close(clip_level(louder), clip_level(train), rtol=1e-3, atol=1e-3)  # gain is a no-op
    shift = (dataset(louder) - dataset(train)) * dataset.band_std  # +6 dB on every band that is not at the floor
    assert shift.median().item() == pytest.approx(6.0, abs=0.05)
    restored = LogMel(16000, normalize="dataset")
    restored.load_state_dict(dataset.state_dict())  # the statistics travel with the fold's model.pt
    torch.testing.assert_close(restored(train), dataset(train))


@pytest.mark.parametrize("rate", [8000, 16000])
def test_pitch_of_harmonic_tones(rate: int) -> None:
    freqs = [90.0, 150.0, 230.0, 330.0]
    pitch, energy = log_pitch(torch.from_numpy(np.stack([harmonic(f, rate) for f in freqs])), rate, rate // 100)
    median = torch.exp(pitch[:, 10:-10]).median(-1).values  # frames away from the clip's edges
    np.testing.assert_allclose(median.numpy(), freqs, rtol=0.01)
    assert (energy[:, 10:-10] > 0).all()


def test_pitch_agrees_with_librosa_yin_on_a_noisy_voice() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    f0 = 140 + 40 * t  # a rising voice, 140 -> 180 Hz
    wave = 0.1 * sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 8))
    wave = (wave + 0.005 * rng.standard_normal(16000)).astype(np.float32)
    ours = torch.exp(log_pitch(torch.from_numpy(wave)[None], 16000, 160)[0][0, 5:-5]).numpy()
    theirs = librosa.yin(wave, fmin=50, fmax=500, sr=16000, frame_length=1024, hop_length=160)[5:-5]
    assert np.median(np.abs(ours / theirs[:len(ours)] - 1)) < 0.01


def test_clip_stats_are_band_levels_and_voiced_pitch() -> None:
    stats = ClipStats(LogMel(16000, n_mels=32, normalize="none"), 16000)
    waves = torch.from_numpy(np.stack([harmonic(120, 16000), harmonic(220, 16000), np.zeros(16000, np.float32)]))
    features = stats(waves)
    assert features.shape == (3, 1, 2 * 32 + len(PITCH_QUANTILES), 1) and torch.isfinite(features).all()
    pitch = torch.exp(features[:2, 0, 64:, 0])
    assert torch.allclose(pitch, torch.tensor([[120.0], [220.0]]).expand(2, 5), rtol=0.02)
    db = stats.logmel.decibels(waves)
    torch.testing.assert_close(features[:, 0, :32, 0], db.mean(-1))
    assert not features[2, 0, 64:, 0].any()  # silence has no voiced frame: pitch 0, not NaN


def test_clip_stats_give_only_the_groups_asked_for() -> None:
    waves = torch.from_numpy(np.stack([harmonic(120, 16000), harmonic(220, 16000)]))
    both = ClipStats(LogMel(16000, n_mels=32, normalize="none"), 16000)(waves)
    pitch = ClipStats(LogMel(16000, n_mels=32, normalize="none"), 16000, ("pitch",))(waves)
    bands = ClipStats(LogMel(16000, n_mels=32, normalize="none"), 16000, ("bands",))(waves)
    torch.testing.assert_close(pitch, both[:, :, 64:])
    torch.testing.assert_close(bands, both[:, :, :64])


def test_unknown_clip_stats_are_one_line(tmp_path) -> None:
    from competition.errors import UserError
    from conftest import make_config

    with pytest.raises(UserError, match=r"'frontend\.stats' is \['pitch', 'formants'\]; give one or both of bands, pitch"):
        make_config(tmp_path, {}, frontend={"kind": "clip_stats", "stats": ["pitch", "formants"]})
