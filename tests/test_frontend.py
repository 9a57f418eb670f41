"""The batched torch log-mel must give librosa's numbers, so features match what users validate offline."""

import librosa
import numpy as np
import pytest
import torch

from competition.frontend import LogMel
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
