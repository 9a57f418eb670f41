"""Inference speed on the CPU: a 5-fold resnet18 ensemble with 4 TTA views over the demo's test clips.

    python benchmarks/predict_speed.py [--folds 5] [--repeats 3] [--compile]
    python benchmarks/predict_speed.py --smoke    # every variant once: 2 resnet10t folds, 2 clips of the demo

Side by side in one run, clips per second of
- the naive loop a competitor writes first: per clip, librosa decodes and makes the log-mel, then one model call per
  fold per view;
- ours, model by model: the waveform cache (decoded once, in parallel; its one-off time is printed apart), batched
  log-mel and batched model calls, one fold model after the other;
- ours in one pass (train.predict_together, as `competition.predict` runs it): every fold model over each batch, one
  log-mel per view for all of them;
- the one pass with channels_last memory format, bf16 autocast, both (what predict's precision=bf16 runs),
  TorchScript (traced and frozen), ONNX Runtime and OpenVINO (each when installed; OpenVINO also in bf16 where the
  CPU has bf16 in hardware) and, with --compile, torch.compile;
- the whole pack-and-predict path: the models written as a bundle (competition.pack's format), then
  `python -m competition.predict bundle=... test=...` run as a user runs it (loading, predicting, writing files);
with, for each variant, how far its predictions are from the model-by-model fp32 ones (argmax agreement, largest
probability difference). The models are resnet18s with seeded random weights: speed does not depend on training, and
agreement on untrained models (flat, close probabilities) is the harder case for reduced precision.
"""
from __future__ import annotations

import argparse
import io
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from accuracy_fsdd import temporary_project
from common import (TINY_CNN, Stopwatch, cores, demo_slice, exit_cleanly_on_sigterm, hardware_line, log,
                    markdown_table, median, rate)

from competition.cache import environment

VIEWS = ["plain", "shift:-0.1", "shift:0.1", "gain:-6"]


def onnx_model(net, example):
    """The network exported to ONNX and run by ONNX Runtime on the CPU, behind the nn.Module call predict makes."""
    import importlib.util

    import onnxruntime
    import torch

    if importlib.util.find_spec("onnx") is None:  # torch.onnx.export needs it, and says so only once it has traced
        raise ImportError("No module named 'onnx'")
    buffer = io.BytesIO()
    torch.onnx.export(net, (example,), buffer, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cores()
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    class OnnxRuntime(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(session.run(None, {"x": x.float().numpy()})[0])

    return OnnxRuntime()


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 in hardware here (AVX512-BF16, AMX), where its bf16 hint means bf16."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_model(net, example, precision: str = "f32"):
    """The network converted by OpenVINO straight from torch (its PyTorch frontend: no ONNX step, no onnx package) and
    compiled for the CPU at `precision` ("f32" or "bf16", the plugin's inference precision), behind the nn.Module call
    predict makes. The batch axis stays dynamic (the last batch is smaller), the others are fixed by the example."""
    import openvino
    import torch

    core = openvino.Core()
    converted = openvino.convert_model(net, example_input=example,
                                       input=[openvino.PartialShape([-1, *example.shape[1:]])])
    compiled = core.compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": cores(),
                                                     "INFERENCE_PRECISION_HINT": precision})

    class OpenVino(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(compiled({0: np.ascontiguousarray(x.float().numpy())})[0])

    return OpenVino()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over the variants (medians reported)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on a CPU)")
    parser.add_argument("--smoke", action="store_true", help="smoke run: 2 folds of resnet10t on 32 mels, 1 repeat, "
                                                              "2 test clips of the demo")
    args = parser.parse_args(argv)
    if args.smoke:
        args.folds, args.repeats = 2, 1
    exit_cleanly_on_sigterm()

    import librosa
    import pandas as pd
    import torch
    from omegaconf import OmegaConf

    from competition import predict as predict_command
    from competition.views import parse_tta_view
    from competition.cache import load_split
    from competition.config import SubmissionConfig, load_experiment
    from competition.data import index_test, index_train
    from competition.frontend import make_frontend
    from competition.models import create_model
    from competition.pack import write_bundle
    from competition.train import Part, Predictor, crop_samples, predict_together, predict_views

    with temporary_project("competition-predict-speed-", keep=False) as root:
        smoke = [*demo_slice(root, test_clips=2), *TINY_CNN] if args.smoke else []
        exp = load_experiment("default", [*smoke, f"tta.views=[{','.join(VIEWS)}]", "data.workers=2",
                                          f"data.cache_dir={root / 'cache'}"])  # a fresh cache: its decoding is timed
        cfg = exp.cfg
        split = index_test(cfg)  # every test clip: the pack-and-predict variant predicts the whole folder
        with Stopwatch() as decoding:
            split, cache = load_split(split, cfg, False)
        part = Part(split.clips["id"].to_numpy(), cache, cache.rows(split.clips["path"]), None)
        paths = [str(Path(split.source.path) / path) for path in split.clips["path"]]
        classes = sorted(index_train(cfg).clips["label"].unique())
        models = []
        for fold in range(args.folds):
            torch.manual_seed(fold)
            models.append(create_model(cfg, len(classes), pretrained=False).eval())
        frontend = make_frontend(cfg)
        device = torch.device("cpu")

        def one_pass(nets: list, context=nullcontext) -> np.ndarray:
            with context():
                results = predict_together([Predictor(net, frontend, cfg, VIEWS) for net in nets], part, device)
            return np.stack([np.stack([views[v] for v in VIEWS]) for views in results])

        def model_by_model() -> np.ndarray:
            return np.stack([np.stack([v for k, v in predict_views(net, frontend, part, cfg, device).items()
                                       if k != "mean"]) for net in models])

        def naive() -> np.ndarray:
            crop = crop_samples(cfg)
            views = [parse_tta_view(v) for v in VIEWS]
            out = np.zeros((len(models), len(VIEWS), len(paths), len(classes)), np.float32)
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

        bundle = root / "bundle.zip"
        write_bundle(bundle, [("speed", fold, OmegaConf.to_container(cfg), net.state_dict(), None)
                              for fold, net in enumerate(models)], "soft", {"speed": 1.0}, None, classes,
                     np.full(len(classes), 1 / len(classes)),
                     OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(SubmissionConfig), cfg.submission)),
                     half=False, overwrite=True)
        test_args = [f"test={split.source.path}", "name=speed", "overwrite=true", "device=cpu"]
        # predict caches the test clips under $COMPETITION_CACHE, keyed by their folder: a smoke run's slice is a new
        # folder each time, so its cache goes into the project root rather than ~/.cache
        predict_env = {"COMPETITION_CACHE": str(root / "cache")} if args.smoke else {}

        def pack_and_predict() -> np.ndarray:
            with environment(predict_env):
                predict_command.main([f"bundle={bundle}", *test_args])
            out = []
            for fold in range(len(models)):
                frame = pd.read_csv(root / "predictions" / "speed" / f"speed-fold_{fold}.csv", dtype={"id": str})
                frame = frame.set_index(["view", "id"])
                out.append(np.stack([frame.loc[v].loc[part.ids, classes].to_numpy(np.float32) for v in VIEWS]))
            return np.stack(out)

        example = frontend(torch.from_numpy(cache.crops(part.rows[:2], crop_samples(cfg))))
        variants = {"naive loop: librosa per clip, one call per clip, fold and view": naive,
                    "ours, model by model: cache + batched log-mel and model calls (fp32)": model_by_model,
                    "ours, one pass: every fold model over each batch (fp32)": lambda: one_pass(models)}
        channels_last = []
        for net in models:
            copy = create_model(cfg, len(classes), pretrained=False).eval()
            copy.load_state_dict(net.state_dict())
            channels_last.append(copy.to(memory_format=torch.channels_last))
        variants["one pass + channels_last"] = lambda: one_pass(channels_last)
        def bf16() -> torch.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)

        variants["one pass + bf16 autocast"] = lambda: one_pass(models, bf16)
        variants["one pass + channels_last + bf16 (predict precision=bf16)"] = lambda: one_pass(channels_last, bf16)
        with torch.inference_mode():
            scripted = [torch.jit.freeze(torch.jit.trace(net, example)) for net in models]
        variants["one pass + TorchScript (traced, frozen)"] = lambda: one_pass(scripted)
        try:
            runtimes = [onnx_model(net, example) for net in models]
            variants["one pass + ONNX Runtime"] = lambda: one_pass(runtimes)
        except ImportError as exc:
            log(f"ONNX Runtime not timed: {exc} (pip install onnxruntime onnx)")
        try:
            engines = [openvino_model(net, example) for net in models]
            variants["one pass + OpenVINO"] = lambda: one_pass(engines)
            if openvino_bf16():
                with Stopwatch() as converting:  # what predict would pay once per run before the first clip
                    engines_bf16 = [openvino_model(net, example, "bf16") for net in models]
                log(f"OpenVINO bf16: converting and compiling took {converting.seconds / len(models):.1f} s per fold "
                    "model")
                variants["one pass + OpenVINO bf16"] = lambda: one_pass(engines_bf16)
            else:
                log("OpenVINO bf16 not timed: the CPU has no bf16 in hardware (OPTIMIZATION_CAPABILITIES)")
        except ImportError as exc:
            log(f"OpenVINO not timed: {exc} (pip install openvino)")
        if args.compile:
            compiled = [torch.compile(net, dynamic=True) for net in models]
            with Stopwatch() as compiling:
                one_pass(compiled)
            log(f"torch.compile: first pass (compiling) {compiling.seconds:.1f}s")
            variants["one pass + torch.compile"] = lambda: one_pass(compiled)
        variants["pack-and-predict: bundle.zip -> competition.predict (end to end)"] = pack_and_predict
        reference = model_by_model()
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        results = {}
        for repeat in range(args.repeats):  # round-robin, so that a change in the machine's speed hits every variant
            for name, run in variants.items():
                if "naive" in name and repeat:
                    continue  # one pass of the naive loop takes minutes and varies little
                with Stopwatch() as watch:
                    results[name] = run()
                seconds[name].append(watch.seconds)
                log(f"{name}: {len(paths) / watch.seconds:.1f} clips/s")
        rows = []
        naive_rate = len(paths) / median(seconds[next(iter(variants))])
        for name in variants:
            clips_per_second = len(paths) / median(seconds[name])
            agree = (results[name].argmax(-1) == reference.argmax(-1)).mean()
            rows.append([name, rate(clips_per_second), f"{clips_per_second / naive_rate:.1f}x", f"{agree:.4f}",
                         f"{np.abs(results[name] - reference).max():.1e}"])
    print()
    print(f"## CPU inference: {args.folds}-fold {cfg.model.name} x {len(VIEWS)} TTA views, {len(paths)} demo test "
          "clips")
    print(f"Hardware: {hardware_line('cpu')}; the cache's one-off decoding: {decoding.seconds:.1f}s "
          f"({len(paths) / decoding.seconds:.0f} clips/s)")
    print()
    print(markdown_table(["variant", "clips/s", "vs naive", "argmax agreement with fp32", "largest prob. difference"],
                         rows))


if __name__ == "__main__":
    main()
