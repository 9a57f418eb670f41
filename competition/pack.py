"""Pack trained folds into a self-contained bundle for offline inference (a Kaggle notebook without internet).

    python -m competition.pack exps=a,b out=<folder or .zip> [method=soft | blend=<report>] [half=true] [overwrite=true]
    python -m competition.predict bundle=<folder or .zip> test=<folder or zip>     # anywhere, later

A bundle holds each current fold's weights and frontend statistics (safetensors, optionally in half precision), the
config it was trained with, the classes and their prior, the blend method and weights, the answer-file format, and a
manifest with every file's SHA-256. Bundles travel between people, so loading one never runs code from it (safetensors
and JSON only), and a file that does not match its recorded checksum (tampered or truncated) is refused.
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from competition.blend import class_prior, load_members, submission_format
from competition.cli import main_guard, parse_bool
from competition.config import parse_cli
from competition.errors import UserError
from competition.files import atomic_write
from competition.foldrun import timestamp
from competition.predict import PREDICTIONS_DIR, Ensemble, FoldModel, choose, with_views

COMMAND_KEYS = {"exps": "", "out": "", "method": "", "blend": "", "half": "false", "overwrite": "false"}
KIND = "competition-bundle"
VERSION = 1  # bumped when a bundle's layout changes in a way older readers cannot follow
MANIFEST = "manifest.json"


def tensors_bytes(model_state: dict, frontend_state: dict | None, half: bool) -> bytes:
    """One safetensors file: the model's tensors under `model.`, the frontend's statistics under `frontend.`."""
    tensors = {f"model.{k}": (v.half() if half and v.is_floating_point() else v).contiguous().clone()
               for k, v in model_state.items()}
    tensors.update({f"frontend.{k}": v.contiguous().clone() for k, v in (frontend_state or {}).items()})
    return save_tensors(tensors)


def pack(names: list[str], out: Path, method: str, blend_report: str, half: bool, overwrite: bool) -> dict:
    """The named experiments' current folds as a bundle at `out`; returns its manifest."""
    members = load_members(names, fail_on_missing=False, skip_stale=False)
    classes = members[0].folds[0].classes
    method, weights = choose(method, blend_report, [m.name for m in members], len(classes))
    models = []
    for member in members:
        for fold in member.folds:
            checkpoint = torch.load(fold.dir / "model.pt", map_location="cpu", weights_only=True)
            config = OmegaConf.to_container(OmegaConf.load(fold.dir / "config.yaml"))
            models.append((member.name, fold.number, config, checkpoint["model"], checkpoint.get("frontend")))
    return write_bundle(out, models, method, weights, classes, class_prior(members[0].cfg.data.name, classes),
                        OmegaConf.to_container(submission_format(members, [])), half, overwrite)


def write_bundle(out: Path, models: list[tuple[str, int, dict, dict, dict | None]], method: str,
                 weights: dict[str, float], classes: list[str], prior: np.ndarray, answer_format: dict, half: bool,
                 overwrite: bool) -> dict:
    """A bundle from (experiment, fold, training config, model weights, frontend statistics) per model."""
    files: dict[str, bytes] = {}
    entries = []
    for experiment, fold, config, model_state, frontend_state in models:
        name = f"models/{experiment}-fold_{fold}.safetensors"
        files[name] = tensors_bytes(model_state, frontend_state, half)
        entries.append({"experiment": experiment, "fold": fold, "file": name, "config": config})
    manifest = {"kind": KIND, "version": VERSION, "created": timestamp(), "method": method, "weights": weights,
                "classes": classes, "prior": np.asarray(prior, float).tolist(), "answer_format": answer_format,
                "half": half, "models": entries,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass overwrite=true to replace it, or choose another out=")
    if out.suffix == ".zip":
        def write_zip(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
        atomic_write(out, write_zip)
    else:
        work = out.with_name(f".{out.name}.partial")
        shutil.rmtree(work, ignore_errors=True)
        for name, data in files.items():  # the manifest last: a folder without one is not a bundle
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    return manifest


def reader(path: Path) -> Callable[[str], bytes]:
    """Bytes of a file inside a bundle folder or zip (read in place, never extracted)."""
    if path.is_dir():
        def read_dir(name: str) -> bytes:
            try:
                return (path / name).read_bytes()
            except OSError:
                raise UserError(f"bundle {path}: {name} is missing; pack it again") from None
        return read_dir
    if not zipfile.is_zipfile(path):
        raise UserError(f"bundle={path}: not a bundle folder or zip (make one with python -m competition.pack)")
    archive = zipfile.ZipFile(path)

    def read_zip(name: str) -> bytes:
        try:
            return archive.read(name)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"bundle {path}: cannot read {name} ({exc}); pack it again") from None
    return read_zip


def open_bundle(path: Path) -> tuple[dict, Callable[[str], bytes]]:
    """The manifest, checked for kind and version, and a reader that refuses any file not matching its checksum."""
    if not path.exists():
        raise UserError(f"bundle={path}: no such folder or zip")
    read = reader(path)
    try:
        manifest = json.loads(read(MANIFEST))
    except json.JSONDecodeError as exc:
        raise UserError(f"bundle {path}: {MANIFEST} is not JSON ({exc}); pack it again") from None
    if manifest.get("kind") != KIND:
        raise UserError(f"bundle {path}: {MANIFEST} is not a competition bundle's; make one with python -m "
                        "competition.pack")
    if manifest.get("version") != VERSION:
        raise UserError(f"bundle {path} has layout version {manifest.get('version')}, this version of competition "
                        f"reads version {VERSION}; pack it again with this version (or predict with the version that "
                        "packed it)")

    def checked(name: str) -> bytes:
        data = read(name)
        if hashlib.sha256(data).hexdigest() != manifest["files"].get(name):
            raise UserError(f"bundle {path}: {name} does not match the checksum recorded when it was packed "
                            "(altered or truncated); pack it again")
        return data
    return manifest, checked


def from_bundle(path: Path, views: list[str] | None, test: dict, name: str, method: str,
                blend_report: str) -> Ensemble:
    manifest, read = open_bundle(path)
    if blend_report:
        raise UserError(f"blend={blend_report}: a bundle carries its blend's method and weights; give method= to "
                        "combine its models another way")
    classes = manifest["classes"]
    experiments = list(dict.fromkeys(m["experiment"] for m in manifest["models"]))
    chosen, weights = (manifest["method"], manifest["weights"]) if not method else \
        choose(method, "", experiments, len(classes))
    models = []
    for entry in manifest["models"]:
        cfg = with_views(OmegaConf.create(entry["config"]), views, test)
        models.append(FoldModel(entry["experiment"], entry["fold"], cfg, classes, _bundle_state(read, entry["file"]),
                                PREDICTIONS_DIR / name / f"{entry['experiment']}-fold_{entry['fold']}.csv"))
    return Ensemble(models, chosen, weights, OmegaConf.create(manifest["answer_format"]), np.array(manifest["prior"]),
                    {})  # no experiments here: nothing to blend the test set with later


def _bundle_state(read: Callable[[str], bytes], name: str) -> Callable[[], tuple[dict, dict | None]]:
    def state() -> tuple[dict, dict | None]:
        try:
            tensors = load_tensors(read(name))  # safetensors: data only, nothing in it can run
        except (SafetensorError, ValueError) as exc:
            raise UserError(f"{name} is not a safetensors file ({exc}); pack the bundle again") from None
        model = {k[len("model."):]: v.float() if v.dtype == torch.float16 else v
                 for k, v in tensors.items() if k.startswith("model.")}
        frontend = {k[len("frontend."):]: v for k, v in tensors.items() if k.startswith("frontend.")}
        return model, frontend or None
    return state


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    if overrides:
        raise UserError(f"{overrides[0].split('=')[0]}: pack takes exps=, out=, method= or blend=, half= and "
                        "overwrite=")
    if not options["out"]:
        raise UserError("out= is missing: give the bundle's folder or .zip path")
    names = [n.strip() for n in options["exps"].split(",") if n.strip()]
    out = Path(options["out"])
    manifest = pack(names, out, options["method"], options["blend"], parse_bool("half", options["half"]),
                    parse_bool("overwrite", options["overwrite"]))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    experiments = ", ".join(dict.fromkeys(m["experiment"] for m in manifest["models"]))
    print(f"{out}: {len(manifest['models'])} fold models of {experiments}, {manifest['method']}, {size / 1e6:.1f} MB; "
          f"predict anywhere with python -m competition.predict bundle={out} test=<folder>")


if __name__ == "__main__":
    main_guard(main)
