"""Inference speed on the CPU: a 5-fold resnet18 ensemble with 4 TTA views over the demo's test clips.

    python benchmarks/predict_speed.py [--folds 5] [--clips 360] [--repeats 3] [--compile]

Side by side in one run, clips per second of
- the naive loop a competitor writes first: per clip, librosa decodes and makes the log-mel, then one model call per
  fold per view;
- ours: the waveform cache (decoded once, in parallel; its one-off time is printed apart), batched log-mel on the
  device and batched model calls, as `competition.predict` runs them (train.predict_views);
- ours with channels_last memory format, with bf16 autocast on the CPU, and (--compile) with torch.compile;
with, for each variant, how far its predictions are from ours in fp32 (argmax agreement, largest probability
difference). The models are resnet18s with seeded random weights: speed does not depend on training, and agreement on
untrained models (flat, close probabilities) is the harder case for reduced precision.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from contextlib import nullcontext

import numpy as np

from accuracy_fsdd import temporary_project
from common import Stopwatch, exit_cleanly_on_sigterm, hardware_line, log, markdown_table, median, rate

VIEWS = ["plain", "shift:-0.1", "shift:0.1", "gain:-6"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=360, help="test clips (the demo has 360)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (median reported)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on a CPU)")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()

    import librosa
    import torch

    from competition.augment import parse_tta_view
    from competition.cache import load_split
    from competition.config import load_experiment
    from competition.data import index_test
    from competition.frontend import make_frontend
    from competition.models import create_model
    from competition.train import Part, crop_samples, predict_views

    with temporary_project("competition-predict-speed-", keep=False) as root:
        exp = load_experiment("default", [f"tta.views=[{','.join(VIEWS)}]", "data.workers=2",
                                          f"data.cache_dir={root / 'cache'}"])  # a fresh cache: its decoding is timed
        cfg = exp.cfg
        split = index_test(cfg)
        split.clips = split.clips.head(args.clips)
        with Stopwatch() as decoding:
            split, cache = load_split(split, cfg, False)
        part = Part(split.clips["id"].to_numpy(), cache, cache.rows(split.clips["path"]), None)
        paths = [str(Path(split.source.path) / path) for path in split.clips["path"]]
        models = []
        for fold in range(args.folds):
            torch.manual_seed(fold)
            models.append(create_model(cfg, 30, pretrained=False).eval())
        frontend = make_frontend(cfg)
        device = torch.device("cpu")

        def ours(nets: list, context=nullcontext) -> np.ndarray:
            with context():
                return np.stack([np.stack([v for k, v in predict_views(net, frontend, part, cfg, device).items()
                                           if k != "mean"]) for net in nets])

        def naive() -> np.ndarray:
            crop = crop_samples(cfg)
            views = [parse_tta_view(v) for v in VIEWS]
            out = np.zeros((len(models), len(VIEWS), len(paths), 30), np.float32)
            with torch.inference_mode():
                for i, path in enumerate(paths):
                    wave, _ = librosa.load(path, sr=cfg.audio.sample_rate)
                    wave = librosa.util.fix_length(wave[max(0, (len(wave) - crop) // 2):], size=crop)
                    for v, view in enumerate(views):
                        x = view(torch.from_numpy(wave)[None]).numpy()[0]
                        mel = librosa.power_to_db(librosa.feature.melspectrogram(
                            y=x, sr=cfg.audio.sample_rate, n_fft=cfg.frontend.n_fft, hop_length=cfg.frontend.hop_length,
                            n_mels=cfg.frontend.n_mels), top_db=cfg.frontend.top_db)
                        mel = (mel - mel.mean()) / (mel.std() + 1e-6)
                        image = torch.from_numpy(mel)[None, None]
                        for m, net in enumerate(models):
                            out[m, v, i] = net(image).softmax(-1)[0].numpy()
            return out

        variants = {"naive loop: librosa per clip, one call per clip, fold and view": lambda: naive(),
                    "ours: cache + batched log-mel and models (fp32)": lambda: ours(models)}
        channels_last = []
        for net in models:
            copy = create_model(cfg, 30, pretrained=False).eval()
            copy.load_state_dict(net.state_dict())
            channels_last.append(copy.to(memory_format=torch.channels_last))
        variants["ours + channels_last"] = lambda: ours(channels_last)
        variants["ours + bf16 autocast"] = lambda: ours(models, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if args.compile:
            compiled = [torch.compile(net) for net in models]
            with Stopwatch() as compiling:
                ours(compiled)
            log(f"torch.compile: first pass (compiling) {compiling.seconds:.1f}s")
            variants["ours + torch.compile"] = lambda: ours(compiled)
        reference = ours(models)
        rows = []
        naive_rate = None
        for name, run in variants.items():
            seconds, result = [], None
            for _ in range(args.repeats if "naive" not in name else 1):
                with Stopwatch() as watch:
                    result = run()
                seconds.append(watch.seconds)
            clips_per_second = len(paths) / median(seconds)
            naive_rate = naive_rate or clips_per_second
            agree = (result.argmax(-1) == reference.argmax(-1)).mean()
            rows.append([name, rate(clips_per_second), f"{clips_per_second / naive_rate:.1f}x", f"{agree:.4f}",
                         f"{np.abs(result - reference).max():.1e}"])
            log(f"{name}: {clips_per_second:.1f} clips/s")
    print()
    print(f"## CPU inference: {args.folds}-fold resnet18 x {len(VIEWS)} TTA views, {len(paths)} demo test clips")
    print(f"Hardware: {hardware_line('cpu')}; the cache's one-off decoding: {decoding.seconds:.1f}s "
          f"({len(paths) / decoding.seconds:.0f} clips/s)")
    print()
    print(markdown_table(["variant", "clips/s", "vs naive", "argmax agreement with fp32", "largest prob. difference"],
                         rows))


if __name__ == "__main__":
    main()
