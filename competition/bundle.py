"""The bundle format: trained fold models packed for offline inference, and read back as untrusted input.

A bundle holds each fold's weights and frontend statistics (safetensors, optionally in half precision), the config it
was trained with, the classes and their prior, the blend method and weights (and stacker), the answer-file format, and a
manifest with every file's size and SHA-256. competition.pack writes one; competition.predict bundle=... reads one.

Bundles travel between people, so a bundle is untrusted input: loading one never runs code from it (safetensors and
JSON only); every name it gives that reaches a path (experiment, file, data.name, the answer's extension) must be a
plain name, and where the decoded test clips are cached is this machine's choice, not the bundle's, so predicting
never writes outside the working directory and the local cache; the manifest is read only up to 16 MB, each file only
if its size is the one recorded, and its checksum is computed while it is read, so a file that does not match
(tampered or truncated) is refused without being read whole.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from competition.config import BUNDLE_ENCODERS, SubmissionConfig, check_submission
from competition.ensemble import METHODS, TTA, Ensemble, FoldModel, choose, network_problem, with_views
from competition.errors import UserError
from competition.files import atomic_write
from competition.foldrun import timestamp

PREDICTIONS_DIR = Path("predictions")  # where a bundle's models write their predictions: it has no experiments here
KIND = "competition-bundle"
VERSION = 2  # bumped when a bundle's layout changes in a way older readers cannot follow (2: each file's size)
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 * 2**20  # bytes; a manifest of a hundred fold models is well under 1 MB
CHUNK = 2**20  # bytes read (and hashed) at a time


def tensors_bytes(model_state: dict, frontend_state: dict | None, half: bool) -> bytes:
    """One safetensors file: the model's tensors under `model.`, the frontend's statistics under `frontend.`."""
    from safetensors.torch import save as save_tensors  # torch: imported once there are tensors, not to check paths

    tensors = {f"model.{k}": (v.half() if half and v.is_floating_point() else v).contiguous().clone()
               for k, v in model_state.items()}
    tensors.update({f"frontend.{k}": v.contiguous().clone() for k, v in (frontend_state or {}).items()})
    return save_tensors(tensors)


def check_out(out: Path, overwrite: bool) -> None:
    """`out` may be written: it does not exist, or it is a bundle and overwrite=true. Anything else there (a folder
    of notes, out=experiments, another zip) is never replaced."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise UserError(f"{out} exists; pass overwrite=true to replace it, or choose another out=")
    try:
        manifest = read_manifest(Store(out))
    except UserError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise UserError(f"out={out} exists and is not a bundle (no {MANIFEST} of a competition bundle in it): "
                        "overwrite=true replaces only a bundle; choose another out=")


def write_bundle(out: Path, models: list[tuple[str, int, dict, dict, dict | None]], method: str,
                 weights: dict[str, float], stacker: dict | None, classes: list[str], prior: np.ndarray,
                 answer_format: dict, half: bool,
                 overwrite: bool) -> dict:
    """A bundle from (experiment, fold, training config, model weights, frontend statistics) per model."""
    files: dict[str, bytes] = {}
    entries = []
    for experiment, fold, config, model_state, frontend_state in models:
        name = f"models/{experiment}-fold_{fold}.safetensors"
        files[name] = tensors_bytes(model_state, frontend_state, half)
        entries.append({"experiment": experiment, "fold": fold, "file": name, "config": config})
    manifest = {"kind": KIND, "version": VERSION, "created": timestamp(), "method": method, "weights": weights,
                "stacker": stacker,
                "classes": classes, "prior": np.asarray(prior, float).tolist(), "answer_format": answer_format,
                "half": half, "models": entries,
                "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                          for name, data in files.items()}}
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    check_out(out, overwrite)
    if out.suffix == ".zip":
        def write_zip(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
        if out.is_dir():  # a bundle folder named like a zip, checked above
            shutil.rmtree(out)
        atomic_write(out, write_zip)
    else:
        work = out.with_name(f".{out.name}.partial")
        shutil.rmtree(work, ignore_errors=True)
        for name, data in files.items():  # the manifest last: a folder without one is not a bundle
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():  # a bundle zip, checked above
            out.unlink()
        work.rename(out)
    return manifest


class Store:
    """A bundle folder or zip, read in place (never extracted): each file's size as the folder or the zip's
    directory declares it, and its bytes read in chunks up to a cap."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.archive = None
        if path.is_dir():
            return
        if not zipfile.is_zipfile(path):
            raise UserError(f"bundle={path}: not a bundle folder or zip (make one with python -m competition.pack)")
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"bundle={path}: cannot open the zip ({exc}); pack it again") from None

    def size(self, name: str) -> int | None:
        """The declared size of `name` (a plain relative path), or None if the bundle has no such file."""
        if self.archive is None:
            target = self.path / name
            return target.stat().st_size if target.is_file() else None
        try:
            return self.archive.getinfo(name).file_size
        except KeyError:
            return None

    def read(self, name: str, cap: int) -> tuple[bytes, str]:
        """At most `cap` + 1 bytes of `name` (one more than allowed shows that it is longer, without reading it all)
        and their SHA-256, computed chunk by chunk as they are read."""
        digest, chunks, total = hashlib.sha256(), [], 0
        try:
            with (open(self.path / name, "rb") if self.archive is None else self.archive.open(name)) as handle:
                while total <= cap:
                    chunk = handle.read(min(CHUNK, cap + 1 - total))
                    if not chunk:
                        break
                    digest.update(chunk)
                    chunks.append(chunk)
                    total += len(chunk)
        except (KeyError, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                zlib.error) as exc:
            raise UserError(f"bundle {self.path}: cannot read {name} ({exc}); pack it again") from None
        return b"".join(chunks), digest.hexdigest()


def read_manifest(store: Store) -> object:
    """The manifest's JSON, its size checked before it is read."""
    size = store.size(MANIFEST)
    if size is None:
        raise UserError(f"bundle {store.path}: no {MANIFEST}, so not a bundle; make one with python -m "
                        "competition.pack")
    if size > MANIFEST_LIMIT:
        raise UserError(f"bundle {store.path}: {MANIFEST} is {size} bytes, over the {MANIFEST_LIMIT} bytes a "
                        "bundle's manifest may take; pack it again")
    data, _ = store.read(MANIFEST, MANIFEST_LIMIT)
    if len(data) > MANIFEST_LIMIT:
        raise UserError(f"bundle {store.path}: {MANIFEST} is over the {MANIFEST_LIMIT} bytes a bundle's manifest may "
                        "take; pack it again")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # nested past the recursion limit
        raise UserError(f"bundle {store.path}: {MANIFEST} is not JSON that can be read ({exc}); pack it "
                        "again") from None


def plain_name(value: object) -> bool:
    """Whether a name from a bundle can be one file name here: a string without a path separator and not '.' or
    '..', so that it can neither be absolute nor climb out of the folder it is put in."""
    return isinstance(value, str) and value not in ("", ".", "..") and not any(c in value for c in "/\\\0")


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that true and false are not numbers here."""
    return isinstance(value, kind) and (not isinstance(value, bool) or kind is bool)


def check_manifest(manifest: object, path: Path) -> dict:
    """The manifest, its kind and layout version checked first and then every field predict uses, so that a
    malformed one is one line naming the key rather than a traceback later, and a name that would reach a path
    (experiment, file, data.name, answer_format.extension) is plain."""
    def bad(key: str, what: str) -> UserError:
        return UserError(f"bundle {path}: {MANIFEST} {key} {what}; pack it again")

    def need(container: dict, key: str, kind: type | tuple[type, ...], name: str, what: str) -> object:
        if not _is(container.get(key), kind):
            raise bad(name, f"is {json.dumps(container.get(key))[:60]}, not {what}" if key in container
                      else f"is missing ({what})")
        return container[key]

    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise UserError(f"bundle {path}: {MANIFEST} is not a competition bundle's; make one with python -m "
                        "competition.pack")
    if manifest.get("version") != VERSION or not _is(manifest.get("version"), int):
        raise UserError(f"bundle {path} has layout version {json.dumps(manifest.get('version'))}, this version of "
                        f"competition reads version {VERSION}; pack it again with this version (or predict with the "
                        "version that packed it)")
    files = need(manifest, "files", dict, "files", "an object of file name -> {sha256, size}")
    for name, entry in files.items():
        if not all(plain_name(part) for part in name.split("/")):
            raise bad(f"files key {json.dumps(name)}", "is not a plain relative path (no \\, . or .. parts)")
        if not isinstance(entry, dict):
            raise bad(f"files.{name}", "is not an object {sha256, size}")
        need(entry, "sha256", str, f"files.{name}.sha256", "a hex digest")
        if need(entry, "size", int, f"files.{name}.size", "a number of bytes") < 0:
            raise bad(f"files.{name}.size", "is negative")
    classes = need(manifest, "classes", list, "classes", "a list of class names")
    if not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "is not a list of class names")
    prior = need(manifest, "prior", list, "prior", "a list of numbers")
    if len(prior) != len(classes) or not all(_is(p, (int, float)) for p in prior):
        raise bad("prior", f"is not {len(classes)} numbers, one per class")
    method = need(manifest, "method", str, "method", "a method name")
    if method.removesuffix(TTA) not in METHODS:
        raise bad("method", f"{json.dumps(method)} is not a method ({', '.join(METHODS)}, each optionally {TTA})")
    weights = need(manifest, "weights", dict, "weights", "an object of experiment -> weight")
    if not all(_is(w, (int, float)) for w in weights.values()):
        raise bad("weights", "holds a value that is not a number")
    need(manifest, "half", bool, "half", "true or false")
    answer_format = need(manifest, "answer_format", dict, "answer_format", "the answer file's format")
    try:
        OmegaConf.merge(OmegaConf.structured(SubmissionConfig), answer_format)
    except OmegaConfBaseException as exc:
        raise bad("answer_format", f"is not an answer format ({str(exc).splitlines()[0]})") from None
    if not plain_name(answer_format.get("extension", "csv")):
        raise bad("answer_format.extension", f"{json.dumps(answer_format.get('extension'))} is not a plain file "
                  "extension (no /, \\ or ..)")
    models = need(manifest, "models", list, "models", "a list of fold models")
    if not models:
        raise bad("models", "is empty")
    for i, entry in enumerate(models):
        key = f"models[{i}]"
        if not isinstance(entry, dict):
            raise bad(key, "is not an object {experiment, fold, file, config}")
        experiment = need(entry, "experiment", str, f"{key}.experiment", "an experiment name")
        if not plain_name(experiment):
            raise bad(f"{key}.experiment", f"{json.dumps(experiment)} is not a plain name (no /, \\ or ..)")
        if need(entry, "fold", int, f"{key}.fold", "a fold number") < 0:
            raise bad(f"{key}.fold", "is negative")
        if need(entry, "file", str, f"{key}.file", "a file name") not in files:
            raise bad(f"{key}.file", f"{json.dumps(entry['file'])} is not listed under files")
        config = need(entry, "config", dict, f"{key}.config", "the config it was trained with")
        data = config.get("data")
        data_name = data.get("name", "") if isinstance(data, dict) else ""
        if data_name and not plain_name(data_name):
            raise bad(f"{key}.config.data.name", f"{json.dumps(data_name)} is not a plain name (no /, \\ or ..)")
        if experiment not in weights:
            raise bad("weights", f"has no weight for {experiment}")
    if METHODS[method.removesuffix(TTA)].stacks:
        packed = {entry["experiment"] for entry in models}
        if set(weights) != packed:
            raise bad("weights", f"does not name exactly the packed experiments ({', '.join(sorted(packed))}), in the "
                      "order its stacker takes them")
        problem = network_problem(manifest.get("stacker"), len(weights) * len(classes), len(classes))
        if problem:
            raise bad("stacker", problem)
    return manifest


def open_bundle(path: Path) -> tuple[dict, Callable[[str], bytes]]:
    """The manifest, checked (shape, kind, version, and every file's size against the one recorded, before any file
    is read), and a reader that reads no more than a file's recorded size and refuses one not matching its
    checksum."""
    if not path.exists():
        raise UserError(f"bundle={path}: no such folder or zip")
    store = Store(path)
    manifest = check_manifest(read_manifest(store), path)
    for name, entry in manifest["files"].items():
        size = store.size(name)
        if size is None:
            raise UserError(f"bundle {path}: {name} is missing; pack it again")
        if size != entry["size"]:
            raise UserError(f"bundle {path}: {name} is {size} bytes, not the {entry['size']} recorded when it was "
                            "packed (altered or truncated); pack it again")

    def checked(name: str) -> bytes:
        entry = manifest["files"][name]
        data, digest = store.read(name, entry["size"])
        if len(data) != entry["size"] or digest != entry["sha256"]:
            raise UserError(f"bundle {path}: {name} does not match the checksum recorded when it was packed "
                            "(altered or truncated); pack it again")
        return data
    return manifest, checked


def _multilabel(manifest: dict) -> bool:
    """Whether the bundle's models answer a multi-label contest (their configs' data.task)."""
    data = manifest["models"][0]["config"].get("data")
    return isinstance(data, dict) and data.get("task") == "multilabel"


def from_bundle(path: Path, views: list[str] | None, test: dict, name: str, method: str,
                blend_report: str) -> Ensemble:
    """The bundle's fold models, each config on the schema with the test source of the command line and the local
    cache location and decoding workers (a bundle never chooses where this machine writes)."""
    manifest, read = open_bundle(path)
    if blend_report:
        raise UserError(f"blend={blend_report}: a bundle carries its blend's method and weights; give method= to "
                        "combine its models another way")
    classes = manifest["classes"]
    experiments = list(dict.fromkeys(m["experiment"] for m in manifest["models"]))
    chosen, weights, stacker = (manifest["method"], manifest["weights"], manifest.get("stacker")) if not method \
        else choose(method, "", experiments, len(classes), _multilabel(manifest))
    models = []
    for i, entry in enumerate(manifest["models"]):
        try:
            cfg = with_views(OmegaConf.create(entry["config"]), views, test)
        except (OmegaConfBaseException, RecursionError) as exc:
            raise UserError(f"bundle {path}: {MANIFEST} models[{i}].config is not a valid config "
                            f"({str(exc).splitlines()[0]}); pack it again") from None
        if cfg.frontend.kind == "encoder" and cfg.frontend.encoder not in BUNDLE_ENCODERS:
            raise UserError(f"bundle {path}: {MANIFEST} models[{i}].config.frontend.encoder is "
                            f"'{cfg.frontend.encoder}', but a bundle may name only the encoders shipped in wheels "
                            f"({', '.join(BUNDLE_ENCODERS)}); predict with exps= where that model is, or pack it again")
        check_submission(cfg.submission, lambda key: f"bundle {path}: {MANIFEST} models[{i}].config.submission.{key}")
        cfg.data.cache_dir = ""  # the local default ($COMPETITION_CACHE), whatever the packer's machine used
        cfg.data.workers = 0
        models.append(FoldModel(entry["experiment"], entry["fold"], cfg, classes, _bundle_state(read, entry["file"]),
                                PREDICTIONS_DIR / name / f"{entry['experiment']}-fold_{entry['fold']}.csv"))
    try:
        answer_format = OmegaConf.merge(OmegaConf.structured(SubmissionConfig), manifest["answer_format"])
    except OmegaConfBaseException as exc:
        raise UserError(f"bundle {path}: {MANIFEST} answer_format is not an answer format "
                        f"({str(exc).splitlines()[0]}); pack it again") from None
    check_submission(answer_format, lambda key: f"bundle {path}: {MANIFEST} answer_format.{key}")
    # no experiments here (records {}): nothing to blend the test set with later
    return Ensemble(models, chosen, weights, stacker, answer_format, np.array(manifest["prior"]), {})


def _bundle_state(read: Callable[[str], bytes], name: str) -> Callable[[], tuple[dict, dict | None]]:
    def state() -> tuple[dict, dict | None]:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load as load_tensors

        try:
            tensors = load_tensors(read(name))  # safetensors: data only, nothing in it can run
        except (SafetensorError, ValueError) as exc:
            raise UserError(f"{name} is not a safetensors file ({exc}); pack the bundle again") from None
        model = {k[len("model."):]: v.float() if v.dtype == torch.float16 else v
                 for k, v in tensors.items() if k.startswith("model.")}
        frontend = {k[len("frontend."):]: v for k, v in tensors.items() if k.startswith("frontend.")}
        return model, frontend or None
    return state
