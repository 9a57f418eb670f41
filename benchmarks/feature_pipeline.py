"""Throughput of producing training inputs: augmented log-mel batches (B, 1, n_mels, frames), in clips per second.

    python benchmarks/feature_pipeline.py [--clips 2000] [--timed 500] [--repeats 5] [--mels 64,128,224] [--hop-224 72]
    python benchmarks/feature_pipeline.py --smoke   # every contender on 64 clips of a slice of the demo, once

Contenders, each on the same 2,000 one-second 16 kHz clips of the demo's words/train (1,920 clips, the first 80
used twice), batch 32 as in experiments/default:
  ours     the waveform cache (competition.cache, built once into a temporary folder beforehand, not timed) ->
           competition.train.train_batches (shuffled random crops) -> competition.augment.Augmenter with gain,
           shift and noise at p=0.5 -> competition.frontend.LogMel, all batched torch on the CPU
  naive    a torch Dataset doing librosa.load + audiomentations (AddGaussianNoise, Shift, Gain at p=0.5) +
           librosa.feature.melspectrogram + power_to_db + the same per-clip standardisation as ours, per clip,
           through a DataLoader (num_workers 0, then 2; workers start afresh each epoch, as by default)
  PNG      the voice-gender reference solution: librosa.load + melspectrogram + power_to_db per file scaled to
           uint8 and written as a PNG (PIL) once; every epoch the PNGs are read back into a float batch. No
           augmentation at all. Each repeat writes `--timed` PNGs and reads those back; the two rates give the
           one-off write time for N clips (N / write rate) and the 20-epoch equivalent
           (20 N) / (write time + 20 x read time).
Each repeat times every contender on `--timed` clips of a freshly shuffled epoch (epoch set-up, such as starting
DataLoader workers, included), contenders alternating in a rotating order; the table shows medians over repeats,
and ratios are medians of the per-repeat ratios (so background load hits both sides of a ratio alike).
n_fft 1024; hop 160 (101 frames) at 64 and 128 mels; at 224 mels hop 72 (223 frames, the 224-wide image of
experiments/res2next_224) unless --hop-224 160.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import Stopwatch, demo_slice, exit_cleanly_on_sigterm, hardware_line, log, markdown_table, median, rate

import librosa
import numpy as np
import torch
from PIL import Image

SAMPLE_RATE = 16000
BATCH = 32
N_FFT = 1024
EPOCHS_PNG = 20


# ---- ours: the project's own training input path ----------------------------------------------------------------

class Ours:
    name = "ours"

    def __init__(self, cfg, part) -> None:
        from competition.augment import Augmenter
        from competition.frontend import LogMel

        self.cfg, self.part = cfg, part
        self.frontend = LogMel.from_config(cfg)
        self.augmenter = Augmenter(cfg.augment, cfg.audio.sample_rate, "cpu")
        self.generator = torch.Generator("cpu").manual_seed(0)

    def epoch(self, limit: int, seed: int) -> int:
        """The first `limit` clips of one training epoch, exactly as competition.train._train_epoch makes them."""
        from competition.train import train_batches

        done = 0
        for index, wave in train_batches(self.part, self.cfg, np.random.default_rng(seed), None):
            wave = self.augmenter.wave(wave, self.generator)
            x = self.augmenter.spec(self.frontend(wave), self.generator)
            assert x.shape[:3] == (len(index), 1, self.cfg.frontend.n_mels)
            done += len(index)
            if done >= limit:
                break
        return done


# ---- naive: per-item librosa + audiomentations in a Dataset ------------------------------------------------------

class NaiveClips(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], n_mels: int, hop: int) -> None:
        import audiomentations

        self.paths, self.n_mels, self.hop = paths, n_mels, hop
        self.augment = audiomentations.Compose([
            audiomentations.AddGaussianNoise(p=0.5),
            audiomentations.Shift(min_shift=-0.1, max_shift=0.1, rollover=False, p=0.5),
            audiomentations.Gain(min_gain_db=-6.0, max_gain_db=6.0, p=0.5),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        wave, _ = librosa.load(self.paths[i], sr=SAMPLE_RATE, mono=True)
        if len(wave) > SAMPLE_RATE:  # random crop, or pad, to one second
            start = np.random.randint(0, len(wave) - SAMPLE_RATE + 1)
            wave = wave[start:start + SAMPLE_RATE]
        wave = librosa.util.fix_length(wave, size=SAMPLE_RATE)
        wave = self.augment(samples=wave, sample_rate=SAMPLE_RATE)
        mel = librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=self.hop,
                                             n_mels=self.n_mels, pad_mode="constant")
        db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
        db = (db - db.mean()) / (db.std() + 1e-5)
        return torch.from_numpy(db[None].astype(np.float32))


class Naive:
    def __init__(self, paths: list[str], n_mels: int, hop: int, workers: int) -> None:
        self.dataset, self.workers = NaiveClips(paths, n_mels, hop), workers
        self.name = f"naive, {workers} workers"

    def epoch(self, limit: int, seed: int) -> int:
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=BATCH, shuffle=True, num_workers=self.workers,
                                             generator=torch.Generator().manual_seed(seed))
        done = 0
        for x in loader:
            done += len(x)
            if done >= limit:
                break
        del loader
        return done


# ---- PNG: the voice-gender reference solution ---------------------------------------------------------------------

def png_image(path: str, n_mels: int, hop: int) -> np.ndarray:
    wave, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True)
    wave = librosa.util.fix_length(wave, size=SAMPLE_RATE)
    mel = librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=hop, n_mels=n_mels,
                                         pad_mode="constant")
    db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    return np.round((db - db.min()) / max(float(db.max() - db.min()), 1e-6) * 255.0).astype(np.uint8)


class Png:
    """Both halves of the reference pipeline, timed separately: the one-off write and one epoch of reading."""

    name = "PNG"

    def __init__(self, paths: list[str], n_mels: int, hop: int, folder: Path) -> None:
        self.paths, self.n_mels, self.hop, self.folder = paths, n_mels, hop, folder

    def write(self, limit: int, seed: int) -> int:
        """Compute and write `limit` PNGs (files 0..limit-1) from a shuffled choice of the clips."""
        self.folder.mkdir(parents=True, exist_ok=True)
        order = np.random.default_rng(seed).permutation(len(self.paths))[:limit]
        for i, clip in enumerate(order):
            Image.fromarray(png_image(self.paths[clip], self.n_mels, self.hop)).save(self.folder / f"{i}.png")
        return len(order)

    def read(self, limit: int, seed: int) -> int:
        """Read the PNGs just written back into shuffled float batches (B, 1, n_mels, frames)."""
        files = [self.folder / f"{i}.png" for i in range(limit)]
        order = np.random.default_rng(seed).permutation(len(files))
        done = 0
        for start in range(0, len(order), BATCH):
            images = np.stack([np.asarray(Image.open(files[i])) for i in order[start:start + BATCH]])
            x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
            done += len(x)
        return done

    def run(self, limit: int, seed: int) -> dict[str, float]:
        out = {}
        for name, step in (("PNG write", self.write), ("PNG read", self.read)):
            with Stopwatch() as watch:
                n = step(limit, seed)
            out[name] = n / watch.seconds
        return out


def timed_run(contender, limit: int, seed: int) -> dict[str, float]:
    """{row name: clips/s} for one timed pass of a contender."""
    if hasattr(contender, "run"):
        return contender.run(limit, seed)
    with Stopwatch() as watch:
        n = contender.epoch(limit, seed)
    return {contender.name: n / watch.seconds}


# ---- the run -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2000, help="clips in the data set (an epoch)")
    parser.add_argument("--timed", type=int, default=500, help="clips timed per contender and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mels", default="64,128,224")
    parser.add_argument("--hop-224", type=int, default=72, help="hop at 224 mels (72: 223 frames; 160: 101)")
    parser.add_argument("--no-workers", action="store_true", help="skip the naive num_workers=2 row")
    parser.add_argument("--smoke", action="store_true", help="smoke run: 64 mels, 64 clips (the 30 of a slice of the "
                                                              "demo, some twice), 32 timed, 1 repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clips, args.timed, args.repeats, args.mels = 2 * BATCH, BATCH, 1, "64"
    exit_cleanly_on_sigterm()
    torch.manual_seed(0)
    np.random.seed(0)

    from competition.cache import load_split
    from competition.config import load_experiment
    from competition.data import index_train
    from competition.train import Part

    mels = [int(m) for m in args.mels.split(",")]
    hops = {m: (args.hop_224 if m == 224 else 160) for m in mels}
    timed = min(args.timed, args.clips)
    scratch = Path(tempfile.mkdtemp(prefix="competition-feature-pipeline-"))
    started = time.perf_counter()
    try:
        base = [*(demo_slice(scratch) if args.smoke else []), f"data.cache_dir={scratch / 'waveforms'}", "data.test=null",
                f"train.batch_size={BATCH}", "augment.gain.p=0.5", "augment.shift.p=0.5", "augment.noise.p=0.5"]
        cfg = load_experiment("default", base).cfg
        with Stopwatch() as watch:
            split, cache = load_split(index_train(cfg), cfg, skip_bad=False)
        log(f"waveform cache of {len(split.clips)} clips built in {watch.seconds:.1f}s (not timed below)")
        take = np.resize(np.arange(len(split.clips)), args.clips)  # 1,920 demo clips: the first few used twice
        rows = cache.rows(split.clips["path"])[take]
        part = Part(split.clips["id"].to_numpy()[take], cache, rows, np.zeros(len(take), np.int64))
        paths = [str(split.source.path / split.source.subdir / p) for p in split.clips["path"].to_numpy()[take]]

        contenders = {}
        for m in mels:
            cfg_m = load_experiment("default", base + [f"frontend.n_mels={m}", f"frontend.n_fft={N_FFT}",
                                                       f"frontend.hop_length={hops[m]}"]).cfg
            group = [Ours(cfg_m, part), Naive(paths, m, hops[m], 0)]
            group += [] if args.no_workers else [Naive(paths, m, hops[m], 2)]
            group += [Png(paths, m, hops[m], scratch / f"png{m}")]
            contenders[m] = group
            for c in group:  # warm-up: first calls (torch kernels, librosa's caches, imports in workers)
                timed_run(c, 2 * BATCH, seed=12345)
        results = {m: {} for m in mels}
        for r in range(args.repeats):
            for m in mels:
                group = contenders[m]
                for c in group[r % len(group):] + group[:r % len(group)]:  # a rotating order
                    for name, value in timed_run(c, timed, seed=r).items():
                        results[m].setdefault(name, []).append(value)
                        log(f"repeat {r + 1}/{args.repeats} | {m:>3} mels | {name:<17} {value:8.0f} clips/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def png_epochs(m: int, r: int) -> float:
        write, read = results[m]["PNG write"][r], results[m]["PNG read"][r]
        return EPOCHS_PNG / (1.0 / write + EPOCHS_PNG / read)

    def ratio(m: int, numerator, denominator) -> float:
        return median([numerator(m, r) / denominator(m, r) for r in range(args.repeats)])

    def series(name: str):
        return lambda m, r: results[m][name][r]

    total = time.perf_counter() - started
    header = ["clips/s (median of %d)" % args.repeats] + [f"{m} mels" for m in mels]
    naive_names = ["naive, 0 workers"] + ([] if args.no_workers else ["naive, 2 workers"])
    labels = {
        "ours": "ours: waveform cache + batched gain/shift/noise + torch LogMel",
        "naive, 0 workers": "naive Dataset: librosa + audiomentations, num_workers=0",
        "naive, 2 workers": "naive Dataset: librosa + audiomentations, num_workers=2",
        "PNG write": "PNG reference: one-off mel + PNG write (no augmentation)",
        "PNG read": "PNG reference: read PNGs back, per epoch",
    }
    rows = []
    for name in ["ours"] + naive_names + ["PNG write", "PNG read"]:
        rows.append([labels[name]] + [rate(median(results[m][name])) for m in mels])
    rows.append([f"PNG reference: {EPOCHS_PNG}-epoch equivalent (write once + {EPOCHS_PNG} reads)"]
                + [rate(median([png_epochs(m, r) for r in range(args.repeats)])) for m in mels])
    rows.append([f"PNG reference: one-off write time for {args.clips:,} clips"]
                + [f"{args.clips / median(results[m]['PNG write']):.1f} s" for m in mels])
    for name in naive_names:
        rows.append([f"**ratio ours / {name}**"] + [f"**{ratio(m, series('ours'), series(name)):.1f}x**" for m in mels])
    rows.append([f"**ratio ours / PNG {EPOCHS_PNG}-epoch equivalent**"]
                + [f"**{ratio(m, series('ours'), png_epochs):.1f}x**" for m in mels])
    print()
    print(f"## Training-input throughput ({args.clips:,} one-second 16 kHz clips, batch {BATCH}, "
          f"{timed} clips timed per contender and repeat)")
    print()
    print(f"Hardware: {hardware_line('cpu')}")
    print(f"n_fft {N_FFT}; hop " + ", ".join(f"{hops[m]} at {m} mels" for m in mels)
          + "; frames " + ", ".join(str(SAMPLE_RATE // hops[m] + 1) for m in mels)
          + f"; total wall time {total:.0f}s")
    print()
    print(markdown_table(header, rows))
    print()
    goal = ratio(64, series("ours"), series("naive, 0 workers")) if 64 in mels else float("nan")
    print(f"Goal ours >= 3x the naive per-item librosa pipeline at 64 mels: {goal:.1f}x "
          f"({'met' if goal >= 3 else 'NOT met'}).")


if __name__ == "__main__":
    main()
