"""Pack trained folds into a self-contained bundle for offline inference (a Kaggle notebook without internet).

    python -m competition.pack exps=a,b out=<folder or .zip> [method=soft | blend=<report>] [half=true]
                               [missing=fail|skip] [overwrite=true] [speed=false]
    python -m competition.predict bundle=<folder or .zip> test=<folder or zip>     # anywhere, later

A bundle holds each current fold's weights and frontend statistics (safetensors, optionally in half precision), the
config it was trained with, the classes and their prior, the blend method and weights (and stacker), the answer-file
format, and a manifest with every file's size and SHA-256. Every fold of each experiment is packed: a missing one is
refused (missing=skip packs the finished ones, naming those left out). overwrite=true replaces only a bundle, never
another folder or zip.

Then pack measures the bundle's speed on this machine's CPU (speed=false skips it): seconds per minute of audio as
predict runs it, on about a minute of the training clips, and where the CPU computes bf16 in hardware, the same in
bf16 with how many answers it keeps. Code contests limit the hidden test's run time: this says how much fits.

Bundles travel between people, so predict reads one as untrusted input: see competition.bundle.
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from competition.bundle import check_out, from_bundle, write_bundle
from competition.cache import WaveCache, decode, to_int16
from competition.cli import format_seconds, main_guard, parse_bool
from competition.config import BUNDLE_ENCODERS, load_experiment, parse_cli
from competition.ensemble import METHODS, choose, parse_method
from competition.errors import UserError
from competition.data import index_train
from competition.foldrun import fold_list
from competition.members import class_prior, load_members, submission_format
from competition.task import task_of

COMMAND_KEYS = {"exps": "", "out": "", "method": "", "blend": "", "half": "false", "missing": "fail",
                "overwrite": "false", "speed": "true"}
SPEED_AUDIO = 60.0  # seconds of audio the speed measurement predicts (whole clips: at least this much, or all)
SPEED_CLIPS = 200  # and at most this many clips


def pack(names: list[str], out: Path, method: str, blend_report: str, half: bool, overwrite: bool,
         skip_missing: bool = False) -> dict:
    """The named experiments' current folds as a bundle at `out`; returns its manifest. An experiment with a fold
    missing is refused unless `skip_missing`: a bundle has no report beside it that would say it is short of a fold."""
    check_out(out, overwrite)  # before loading any fold: a refusal costs nothing
    members = load_members(names, fail_on_missing=False, skip_stale=False)
    lacking = {member.name: member.left_out for member in members if member.left_out}
    if lacking and not skip_missing:
        listing = "; ".join(f"{name}: {', '.join(notes)}" for name, notes in lacking.items())
        finish = " and ".join(f"python -m competition.run exp={name} fold=all" for name in lacking)
        raise UserError(f"{listing}; a bundle should hold every fold: finish them with {finish}, or pass "
                        "missing=skip to pack the finished folds only")
    for member in members:
        if member.left_out:
            print(f"warning: {member.name}: packing folds {fold_list([f.number for f in member.folds])}; "
                  f"{', '.join(member.left_out)}, left out (missing=skip)", file=sys.stderr)
    classes = members[0].folds[0].classes
    task = task_of(members[0].cfg)
    method, weights, stacker = choose(method, blend_report, [m.name for m in members], len(classes), task.multilabel)
    models = []
    for member in members:
        if member.cfg.frontend.kind == "encoder" and member.cfg.frontend.encoder not in BUNDLE_ENCODERS:
            raise UserError(f"{member.name}: frontend.encoder={member.cfg.frontend.encoder} is a transformers model, "
                            f"which a bundle cannot carry yet (only {', '.join(BUNDLE_ENCODERS)}, whose weights come "
                            "in their wheels); predict with exps= on a machine that has the model")
    import torch  # the arguments and the folds are checked: the work starts

    for member in members:
        for fold in member.folds:
            checkpoint = torch.load(fold.dir / "model.pt", map_location="cpu", weights_only=True)
            config = OmegaConf.to_container(OmegaConf.load(fold.dir / "config.yaml"))
            models.append((member.name, fold.number, config, checkpoint["model"], checkpoint.get("frontend")))
    prior = class_prior(members[0].cfg.data.name, classes, task)
    return write_bundle(out, models, method, weights, stacker, classes, prior,
                        OmegaConf.to_container(submission_format(members, [])), half, overwrite)


def measure_speed(out: Path, cfg: DictConfig) -> list[str]:
    """How long the bundle takes on this machine's CPU per minute of audio, as predict runs it (decoding, then every
    fold model through its views in one pass), on the first training clips of `cfg`'s data (at least SPEED_AUDIO
    seconds, or all of them): in fp32 and, where the CPU has bf16 in hardware, in bf16 with how many clips keep their
    answer. Code contests limit the hidden test's run time; this says how much audio fits."""
    import torch

    from competition.compute import native_bf16
    from competition.inference import run_models
    from competition.train import Part, answer_part

    split = index_train(cfg)
    ensemble = from_bundle(out, None, {"path": str(split.source.path), "subdir": split.source.subdir}, "speed", "", "")
    decoded, decoding = {}, 0.0
    for rate in sorted({model.cfg.audio.sample_rate for model in ensemble.models}):
        started, waves = time.perf_counter(), []
        for rel in split.clips["path"][:SPEED_CLIPS]:
            waves.append(to_int16(decode(split.source.read(rel), rate)[0]))
            if sum(map(len, waves)) >= SPEED_AUDIO * rate:
                break
        decoding += time.perf_counter() - started
        lengths = np.array([len(wave) for wave in waves])
        clips = pd.DataFrame({"path": split.clips["path"][:len(waves)], "length": lengths,
                              "offset": np.concatenate([[0], np.cumsum(lengths)[:-1]])})
        cache = WaveCache(out, clips, pd.DataFrame(columns=["path", "error"]), np.concatenate(waves), "")
        ids = np.array([f"clip_{i}" for i in range(len(waves))])
        model_cfg = next(m.cfg for m in ensemble.models if m.cfg.audio.sample_rate == rate)
        decoded[rate] = (pd.DataFrame({"id": ids}), answer_part(Part(ids, cache, np.arange(len(waves)), None),
                                                                model_cfg), [])
        minutes = lengths.sum() / rate / 60
    cpu = torch.device("cpu")
    timed = {}
    for precision in ("fp32", "bf16") if native_bf16() else ("fp32",):
        started = time.perf_counter()
        preds = run_models(ensemble, decoded, cpu, precision, 0, write=False)
        mean = np.mean([view for pred in preds for view in pred.views.values()], axis=0)
        timed[precision] = (decoding + time.perf_counter() - started) / minutes, mean
    per_minute, fp32 = timed["fp32"]
    lines = [f"speed here (CPU, torch threads: {torch.get_num_threads()}): {per_minute:.1f} s per minute of audio in fp32, "
             f"decoding and {len(ensemble.models)} fold models measured on {minutes * 60:.0f} s of training audio; an "
             f"hour of test audio would take about {format_seconds(per_minute * 60)}"]
    if "bf16" in timed:
        faster, bf16 = timed["bf16"]
        kept = int((bf16.argmax(-1) == fp32.argmax(-1)).sum())
        advice = "predict with precision=bf16" if kept == len(fp32) and faster < per_minute else "keep fp32"
        lines.append(f"bf16 (this CPU has it in hardware): {faster:.1f} s per minute of audio, the same top class on "
                     f"{kept} of {len(fp32)} clips: {advice}")
    return lines


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    if overrides:
        raise UserError(f"{overrides[0].split('=')[0]}: pack takes exps=, out=, method= or blend=, half=, missing= "
                        "and overwrite=")
    if not options["out"]:
        raise UserError("out= is missing: give the bundle's folder or .zip path")
    if options["missing"] not in ("fail", "skip"):
        raise UserError(f"missing={options['missing']}: expected fail (refuse an experiment short of a fold) or skip "
                        "(pack its finished folds, naming the others)")
    half, overwrite = parse_bool("half", options["half"]), parse_bool("overwrite", options["overwrite"])
    speed = parse_bool("speed", options["speed"])
    if options["method"]:
        parse_method(options["method"])
    names = [n.strip() for n in options["exps"].split(",") if n.strip()]
    out = Path(options["out"])
    manifest = pack(names, out, options["method"], options["blend"], half, overwrite, options["missing"] == "skip")
    if METHODS[parse_method(manifest["method"])[0]].across_clips:
        print(f"warning: method={manifest['method']} ranks each model's scores across the clips predicted together, "
              "so a clip's label from this bundle depends on the other clips in its test set: predict the whole test "
              "set in one call, or pack with method=soft", file=sys.stderr)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    folds: dict[str, list[int]] = {}
    for model in manifest["models"]:
        folds.setdefault(model["experiment"], []).append(model["fold"])
    packed = "; ".join(f"{name} folds {fold_list(numbers)}" for name, numbers in folds.items())
    print(f"{out}: {len(manifest['models'])} fold models ({packed}), {manifest['method']}, {size / 1e6:.1f} MB; "
          f"predict anywhere with python -m competition.predict bundle={out} test=<folder>")
    if speed:
        for line in measure_speed(out, load_experiment(names[0]).cfg):
            print(line)


if __name__ == "__main__":
    main_guard(main)
