"""A bundle is untrusted input: what its manifest names never reaches a path outside the working directory, its files
are read only up to the sizes it records (so memory stays bounded), a malformed manifest is one line, and `pack`
replaces only a bundle. Real bundles packed from a trained tones fold, then edited as a stranger could."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tracemalloc
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from competition import bundle, pack, predict
from competition.config import load_experiment
from competition.train import train_fold
from conftest import error_line, run_verb as cli, write_tone, write_tones_data, write_tones_experiment, zip_folder

MODEL = "models/t-fold_0.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tones contest with fold 0 of experiment t trained (one epoch; folds 1 and 2 never are), a later test set
    of four clips, and `bundle`, the fold packed with missing=skip."""
    root = tmp_path_factory.mktemp("one_fold")
    write_tones_data(root)
    write_tones_experiment(root, "t", train={"epochs": 1})
    rng = np.random.default_rng(1)
    for i, freq in enumerate([300.0, 800.0, 2000.0, 800.0]):
        write_tone(root / "later" / f"late_{i}.wav", freq, rng)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train_fold(load_experiment("t"), 0, "cpu")
        pack.pack(["t"], Path("bundle"), "", "", half=False, overwrite=False, skip_missing=True)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def project(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of it as the working directory, three folders below the test's folder so that a path climbing out of
    it still lands where `outside` sees it; the local waveform cache inside it."""
    root = tmp_path / "a" / "b" / "project"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("cache"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("COMPETITION_CACHE", str(root / "local-cache"))
    return root


def outside(project: Path) -> list[str]:
    """Every path in the test's folder that is not in the working directory."""
    top = project.parents[2]
    return sorted(str(p.relative_to(top)) for p in top.rglob("*") if p != project and project not in p.parents)


def edit_manifest(folder: Path, change: Callable[[dict], object]) -> None:
    """Change the manifest as a stranger could; the files' checksums stay valid (the manifest has none of its own)."""
    path = folder / bundle.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rename_experiment(manifest: dict, name: str) -> None:
    """Fold 0's experiment under another name, its weight too, as a bundle that was packed so would have it."""
    manifest["weights"][name] = manifest["weights"].pop(manifest["models"][0]["experiment"])
    manifest["models"][0]["experiment"] = name


def rename_file(manifest: dict, name: str) -> None:
    """Fold 0's weights listed under another name, as though the bundle held them there."""
    manifest["files"][name] = manifest["files"].pop(MODEL)
    manifest["models"][0]["file"] = name


@pytest.mark.parametrize("change, key", [
    (lambda m, top: m["answer_format"].update(extension="csv/../../../../elsewhere/x"), "answer_format.extension"),
    (lambda m, top: rename_experiment(m, "../../x"), "models[0].experiment"),
    (lambda m, top: rename_experiment(m, "../../../x"), "models[0].experiment"),
    (lambda m, top: rename_experiment(m, str(top / "abs" / "x")), "models[0].experiment"),
    (lambda m, top: m["models"][0]["config"]["data"].update(name="../../x", cache_dir=str(top / "a" / "b" / "c")),
     "models[0].config.data.name"),
    (lambda m, top: rename_file(m, "models/../../../x.safetensors"), 'files key "models/../../../x.safetensors"'),
])
def test_a_name_from_a_bundle_never_reaches_outside_the_working_directory(project: Path, capsys, change,
                                                                          key: str) -> None:
    before = outside(project)
    if "x.safetensors" in key:  # the weights, moved where the manifest now says they are
        shutil.copy(project / "bundle" / MODEL, project.parent / "x.safetensors")
        before = outside(project)
    edit_manifest(project / "bundle", lambda m: change(m, project.parents[2]))
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 2 and f"manifest.json {key}" in error_line(err), err
    assert outside(project) == before
    assert not (project / "submissions").exists() and not (project / "predictions").exists()


def test_a_bundle_never_chooses_where_the_test_clips_are_cached(project: Path, capsys) -> None:
    elsewhere = project.parents[2] / "a" / "cache-the-bundle-named"

    def point_away(manifest: dict) -> None:
        for model in manifest["models"]:
            model["config"]["data"].update(cache_dir=str(elsewhere), workers=64)

    edit_manifest(project / "bundle", point_away)
    before = outside(project)
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 0, err
    assert outside(project) == before and not elsewhere.exists()
    assert list((project / "local-cache" / "waveforms").glob("tones-test-*/COMPLETE"))  # $COMPETITION_CACHE's
    assert (project / "submissions" / "later-soft.csv").is_file()


def peak_bytes(run: Callable[[], object]) -> int:
    """The most memory Python held at once while `run` ran (bytes objects included: reading a file whole shows)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_file_bigger_than_recorded_is_refused_without_reading_it(project: Path, capsys) -> None:
    recorded = (project / "bundle" / MODEL).stat().st_size
    with open(project / "bundle" / MODEL, "ab") as handle:
        handle.truncate(64 * 2**20)  # sparse: 64 MB on paper, nothing on disk
    outcome = {}
    peak = peak_bytes(lambda: outcome.update(run=cli(capsys, predict, "bundle=bundle", "test=later")))
    code, _, err = outcome["run"]
    assert code == 2 and f"{MODEL} is {64 * 2**20} bytes, not the {recorded} recorded" in error_line(err), err
    assert peak < 8 * 2**20

    (project / "bundle" / MODEL).write_bytes(os.urandom(4 * 2**20))  # the zip case: a member of 4 MB
    zip_folder(project / "bundle", project / "bundle.zip")
    peak = peak_bytes(lambda: outcome.update(run=cli(capsys, predict, "bundle=bundle.zip", "test=later")))
    code, _, err = outcome["run"]
    assert code == 2 and f"{MODEL} is {4 * 2**20} bytes, not the {recorded} recorded" in error_line(err), err
    assert peak < 2 * 2**20


def test_the_reader_never_reads_more_than_the_recorded_size_and_one(project: Path) -> None:
    """However big a file is, a read stops one byte past what the manifest allows, and the checksum covers what was
    read: a file that grew after the sizes were checked is still caught, at a bounded cost."""
    (project / "bundle" / "grown").write_bytes(b"x" * 3 * 2**20)
    data, digest = bundle.Store(project / "bundle").read("grown", 1000)
    assert len(data) == 1001 and digest == hashlib.sha256(b"x" * 1001).hexdigest()


@pytest.mark.parametrize("as_zip", [False, True])
def test_an_oversized_manifest_is_refused_before_it_is_read(project: Path, capsys, as_zip: bool) -> None:
    size = 20 * 2**20
    if as_zip:  # 20 MB of whitespace, which is valid JSON around the manifest, in a zip of 20 kB
        manifest = (project / "bundle" / bundle.MANIFEST).read_text()
        with zipfile.ZipFile(project / "bundle.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(bundle.MANIFEST, manifest + " " * (size - len(manifest)))
            archive.write(project / "bundle" / MODEL, MODEL)
        del manifest
        given = "bundle.zip"
    else:
        with open(project / "bundle" / bundle.MANIFEST, "ab") as handle:
            handle.truncate(size)  # sparse
        given = "bundle"
    outcome = {}
    peak = peak_bytes(lambda: outcome.update(run=cli(capsys, predict, f"bundle={given}", "test=later")))
    code, _, err = outcome["run"]
    assert code == 2 and f"manifest.json is {size} bytes, over the {bundle.MANIFEST_LIMIT} bytes" in error_line(err), err
    assert peak < 4 * 2**20


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.pop("files"), "manifest.json files is missing"),
    (lambda m: m["files"].update({MODEL: "0" * 64}), f"manifest.json files.{MODEL} is not an object"),
    (lambda m: m["files"][MODEL].update(size="1 MB"), f"manifest.json files.{MODEL}.size is \"1 MB\", not a number"),
    (lambda m: m.update(models={"t": 0}), "manifest.json models is {\"t\": 0}, not a list"),
    (lambda m: m["models"][0].update(fold="0"), "manifest.json models[0].fold is \"0\", not a fold number"),
    (lambda m: m["models"][0].update(file="models/other.safetensors"), "models[0].file \"models/other.safetensors\" "
                                                                       "is not listed under files"),
    (lambda m: m["models"][0].pop("config"), "manifest.json models[0].config is missing"),
    (lambda m: m["models"][0]["config"]["audio"].update(sample_rate="fast"),
     "manifest.json models[0].config is not a valid config"),
    (lambda m: m.update(classes="low"), "manifest.json classes is \"low\", not a list"),
    (lambda m: m.update(prior=[1.0]), "manifest.json prior is not 3 numbers"),
    (lambda m: m.update(method="best"), "manifest.json method \"best\" is not a method"),
    (lambda m: m.update(weights={}), "manifest.json weights has no weight for t"),
    (lambda m: m["answer_format"].update(header="maybe"), "manifest.json answer_format is not an answer format"),
    (lambda m: m["answer_format"].update(smooth=5), "manifest.json answer_format.smooth: 'submission.smooth' is each "
                                                    "neighbouring window's weight, from 0 to 1/3, got 5"),
    (lambda m: m["models"][0]["config"]["submission"].update(window=1e-6),  # millions of windows a minute
     "manifest.json models[0].config.submission.window: 'submission.window' is the answer window in seconds, 0"),
    (lambda m: m.update(half="no"), "manifest.json half is \"no\", not true or false"),
    (lambda m: m.update(method="stack"), "manifest.json stacker is not a network"),
    (lambda m: m.update(method="stack", stacker={"layers": [{"weight": [[0, 0, 0]] * 6, "bias": [0, 0, 0]}],
                                                 "classes": [0, 1, 2]}),
     "manifest.json stacker layers[0] does not take 3 inputs"),
    (lambda m: m.update(method="stack", stacker={"layers": [{"weight": [[0, 0]] * 3, "bias": [0, 0]}],
                                                 "classes": [0, 7]}),
     "manifest.json stacker classes is not a list of distinct class indices below 3"),
    (lambda m: m.update(method="stack", stacker={"layers": [{"weight": [["x"]] * 3, "bias": [0]}], "classes": [0]}),
     "manifest.json stacker layers[0] is not {weight: rows of numbers, bias: numbers}"),
])
def test_a_malformed_manifest_is_one_line_naming_the_key(project: Path, capsys, change, expected: str) -> None:
    edit_manifest(project / "bundle", change)
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 2 and expected in error_line(err), err


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_a_manifest_nested_past_the_recursion_limit_is_one_line(project: Path, capsys) -> None:
    edit_manifest(project / "bundle", lambda m: m["models"][0]["config"].update(extra=nested(900)))
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 2 and "manifest.json models[0].config is not a valid config" in error_line(err), err
    (project / "bundle" / bundle.MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 2 and "manifest.json is not JSON that can be read" in error_line(err), err


def test_pack_replaces_only_a_bundle(project: Path, capsys) -> None:
    (project / "notes").mkdir()
    (project / "notes" / "ideas.md").write_text("try a wider model\n")
    with zipfile.ZipFile(project / "photos.zip", "w") as archive:
        archive.writestr("cat.jpg", b"not really")
    for out in ("notes", "experiments", "photos.zip"):
        code, _, err = cli(capsys, pack, "exps=t", f"out={out}", "missing=skip", "overwrite=true")
        assert code == 2 and f"out={out} exists and is not a bundle" in error_line(err), err
    assert (project / "notes" / "ideas.md").read_text() == "try a wider model\n"
    assert (project / "experiments" / "t" / "fold_0" / "model.pt").is_file()
    assert zipfile.ZipFile(project / "photos.zip").namelist() == ["cat.jpg"]
    assert cli(capsys, pack, "exps=t", "out=bundle.zip", "missing=skip")[0] == 0
    for out in ("bundle", "bundle.zip"):  # a bundle is replaced, folder or zip
        code, _, err = cli(capsys, pack, "exps=t", f"out={out}", "missing=skip", "overwrite=true")
        assert code == 0, err
        manifest = bundle.open_bundle(project / out)[0]
        assert manifest["version"] == bundle.VERSION and manifest["files"][MODEL]["size"] > 0


def test_pack_names_the_folds_it_packs_and_refuses_missing_ones_unless_told(project: Path, capsys) -> None:
    code, _, err = cli(capsys, pack, "exps=t", "out=partial")
    assert code == 2 and "t: fold 1 missing, fold 2 missing; a bundle should hold every fold" in error_line(err), err
    assert "missing=skip" in error_line(err) and not (project / "partial").exists()
    code, out, err = cli(capsys, pack, "exps=t", "out=partial", "missing=skip")
    assert code == 0, err
    assert "warning: t: packing folds 0; fold 1 missing, fold 2 missing, left out (missing=skip)" in err
    assert "1 fold models (t folds 0)" in out


def test_rank_answers_say_that_they_depend_on_the_other_clips(project: Path, capsys) -> None:
    code, _, err = cli(capsys, pack, "exps=t", "out=ranked", "method=rank", "missing=skip")
    assert code == 0 and "warning: method=rank ranks each model's scores across the clips predicted together" in err
    code, _, err = cli(capsys, predict, "bundle=ranked", "test=later")
    assert code == 0, err
    assert "warning: method=rank ranks each model's scores across the 4 clips of test set later" in err
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later", "name=soft")
    assert code == 0 and "ranks each model's scores" not in err
