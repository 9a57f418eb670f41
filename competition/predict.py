"""Predict any test set with trained folds (or a bundle made by `competition.pack`) and write the answer file.

    python -m competition.predict exps=a,b test=<folder or zip> [name=<test set name>] [test.subdir=test]
                                  [tta.views=[plain,whole]] [method=soft+tta | blend=<report>] [device=auto|cpu|cuda]
                                  [precision=fp32|bf16] [models_per_pass=0] [skip_bad_audio=true] [overwrite=true]
    python -m competition.predict bundle=<folder or .zip> test=<folder or zip> ...

Every current finished fold of each experiment (stale ones are refused, as by blend) predicts the test clips through
the TTA views it was trained with (or `tta.views=`); the models are combined by `method=` (soft by default; +tta
averages each model's views first) with equal weights per experiment, or by the method and weights (or stacker) a
blend fitted on OOF and recorded in its report (`blend=<name>` reads submissions/<name>.json). Written: the answer file
submissions/<name>-<method>.<ext> in the contest's format, and each model's probabilities, named after the test set
(`name=`, by default the test folder's name) so that several test sets coexist: fold_<k>/test-<name>.csv in the
experiment folder, or predictions/<name>/<exp>-fold_<k>.csv from a bundle. With exps=, the test set is recorded
last in experiments/<exp>/test-<name>.json (its source, clips, unreadable clips and decoded content), so that
`competition.blend test=<name>` can blend it with weights fitted on OOF.

Test clips are decoded once into the waveform cache (in parallel, at each model's sample rate); all fold models go
over them in one pass of batches (models_per_pass=N holds N at a time instead), sharing each batch's crops, views and,
where their frontends match, log-mels. Unreadable clips stop the command with their list, or with skip_bad_audio=true
get the class prior of the training clips, said per clip. method=rank ranks each model's scores across the clips
predicted together, so a clip's answer depends on the others in the set: predict says so (predict the whole test set
in one call). A bundle is untrusted input (see competition.pack): names in it that would reach a path are refused
unless plain, and its test clips are cached where this machine caches them ($COMPETITION_CACHE), whatever the config
it carries says. precision=bf16 runs the models under bf16 autocast on the CPU: 1.3-1.8x faster on CPUs with bf16
instructions (benchmarks/predict_speed.py), probabilities within about 1e-4 of fp32 (on CUDA, train.amp decides).
"""

from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd
from omegaconf import OmegaConf

from competition.cache import load_split
from competition.cli import main_guard, parse_bool
from competition.config import parse_cli, parse_value
from competition.data import examples, index_test
from competition.ensemble import (METHODS, Ensemble, FoldModel, answered, choose, combine_models, parse_method,
                                  with_views)
from competition.errors import UserError
from competition.files import atomic_write_text
from competition.leaderboard import log_answer
from competition.members import class_prior, load_members, submission_format
from competition.predictions import test_record
from competition.submission import SUBMISSIONS_DIR, answer_cells, answer_path, smoothed, write_answer
from competition.task import task_of

if TYPE_CHECKING:
    import torch

    from competition.train import Part

COMMAND_KEYS = {"exps": "", "bundle": "", "test": "", "name": "", "method": "", "blend": "", "device": "auto",
                "precision": "fp32", "overwrite": "false", "skip_bad_audio": "false", "models_per_pass": "0"}
PRECISIONS = ("fp32", "bf16")  # precision=: bf16 autocast on the CPU (on CUDA the configs' train.amp decides)


def from_experiments(names: list[str], views: list[str] | None, test: dict, name: str, method: str,
                     blend_report: str) -> Ensemble:
    """The experiments' current finished folds (stale ones refused, as blend refuses them) and their combination."""
    members = load_members(names, fail_on_missing=False, skip_stale=False)
    classes = members[0].folds[0].classes
    models = []
    for member in members:
        for fold in member.folds:
            trained = OmegaConf.load(fold.dir / "config.yaml")
            models.append(FoldModel(member.name, fold.number, with_views(trained, views, test), classes,
                                    _checkpoint_state(fold.dir / "model.pt"), fold.dir / f"test-{name}.csv"))
    multilabel = task_of(members[0].cfg).multilabel
    method, weights, stacker = choose(method, blend_report, [m.name for m in members], len(classes), multilabel)
    records = {member.name: test_record(member.name, name) for member in members}
    return Ensemble(models, method, weights, stacker, submission_format(members, []),
                    class_prior(members[0].cfg.data.name, classes, task_of(members[0].cfg)), records)


def _checkpoint_state(path: Path) -> Callable[[], tuple[dict, dict | None]]:
    def state() -> tuple[dict, dict | None]:
        import torch

        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: never runs code
        return checkpoint["model"], checkpoint.get("frontend")
    return state


def split_overrides(overrides: list[str]) -> tuple[dict, list[str] | None]:
    """test.<key>=value (the test source: subdir, extensions...) and tta.views=[...]; nothing else applies here."""
    test, views = {}, None
    for item in overrides:
        key = item.partition("=")[0]
        parsed = parse_value(item)  # plain Python, recorded as JSON; an unreadable value names the argument
        if key == "tta.views":
            views = [str(view) for view in parsed] if isinstance(parsed, list) else [str(parsed)]
        elif key.startswith("test.") and key.count(".") == 1 and key[5:] not in ("path", "layout"):
            test[key[5:]] = parsed
        else:
            raise UserError(f"{key}: predict takes exps= or bundle=, test=, name=, method= or blend=, device=, "
                            "test.<source key> (e.g. test.subdir=test) and tta.views=[...]")
    return test, views


def decode_test(models: list[FoldModel], skip_bad: bool) -> dict[int, tuple[pd.DataFrame, Part, list[str]]]:
    """The test clips decoded once per sample rate the models need: the clips, the Part to predict, and the ids of
    clips that could not be read (left out with skip_bad_audio=true)."""
    from competition.train import Part, answer_part

    decoded = {}
    for model in models:
        rate = model.cfg.audio.sample_rate
        if rate in decoded:
            continue
        split = index_test(model.cfg)  # a folder without audio is refused there, with the extensions looked for
        everything = split.clips
        split, cache = load_split(split, model.cfg, skip_bad, skip_key="skip_bad_audio")
        bad = sorted(set(everything["id"]) - set(split.clips["id"]))
        if bad and model.cfg.submission.window:
            raise UserError(f"{examples(bad)}: unreadable, so their windows (submission.window="
                            f"{model.cfg.submission.window:g}) cannot be counted or answered; repair or remove them")
        part = Part(split.clips["id"].to_numpy(), cache, cache.rows(split.clips["path"]), None)
        decoded[rate] = (everything, answer_part(part, model.cfg), bad)
    return decoded


def predict(ensemble: Ensemble, name: str, test: dict, *, device: torch.device, precision: str = "fp32",
            skip_bad: bool = False, overwrite: bool = False, models_per_pass: int = 0) -> Path:
    """The answer file for test set `name` (and each model's predictions and the set's record): what main runs."""
    from competition.inference import run_models

    method, tta = parse_method(ensemble.method)
    label = ensemble.method
    path = answer_path(f"{name}-{label}", ensemble.answer_format)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=true to replace it, or give another name=")
    decoded = decode_test(ensemble.models, skip_bad)
    everything, part, bad = next(iter(decoded.values()))
    if METHODS[method].across_clips:
        print(f"warning: method={label} ranks each model's scores across the {len(everything)} clips of test set "
              f"{name}, so a clip's label depends on which other clips are predicted with it: predict the whole test "
              "set in one call (a part of it, or a few clips more, changes answers), or use method=soft",
              file=sys.stderr)
    for record in ensemble.records.values():  # written again last: a run stopped half-way leaves no record to trust
        record.unlink(missing_ok=True)
    preds = run_models(ensemble, decoded, device, precision, models_per_pass)
    combined = combine_models(preds, [m.title for m in ensemble.models], [m.experiment for m in ensemble.models],
                              ensemble.weights, method, tta, f"test set {name}", ensemble.stacker,
                              task_of(ensemble.models[0].cfg).multilabel)
    classes = ensemble.models[0].classes
    ids, probs = answered(combined, bad, lambda: ensemble.prior)
    SUBMISSIONS_DIR.mkdir(parents=True, exist_ok=True)
    task, fmt = task_of(ensemble.models[0].cfg), ensemble.answer_format
    cells = answer_cells(smoothed(ids, probs, fmt), classes, fmt, task)
    write_answer(path, ids, cells, [*part.ids, *bad], classes, fmt, task)
    record_test_set(ensemble, decoded, test)
    log_answer(path, None, list(dict.fromkeys(m.experiment for m in ensemble.models)),
               ensemble.models[0].cfg.train.metric, None, None)  # scores on clips without labels: none
    return path


def record_test_set(ensemble: Ensemble, decoded: dict, test: dict) -> None:
    """What each experiment's test-<name>.csv files were predicted on, written after them: what blend test=<name>
    checks its clips and freshness against."""
    for experiment, path in ensemble.records.items():
        model = next(m for m in ensemble.models if m.experiment == experiment)
        everything, part, bad = decoded[model.cfg.audio.sample_rate]
        atomic_write_text(path, json.dumps({"source": test, "ids": everything["id"].tolist(), "unreadable": bad,
                                            "fingerprint": part.cache.fingerprint,
                                            "folds": [m.fold for m in ensemble.models if m.experiment == experiment],
                                            "views": list(model.cfg.tta.views)}, indent=1) + "\n")


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    test_keys, views = split_overrides(overrides)
    if not options["test"]:
        raise UserError("test= is missing: give the folder or zip of test clips to predict")
    if bool(options["exps"]) == bool(options["bundle"]):
        raise UserError("give exps=<experiments> (trained folds here) or bundle=<folder or zip> (from "
                        "competition.pack), one of them")
    test = {"path": options["test"], **test_keys}
    name = options["name"] or Path(options["test"].rstrip("/")).stem
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"name={name}: give the test set a plain name (it names the prediction and answer files)")
    if options["precision"] not in PRECISIONS:
        raise UserError(f"precision={options['precision']}: choose fp32 or bf16 (bf16 autocast on the CPU: faster "
                        "where the processor has AMX or AVX512-BF16, probabilities within about 1e-4)")
    skip_bad = parse_bool("skip_bad_audio", options["skip_bad_audio"])
    overwrite = parse_bool("overwrite", options["overwrite"])
    models_per_pass = options["models_per_pass"]
    if not models_per_pass.isdigit():
        raise UserError(f"models_per_pass={models_per_pass}: give how many fold models share one pass over the test "
                        "clips (0: all of them, the default; fewer holds fewer models in memory at once)")
    models_per_pass = int(models_per_pass)
    if options["method"]:
        parse_method(options["method"])
    # The arguments are checked: the work starts, and with it the imports of torch, timm and librosa.
    from competition.bundle import from_bundle
    from competition.train import resolve_device

    device = resolve_device(options["device"])
    if options["bundle"]:
        ensemble = from_bundle(Path(options["bundle"]), views, test, name, options["method"], options["blend"])
    else:
        names = [n.strip() for n in options["exps"].split(",") if n.strip()]
        ensemble = from_experiments(names, views, test, name, options["method"], options["blend"])
    path = predict(ensemble, name, test, device=device, precision=options["precision"], skip_bad=skip_bad,
                   overwrite=overwrite, models_per_pass=models_per_pass)
    experiments = ", ".join(dict.fromkeys(m.experiment for m in ensemble.models))
    print(f"{len(ensemble.models)} fold models of {experiments}, {ensemble.method}: answer file {path}; each model's "
          f"probabilities beside it, e.g. {ensemble.models[0].out}")


if __name__ == "__main__":
    main_guard(main)
