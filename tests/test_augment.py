"""Each augmentation does what its config says when on, nothing when off, and repeats exactly under a fixed seed."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from competition.augment import (IMPLEMENTATIONS, Augmenter, ClipAugmentation, HeavyAugment, MixAugmentation,
                                 SpecAugmentation, WaveAugmentation, load_noise_bank)
from competition.augment_params import AUGMENTATIONS, AugmentConfig, heavy_enabled, validate_augment
from competition.errors import UserError
from competition.frontend import LogMel
from competition.views import parse_tta_view
from conftest import FSDD, SHARED, shared_data, tone

BACKGROUND = SHARED / "background_noise"  # real noise recordings; tests that read them call shared_data first
REAL = ["0_george_0.wav", "3_jackson_5.wav", "5_nicolas_12.wav", "7_lucas_10.wav", "8_theo_3.wav", "9_yweweler_20.wav"]


def real_clips(samples: int = 8000) -> np.ndarray:
    """Real 8 kHz recordings, cut or zero-padded to `samples`, (clips, samples) float32."""
    for name in REAL:
        shared_data("fsdd", "recordings", name)
    shared_data("background_noise")  # every test of real speech also mixes in the real noise recordings
    waves = [soundfile.read(FSDD / name, dtype="float32")[0][:samples] for name in REAL]
    return np.stack([np.pad(w, (0, samples - len(w))) for w in waves])


def wave_batch() -> torch.Tensor:
    """Real speech plus generated tones and noise, all 8,000 samples."""
    rng = np.random.default_rng(0)
    generated = [tone(f, 8000, 1.0, a) for f, a in ((220, 0.5), (1000, 0.1), (3100, 0.8))]
    generated.append((0.05 * rng.standard_normal(8000)).astype(np.float32))
    return torch.from_numpy(np.concatenate([real_clips(), np.stack(generated)]))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def power(x: torch.Tensor) -> torch.Tensor:
    return x.double().square().mean(-1)


def dominant_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


# ---- schema and the everything-off path -----------------------------------------------------------------------------

def test_schema_is_off_by_default_and_rejects_unknown_keys() -> None:
    schema = OmegaConf.structured(AugmentConfig)
    assert list(schema) == list(AUGMENTATIONS)
    assert all(schema[name].p == 0.0 for name in schema)
    for bad in ({"nosie": {"p": 0.5}}, {"noise": {"snr": 3}}):
        with pytest.raises(ConfigKeyError):
            OmegaConf.merge(schema, bad)
    assert not heavy_enabled(schema)
    assert heavy_enabled({"time_stretch": {"p": 0.3}})


def test_every_augmentation_has_an_implementation_for_its_stage() -> None:
    """The parameters (checked without torch) and the implementations are two registries under the same keys; each
    implementation takes what its stage hands it (a clip, waveforms, spectrograms or the batch to mix)."""
    assert list(IMPLEMENTATIONS) == list(AUGMENTATIONS)
    kinds = {"clip": ClipAugmentation, "wave": WaveAugmentation, "spec": SpecAugmentation, "mix": MixAugmentation}
    for name, params in AUGMENTATIONS.items():
        assert issubclass(IMPLEMENTATIONS[name], kinds[params.stage]), name


def test_everything_off_returns_the_inputs_themselves() -> None:
    augmenter = Augmenter(AugmentConfig(), 8000)
    x, spec, targets = wave_batch(), torch.randn(4, 1, 16, 20), torch.eye(4)
    assert augmenter.wave(x, gen()) is x
    assert augmenter.spec(spec, gen()) is spec
    mixed, mixed_targets = augmenter.mix(spec, targets, gen())
    assert mixed is spec and mixed_targets is targets


STRONG = {"gain": {"db": 20.0}, "shift": {"max_fraction": 0.5}, "noise": {"snr_min": 0.0, "snr_max": 1.0},
          "background": {"folder": str(BACKGROUND), "snr_min": 0.0, "snr_max": 1.0}, "spec_time": {"count": 5},
          "spec_freq": {"count": 5}, "mixup": {"alpha": 1.0}, "cutmix": {"alpha": 1.0},
          "pitch_shift": {"min_semitones": 3.0, "max_semitones": 3.0}, "time_stretch": {"min_rate": 0.5}}


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_each_augmentation_is_off_at_p_zero(name: str) -> None:
    """Strong settings but p=0: nothing is built, nothing changes."""
    cfg = {name: {**STRONG[name], "p": 0.0}}
    validate_augment(cfg, "test")
    x = wave_batch()
    if AUGMENTATIONS[name].stage == "clip":
        assert not heavy_enabled(cfg)
        np.testing.assert_array_equal(HeavyAugment(cfg, 8000)(x[0].numpy()), x[0].numpy())
        return
    augmenter = Augmenter(cfg, 8000)
    spec = torch.randn(len(x), 1, 16, 30)
    assert augmenter.wave(x, gen()) is x and augmenter.spec(spec, gen()) is spec
    assert augmenter.mix(spec, torch.eye(len(x)), gen())[0] is spec


# ---- waveform ------------------------------------------------------------------------------------------------------

def test_gain_scales_each_clip_by_a_gain_within_range() -> None:
    x = wave_batch()
    out = Augmenter({"gain": {"p": 1.0, "db": 6.0}}, 8000).wave(x, gen())
    ratio = (power(out) / power(x)).sqrt()
    gain_db = 20 * torch.log10(ratio)
    assert gain_db.abs().max() <= 6.0 + 1e-4
    assert gain_db.std() > 1.0  # each clip draws its own gain
    torch.testing.assert_close(out, x * ratio[:, None].float(), rtol=1e-4, atol=1e-6)


def shifted(row: np.ndarray, k: int, rollover: bool) -> np.ndarray:
    if rollover:
        return np.roll(row, k)
    out = np.zeros_like(row)
    if k >= 0:
        out[k:] = row[:len(row) - k]
    else:
        out[:k] = row[-k:]
    return out


@pytest.mark.parametrize("rollover", [False, True])
def test_shift_moves_each_clip_by_at_most_max_fraction(rollover: bool) -> None:
    x = wave_batch()
    out = Augmenter({"shift": {"p": 1.0, "max_fraction": 0.2, "rollover": rollover}}, 8000).wave(x, gen()).numpy()
    most = int(0.2 * x.shape[1])
    found = []
    for row, moved in zip(x.numpy(), out):
        matches = [k for k in range(-most, most + 1) if np.array_equal(moved, shifted(row, k, rollover))]
        assert matches, "output is not the input shifted by at most max_fraction"
        found.append(matches[0])
    assert len(set(found)) > len(found) // 2  # shifts differ between clips, in both directions
    assert min(found) < 0 < max(found)


def test_noise_is_added_at_a_snr_within_range_and_silence_stays_finite() -> None:
    x = torch.cat([wave_batch(), torch.zeros(1, 8000)])
    out = Augmenter({"noise": {"p": 1.0, "snr_min": 10.0, "snr_max": 20.0}}, 8000).wave(x, gen())
    added = out - x
    snr = 10 * torch.log10(power(x[:-1]) / power(added[:-1]))
    assert snr.min() > 10.0 - 0.3 and snr.max() < 20.0 + 0.3, snr  # 8,000 samples estimate noise power to ~2%
    assert snr.std() > 0.5
    assert abs(float(added[0].mean())) < 0.05 * float(added[0].std())  # zero-mean Gaussian
    assert torch.isfinite(out).all() and torch.equal(out[-1], x[-1])


def test_background_folder_loads_and_resamples() -> None:
    shared_data("background_noise")
    bank = load_noise_bank(BACKGROUND, 8000, max_seconds=2.0)
    assert len(bank) == 6 and all(w.dtype == np.float32 and len(w) == 16000 for w in bank)
    assert all(np.abs(w).max() > 0.001 for w in bank)


def excerpt_starts(rows: np.ndarray, bank: np.ndarray) -> list[int | None]:
    """For each row, the start of the window of `bank` it is a scaled copy of (None if there is none)."""
    windows = np.lib.stride_tricks.sliding_window_view(bank.astype(np.float64), rows.shape[1])
    energy = np.concatenate([[0.0], np.cumsum(bank.astype(np.float64) ** 2)])
    norms = np.sqrt(energy[rows.shape[1]:] - energy[:-rows.shape[1]])
    corr = (windows @ rows.T) / (norms[:, None] * np.linalg.norm(rows, axis=1))
    return [int(c.argmax()) if c.max() > 0.9999 else None for c in corr.T]


def test_background_mixes_excerpts_of_the_recordings_at_the_snr(tmp_path: Path) -> None:
    """Small generated recordings, so that every excerpt can be located in them exactly."""
    rng = np.random.default_rng(1)
    recordings = [rng.standard_normal(12000).astype(np.float32) * 0.3,
                  np.sin(np.arange(3000) * 0.05).astype(np.float32) * rng.uniform(0.5, 1, 3000).astype(np.float32)]
    for i, wave in enumerate(recordings):
        soundfile.write(tmp_path / f"bg{i}.wav", wave, 8000, subtype="FLOAT")
    cfg = {"background": {"p": 1.0, "folder": str(tmp_path), "snr_min": 5.0, "snr_max": 10.0}}
    validate_augment(cfg, "test")
    x = torch.cat([wave_batch()] * 4)
    added = (Augmenter(cfg, 8000).wave(x, gen()) - x).double()
    snr = 10 * torch.log10(power(x) / power(added))
    assert snr.min() > 5.0 - 1e-3 and snr.max() < 10.0 + 1e-3 and snr.std() > 0.5
    starts = excerpt_starts(added.numpy(), np.concatenate(recordings))
    assert None not in starts and len(set(starts)) == len(starts)  # each clip its own excerpt
    last = 15000 - x.shape[1]
    assert min(starts) < 0.25 * last and max(starts) > 0.75 * last  # from anywhere in the bank


def test_background_bank_shorter_than_a_clip_is_looped(tmp_path: Path) -> None:
    short = np.sin(np.arange(3000) * 0.05).astype(np.float32) * np.linspace(0.2, 1, 3000, dtype=np.float32)
    soundfile.write(tmp_path / "short.flac", short, 8000, subtype="PCM_24")
    x = wave_batch()
    added = Augmenter({"background": {"p": 1.0, "folder": str(tmp_path)}}, 8000).wave(x, gen()) - x
    assert None not in excerpt_starts(added.double().numpy(), np.tile(short, 4))


def test_background_from_the_real_folder_at_16k() -> None:
    shared_data("background_noise")
    x = torch.from_numpy(np.stack([tone(440, 16000, 1.0), tone(880, 16000, 1.0, 0.1)]))
    cfg = {"background": {"p": 1.0, "folder": str(BACKGROUND), "snr_min": 3.0, "snr_max": 3.0, "max_seconds": 5.0}}
    added = Augmenter(cfg, 16000).wave(x, gen()) - x
    torch.testing.assert_close(10 * torch.log10(power(x) / power(added)), torch.full((2,), 3.0, dtype=torch.float64),
                               atol=1e-3, rtol=0)


def test_pitch_shift_moves_the_frequency_by_the_semitones() -> None:
    wave = tone(440, 16000, 1.0)
    for semitones in (4.0, -3.0):
        heavy = HeavyAugment({"pitch_shift": {"p": 1.0, "min_semitones": semitones, "max_semitones": semitones}},
                             16000)
        out = heavy(wave)
        assert out.shape == wave.shape and out.dtype == np.float32
        assert dominant_hz(out, 16000) == pytest.approx(440 * 2 ** (semitones / 12), rel=0.02)


def burst_seconds(wave: np.ndarray, rate: int) -> tuple[float, float]:
    """Duration and centre of the loud part, from a 10 ms RMS envelope."""
    frame = rate // 100
    rms = np.sqrt(np.square(wave[:len(wave) // frame * frame].reshape(-1, frame)).mean(1))
    loud = np.flatnonzero(rms > 0.5 * rms.max())
    return (loud[-1] - loud[0] + 1) / 100, (loud[-1] + loud[0] + 1) / 200


def test_time_stretch_changes_the_burst_length_and_keeps_the_clip_length() -> None:
    wave = np.zeros(16000, np.float32)
    wave[4800:11200] = tone(500, 16000, 0.4)  # 0.4 s burst centred in a 1 s clip
    assert burst_seconds(wave, 16000)[0] == pytest.approx(0.4, abs=0.011)
    for rate in (0.8, 1.25):
        out = HeavyAugment({"time_stretch": {"p": 1.0, "min_rate": rate, "max_rate": rate}}, 16000)(wave)
        assert out.shape == wave.shape
        duration, centre = burst_seconds(out, 16000)
        assert duration == pytest.approx(0.4 / rate, abs=0.03)
        assert centre == pytest.approx(0.5, abs=0.03)  # centre-cropped / padded, so the sound stays in view
        assert dominant_hz(out, 16000) == pytest.approx(500, rel=0.02)  # tempo, not pitch


def test_heavy_augment_pickles_and_repeats_under_a_seed() -> None:
    cfg = {"pitch_shift": {"p": 1.0}, "time_stretch": {"p": 0.5}}
    heavy = pickle.loads(pickle.dumps(HeavyAugment(cfg, 8000)))
    clip = real_clips()[0]
    HeavyAugment.seed(3)
    first = heavy(clip)
    HeavyAugment.seed(3)
    np.testing.assert_array_equal(heavy(clip), first)
    HeavyAugment.seed(4)
    assert not np.array_equal(heavy(clip), first)


class Clips(torch.utils.data.Dataset):
    def __init__(self, heavy: HeavyAugment, clips: np.ndarray) -> None:
        self.heavy, self.clips = heavy, clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.heavy(self.clips[i])


def test_heavy_augment_in_dataloader_workers_repeats_under_torch_seed() -> None:
    data = Clips(HeavyAugment({"pitch_shift": {"p": 1.0, "min_semitones": -4.0, "max_semitones": 4.0}}, 8000),
                 real_clips())

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.cat(list(torch.utils.data.DataLoader(data, batch_size=2, num_workers=2)))

    first = run(0)
    assert torch.equal(run(0), first)
    assert not torch.equal(run(1), first)


def test_each_clip_decides_independently() -> None:
    """p=0.5: about half the clips change, the others come out bit-identical."""
    x = torch.cat([wave_batch()] * 8)
    spec = torch.randn(len(x), 1, 16, 40)
    for name in ("gain", "shift", "noise", "background", "spec_time", "spec_freq"):
        cfg = {name: {**STRONG[name], "p": 0.5}}
        if name in ("spec_time", "spec_freq"):
            cfg[name]["max_fraction"] = 0.5
        augmenter = Augmenter(cfg, 8000)
        before = spec if name.startswith("spec") else x
        after = augmenter.spec(spec, gen()) if name.startswith("spec") else augmenter.wave(x, gen())
        changed = (after != before).flatten(1).any(1)
        assert 0.3 < changed.float().mean() < 0.7, name


# ---- spectrogram ---------------------------------------------------------------------------------------------------

def db_spectrograms() -> torch.Tensor:
    """Real log-mel images in dB (not standardised, so the fill value, the clip mean, is far from 0)."""
    return LogMel(8000, n_mels=32, n_fft=256, hop_length=80, normalize="none")(wave_batch())


@pytest.mark.parametrize("name,axis", [("spec_time", -1), ("spec_freq", -2)])
@pytest.mark.parametrize("count", [1, 3])
def test_masks_fill_whole_bands_with_the_clip_mean(name: str, axis: int, count: int) -> None:
    x = db_spectrograms()
    out = Augmenter({name: {"p": 1.0, "count": count, "max_fraction": 0.2}}, 8000).spec(x, gen())
    size = x.shape[axis]
    widest = int(0.2 * size)
    masked_counts = []
    for before, after in zip(x[:, 0], out[:, 0]):
        before, after = before.movedim(axis, -1), after.movedim(axis, -1)  # bands are now columns
        changed = (before != after).any(0)
        mean = before.mean()
        assert torch.equal(after[:, ~changed], before[:, ~changed])
        torch.testing.assert_close(after[:, changed], mean.expand_as(after[:, changed]))
        columns = torch.nonzero(changed).flatten()
        masked_counts.append(len(columns))
        assert len(columns) <= count * widest
        if count == 1 and len(columns):
            assert columns[-1] - columns[0] + 1 == len(columns)  # one contiguous band
    assert sum(masked_counts) > 0 and len(set(masked_counts)) > 1  # widths drawn per clip


# ---- mixing --------------------------------------------------------------------------------------------------------

def partner(targets: torch.Tensor, i: int) -> tuple[int, float]:
    """With identity targets, row i of the mixed targets names the other sample and its weight."""
    row = targets[i].clone()
    row[i] = 0
    j = int(row.argmax())
    return (j, float(row[j])) if row[j] > 0 else (i, 0.0)


def test_mixup_blends_inputs_and_targets_with_the_same_weight() -> None:
    x = db_spectrograms()
    n = len(x)
    weights = []
    for seed in range(5):
        out, targets = Augmenter({"mixup": {"p": 1.0, "alpha": 0.4}}, 8000).mix(x, torch.eye(n), gen(seed))
        torch.testing.assert_close(targets.sum(1), torch.ones(n))
        for i in range(n):
            j, other = partner(targets, i)
            if j == i:
                torch.testing.assert_close(out[i], x[i])
                continue
            lam = float(targets[i, i])
            assert lam + other == pytest.approx(1.0)
            torch.testing.assert_close(out[i], lam * x[i] + (1 - lam) * x[j])
            weights.append(lam)
    assert len(set(np.round(weights, 6))) == 5 and 0 < min(weights) and max(weights) < 1  # one lam per batch


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_mixup_weight_follows_beta(alpha: float) -> None:
    """With two samples swapped, the first target row reads lam; its spread must be Beta(alpha, alpha)'s."""
    augmenter, generator, x = Augmenter({"mixup": {"p": 1.0, "alpha": alpha}}, 8000), gen(), torch.randn(2, 5)
    draws = []
    while len(draws) < 800:
        _, targets = augmenter.mix(x, torch.eye(2), generator)
        if targets[0, 1] > 0:
            draws.append(float(targets[0, 0]))
    assert np.mean(draws) == pytest.approx(0.5, abs=0.04)
    assert np.var(draws) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.15)


def test_cutmix_copies_a_time_span_and_weights_targets_by_its_share() -> None:
    x = db_spectrograms()
    n, frames = len(x), x.shape[-1]
    shares = set()
    for seed in range(5):
        out, targets = Augmenter({"cutmix": {"p": 1.0, "alpha": 1.0}}, 8000).mix(x, torch.eye(n), gen(seed))
        for i in range(n):
            j, share = partner(targets, i)
            from_other = (out[i] == x[j]).all(1).all(0) & (out[i] != x[i]).any(1).any(0)
            span = torch.nonzero(from_other).flatten()
            if j == i or share == 0:
                torch.testing.assert_close(out[i], x[i])
                continue
            assert len(span) == round(share * frames) and span[-1] - span[0] + 1 == len(span)
            keep = torch.ones(frames, dtype=torch.bool)
            keep[span] = False
            assert torch.equal(out[i][..., keep], x[i][..., keep])
            assert targets[i, i] == pytest.approx(1 - share)
            shares.add(round(share, 6))
    assert len(shares) > 1


def test_at_most_one_mixing_per_batch() -> None:
    x = torch.randn(6, 1, 8, 40)
    augmenter = Augmenter({"mixup": {"p": 0.5}, "cutmix": {"p": 0.5}}, 8000)
    kinds = set()
    for seed in range(20):
        out, targets = augmenter.mix(x, torch.eye(6), gen(seed))
        exact = [(out[i] == x[i]) | (out[i] == x[partner(targets, i)[0]]) for i in range(6)]
        kinds.add("cutmix" if all(e.all() for e in exact) else "mixup")
    assert kinds == {"cutmix", "mixup"}


# ---- reproducibility -----------------------------------------------------------------------------------------------

EVERYTHING = {"gain": {"p": 0.8}, "shift": {"p": 0.8}, "noise": {"p": 0.8},
              "background": {"p": 0.8, "folder": str(BACKGROUND), "max_seconds": 3.0}, "spec_time": {"p": 0.8},
              "spec_freq": {"p": 0.8}, "mixup": {"p": 0.5}, "cutmix": {"p": 0.5}}


def run_all(augmenter: Augmenter, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = gen(seed)
    frontend = LogMel(8000, n_mels=32, n_fft=256, hop_length=80)
    spec = augmenter.spec(frontend(augmenter.wave(wave_batch(), generator)), generator)
    return augmenter.mix(spec, torch.eye(10), generator)


def test_same_seed_same_output_different_seed_different() -> None:
    shared_data("background_noise")
    augmenter = Augmenter(EVERYTHING, 8000)
    first = run_all(augmenter, 7)
    again = run_all(Augmenter(EVERYTHING, 8000), 7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(run_all(augmenter, 8)[0], first[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_either_generator() -> None:
    shared_data("background_noise")
    augmenter = Augmenter(EVERYTHING, 8000, "cuda")
    x = wave_batch().cuda()
    for make in (lambda s: torch.Generator("cuda").manual_seed(s), gen):
        out = augmenter.wave(x, make(1))
        assert out.device == x.device and torch.equal(out, augmenter.wave(x, make(1)))
        spec = augmenter.spec(torch.randn(10, 1, 32, 101, device="cuda"), make(1))
        mixed, targets = augmenter.mix(spec, torch.eye(10, device="cuda"), make(1))
        assert mixed.device == x.device and targets.device == x.device


# ---- validation ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,message", [
    ({"noise": {"p": 1.5}}, "'augment.noise.p' must be in [0, 1], got 1.5"),
    ({"gain": {"p": -0.1}}, "'augment.gain.p' must be in [0, 1], got -0.1"),
    ({"noise": {"snr_min": 30.0, "snr_max": 10.0}}, "'augment.noise.snr_min' must be at most snr_max (10.0), got 30.0"),
    ({"gain": {"db": -3.0}}, "'augment.gain.db' must not be negative"),
    ({"shift": {"max_fraction": 1.5}}, "'augment.shift.max_fraction' must be in [0, 1]"),
    ({"spec_time": {"count": -1}}, "'augment.spec_time.count' must not be negative"),
    ({"spec_freq": {"max_fraction": -0.1}}, "'augment.spec_freq.max_fraction' must be in [0, 1]"),
    ({"time_stretch": {"min_rate": 1.5, "max_rate": 1.2}}, "'augment.time_stretch.min_rate' must be at most max_rate"),
    ({"time_stretch": {"min_rate": 0.0}}, "'augment.time_stretch.min_rate' must be at least 0.1"),
    ({"pitch_shift": {"max_semitones": 30.0}}, "'augment.pitch_shift.max_semitones' must be at most 24"),
    ({"mixup": {"alpha": 0.0}}, "'augment.mixup.alpha' must be positive"),
    ({"mixup": {"p": 0.7}, "cutmix": {"p": 0.5}}, "'augment.mixup.p' + 'augment.cutmix.p' must be at most 1"),
    ({"background": {"p": 0.5}}, "'augment.background.folder' is empty"),
])
def test_validate_names_the_key(cfg: dict, message: str) -> None:
    with pytest.raises(UserError) as error:
        validate_augment(cfg, "exp.yaml")
    assert str(error.value).startswith("exp.yaml: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_validate_background_folder(tmp_path: Path) -> None:
    shared_data("background_noise")
    missing, empty, no_audio = tmp_path / "missing", tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    no_audio.mkdir()
    (no_audio / "readme.txt").write_text("not audio")
    for folder, problem in ((missing, "is not a folder"), (empty, "has no audio files"), (no_audio, "has no audio")):
        with pytest.raises(UserError, match=f"'augment.background.folder' '{folder}' {problem}"):
            validate_augment({"background": {"p": 0.2, "folder": str(folder)}}, "exp.yaml")
        validate_augment({"background": {"p": 0.0, "folder": str(folder)}}, "exp.yaml")  # off: not read
    validate_augment({"background": {"p": 0.2, "folder": str(BACKGROUND)}}, "exp.yaml")
    validate_augment(OmegaConf.structured(AugmentConfig), "exp.yaml")


# ---- test-time views -----------------------------------------------------------------------------------------------

def test_tta_views() -> None:
    x = wave_batch()
    assert torch.equal(parse_tta_view("plain")(x), x)
    later, earlier = parse_tta_view("shift:0.1")(x), parse_tta_view("shift:-0.1")(x)
    assert torch.equal(later[:, 800:], x[:, :-800]) and not later[:, :800].any()
    assert torch.equal(earlier[:, :-800], x[:, 800:]) and not earlier[:, -800:].any()
    ratio = parse_tta_view("gain:6")(x) / x
    torch.testing.assert_close(ratio[x != 0], torch.full_like(ratio[x != 0], 10 ** (6 / 20)))
    assert 10 ** (6 / 20) == pytest.approx(2.0, rel=0.003)  # +6 dB doubles the amplitude
    assert torch.equal(parse_tta_view("shift:0.1")(x), later)  # deterministic
    rolled = parse_tta_view("roll:0.1")(x)
    assert torch.equal(rolled, torch.roll(x, 800, dims=-1))  # what falls off the end comes back at the start
    window = parse_tta_view("window:-0.05")
    assert window.move == -0.05 and torch.equal(window(x), x)  # moves the crop in the clip, leaves the samples


@pytest.mark.parametrize("spec,message", [
    ("flip", "TTA view 'flip' is unknown"),
    ("shfit:0.1", "did you mean 'shift'?"),
    ("shift", "must be written shift:<fraction>"),
    ("plain:1", "must be written plain"),
    ("gain:loud", "'loud' is not a finite number"),
    ("gain:inf", "'inf' is not a finite number"),
    ("shift:1.5", "the fraction must be in (-1, 1)"),
])
def test_bad_tta_views(spec: str, message: str) -> None:
    with pytest.raises(UserError) as error:
        parse_tta_view(spec)
    valid = "valid views: plain, window:<fraction>, shift:<fraction>, roll:<fraction>, gain:<db>"
    assert message in str(error.value) and valid in str(error.value)
