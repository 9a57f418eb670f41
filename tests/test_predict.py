"""Predicting named test sets with trained folds and with packed bundles, on the tones contest."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from competition import blend, bundle, compute, pack, predict
from competition.cache import load_split
from competition.config import load_experiment
from competition.data import Source, Split
from competition.train import (Part, Predictor, clip_batches, crop_samples, load_fold_model, predict_together,
                               window_counts)
from conftest import (error_line, run_verb as cli, train_every_fold, write_clip, write_tone, write_tones_data,
                      write_tones_experiment)

VIEWS = {"tta": {"views": ["plain", "gain:-6"]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tones contest with every fold of experiment t trained (two epochs, two TTA views)."""
    root = tmp_path_factory.mktemp("trained")
    write_tones_data(root)
    write_tones_experiment(root, "t", train={"epochs": 2, "lr": 0.015}, **VIEWS)
    rng = np.random.default_rng(1)
    for i, freq in enumerate([300.0, 800.0, 2000.0, 800.0]):  # a second test set, released later
        write_tone(root / "later" / f"late_{i}.wav", freq, rng)
    train_every_fold(root, "t")
    return root


@pytest.fixture
def project(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("submissions", "predictions", "test-*.csv"))
    monkeypatch.chdir(root)
    return root


def test_predict_on_the_configured_test_folder_matches_the_folds_and_blend(project: Path, capsys) -> None:
    code, out, err = cli(capsys, predict, "exps=t", "test=data/test", "name=again", "method=soft+tta")
    assert code == 0, err
    for fold_dir in sorted((project / "experiments" / "t").glob("fold_?")):
        ours, theirs = pd.read_csv(fold_dir / "test-again.csv"), pd.read_csv(fold_dir / "test.csv")
        pd.testing.assert_frame_equal(ours, theirs, atol=2e-6)  # same clips, views and probabilities
    code, _, err = cli(capsys, blend, "exps=t", "method=soft+tta")
    assert code == 0, err
    assert (project / "submissions" / "again-soft+tta.csv").read_text() == \
        (project / "submissions" / "tones-soft+tta.csv").read_text()


def test_a_later_test_set_gets_its_own_files_and_a_valid_answer(project: Path, capsys) -> None:
    code, out, err = cli(capsys, predict, "exps=t", "test=later")
    assert code == 0, err
    code, out, err = cli(capsys, predict, "exps=t", "test=later", "name=later_bf16", "precision=bf16")
    assert code == 0, err
    fp32 = pd.read_csv(project / "experiments" / "t" / "fold_0" / "test-later.csv")
    bf16 = pd.read_csv(project / "experiments" / "t" / "fold_0" / "test-later_bf16.csv")
    np.testing.assert_allclose(bf16[["low", "mid", "high"]], fp32[["low", "mid", "high"]], atol=0.02)
    assert (project / "submissions" / "later_bf16-soft.csv").read_text() == \
        (project / "submissions" / "later-soft.csv").read_text()
    answer = pd.read_csv(project / "submissions" / "later-soft.csv")
    assert list(answer.columns) == ["id", "label"]
    assert sorted(answer["id"]) == [f"late_{i}" for i in range(4)]
    assert set(answer["label"]) <= {"low", "mid", "high"}
    assert (project / "experiments" / "t" / "fold_0" / "test-later.csv").is_file()
    assert (project / "experiments" / "t" / "fold_0" / "test.csv").is_file()  # the configured set's stays


def test_a_bundle_moved_away_from_the_experiments_predicts_the_same_answer(project: Path, tmp_path: Path,
                                                                            capsys, monkeypatch) -> None:
    code, out, err = cli(capsys, predict, "exps=t", "test=later")
    assert code == 0, err
    code, out, err = cli(capsys, pack, "exps=t", "out=bundle.zip")
    assert code == 0, err
    elsewhere = tmp_path / "kaggle"
    elsewhere.mkdir()
    shutil.move(project / "bundle.zip", elsewhere / "bundle.zip")
    shutil.copytree(project / "later", elsewhere / "later")
    shutil.rmtree(project / "experiments")
    shutil.rmtree(project / "data")
    monkeypatch.chdir(elsewhere)
    code, out, err = cli(capsys, predict, "bundle=bundle.zip", "test=later")
    assert code == 0, err
    assert (elsewhere / "submissions" / "later-soft.csv").read_text() == \
        (project / "submissions" / "later-soft.csv").read_text()
    assert sorted(p.name for p in (elsewhere / "predictions" / "later").iterdir()) == \
        ["t-fold_0.csv", "t-fold_1.csv", "t-fold_2.csv"]


def test_pack_measures_the_bundles_speed_per_minute_of_audio(project: Path, capsys, monkeypatch) -> None:
    """Seconds per minute of audio in fp32, and where the CPU has bf16 in hardware (pretended here) the same in bf16
    with the clips whose answer it keeps; nothing is written for the measurement, and speed=false skips it."""
    monkeypatch.setattr(compute, "native_bf16", lambda: True)
    code, out, err = cli(capsys, pack, "exps=t", "out=bundle.zip")
    assert code == 0, err
    fp32, bf16 = out.splitlines()[-2:]
    assert fp32.startswith("speed here (") and "s per minute of audio in fp32" in fp32
    assert float(fp32.split("): ")[1].split(" s per minute")[0]) > 0
    tones = sorted((project / "data" / "train").rglob("*.wav"))  # 72 tones, less than a minute: all of them
    audio = sum(soundfile.info(path).duration for path in tones)
    assert f"3 fold models measured on {audio:.0f} s of training audio" in fp32
    assert bf16.startswith("bf16 (this CPU has it in hardware): ") and f" of {len(tones)} clips: " in bf16
    assert not (project / "predictions").exists()
    code, out, err = cli(capsys, pack, "exps=t", "out=again.zip", "speed=false")
    assert code == 0 and "per minute of audio" not in out


def test_half_precision_bundles_give_the_same_labels(project: Path, capsys) -> None:
    for out, half in (("full", "false"), ("half", "true")):
        code, _, err = cli(capsys, pack, "exps=t", f"out={out}", f"half={half}")
        assert code == 0, err
    size = {out: (project / out / "models" / "t-fold_0.safetensors").stat().st_size for out in ("full", "half")}
    assert size["half"] < 0.6 * size["full"]
    answers = {}
    for out in ("full", "half"):
        code, _, err = cli(capsys, predict, f"bundle={out}", "test=later", f"name=later_{out}")
        assert code == 0, err
        answers[out] = (project / "submissions" / f"later_{out}-soft.csv").read_text()
    assert answers["full"] == answers["half"]


def tamper(project: Path, data: bytes, fix_checksum: bool) -> None:
    """Replace fold 0's weights in the packed folder `bundle`, optionally recording the new file's checksum too."""
    target = project / "bundle" / "models" / "t-fold_0.safetensors"
    target.write_bytes(data)
    if fix_checksum:
        manifest = json.loads((project / "bundle" / "manifest.json").read_text())
        manifest["files"]["models/t-fold_0.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                            "size": len(data)}
        (project / "bundle" / "manifest.json").write_text(json.dumps(manifest))


def test_an_altered_bundle_is_refused(project: Path, capsys) -> None:
    assert cli(capsys, pack, "exps=t", "out=bundle")[0] == 0
    weights = (project / "bundle" / "models" / "t-fold_0.safetensors").read_bytes()
    tamper(project, weights[:-100], fix_checksum=False)  # truncated in transit
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 2 and (f"models/t-fold_0.safetensors is {len(weights) - 100} bytes, not the {len(weights)} "
                          "recorded when it was packed") in error_line(err), err
    tamper(project, weights[:-1] + bytes([weights[-1] ^ 1]), fix_checksum=False)  # one bit flipped, same size
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 2 and "models/t-fold_0.safetensors does not match the checksum" in error_line(err), err


class Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_bundle_holding_a_pickle_never_runs_it(project: Path, capsys) -> None:
    assert cli(capsys, pack, "exps=t", "out=bundle")[0] == 0
    marker = project / "pwned"
    tamper(project, pickle.dumps({"model": Payload(marker)}), fix_checksum=True)  # checksums cannot catch its maker
    code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
    assert code == 2 and "is not a safetensors file" in error_line(err)
    assert not marker.exists()


def test_the_whole_clip_view_is_the_mean_of_its_windows(project: Path) -> None:
    rng = np.random.default_rng(2)
    long = project / "long"
    for i, freq in enumerate([300.0, 2000.0]):  # 2.3 s: several 0.75 s windows
        t = np.arange(int(8000 * 2.3)) / 8000
        write_clip(long / f"long_{i}.wav", (0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t)))
                   .astype(np.float32), 8000)
    exp = load_experiment("t")
    model, frontend = load_fold_model(exp.fold_dir(0) / "model.pt", exp.cfg, torch.device("cpu"))
    split, cache = load_split(Split("test", Source(str(long)), pd.DataFrame(
        {"id": ["long_0", "long_1"], "path": ["long_0.wav", "long_1.wav"]})), exp.cfg, False)
    part = Part(split.clips["id"].to_numpy(), cache, cache.rows(split.clips["path"]), None)
    whole = predict_together([Predictor(model, frontend, exp.cfg, ["whole"])], part, torch.device("cpu"))[0]["whole"]
    window = round(exp.cfg.audio.duration * exp.cfg.audio.sample_rate)
    for i, row in enumerate(part.rows):
        offset, size = cache.clips["offset"].iat[row], cache.clips["length"].iat[row]
        wave = cache.waves[offset:offset + size].astype(np.float32) / 32768
        starts = list(range(0, size - window + 1, window // 2))
        starts += [size - window] if starts[-1] != size - window else []
        assert len(starts) >= 4
        with torch.no_grad():
            by_hand = torch.stack([model(frontend(torch.from_numpy(wave[s:s + window])[None])).softmax(-1)[0]
                                   for s in starts]).mean(0).numpy()
        np.testing.assert_allclose(whole[i], by_hand / by_hand.sum(), atol=1e-5)


@pytest.mark.parametrize("args, expected", [
    (["exps=t", "test=empty"], "empty: no audio files (.flac, .wav)"),
    (["exps=t", "test=later", "method=caruana"], "method=caruana has weights fitted on OOF predictions"),
    (["exps=t"], "test= is missing"),
    (["exps=t", "bundle=b", "test=later"], "give exps=<experiments>"),
    (["exps=t", "test=later", "blend=nothing"], "blend=nothing: cannot read submissions/nothing.json"),
    (["exps=t", "test=later", "data.name=x"], "data.name: predict takes"),
    (["exps=t", "test=later", "tta.views=[plain"], "command-line argument 'tta.views=[plain' cannot be read"),
])
def test_bad_predict_commands_are_one_line(project: Path, capsys, args: list[str], expected: str) -> None:
    (project / "empty").mkdir()
    code, _, err = cli(capsys, predict, *args)
    assert code == 2 and expected in error_line(err), err


def test_unreadable_test_clips_are_named_or_answered_with_the_prior(project: Path, capsys) -> None:
    (project / "later" / "broken.wav").write_bytes(b"RIFF not really a wav")
    code, _, err = cli(capsys, predict, "exps=t", "test=later")
    assert code == 2 and "broken" in error_line(err), err
    assert "set skip_bad_audio=true to leave them out" in error_line(err), err  # the key predict takes
    code, _, err = cli(capsys, predict, "exps=t", "test=later", "skip_bad_audio=true")
    assert code == 0, err
    answer = pd.read_csv(project / "submissions" / "later-soft.csv")
    assert len(answer) == 5 and "broken: unreadable, answered with the training clips' class frequencies" in err


def test_a_bundle_of_another_layout_version_is_refused(project: Path, capsys) -> None:
    assert cli(capsys, pack, "exps=t", "out=bundle")[0] == 0
    manifest = json.loads((project / "bundle" / "manifest.json").read_text())
    for version, shown in ((99, "99"), (str(bundle.VERSION), f'"{bundle.VERSION}"')):  # a string shows as one
        (project / "bundle" / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
        code, _, err = cli(capsys, predict, "bundle=bundle", "test=later")
        assert code == 2 and f"layout version {shown}, this version of competition reads version {bundle.VERSION};" \
            in error_line(err), err


def test_blend_answers_a_test_set_that_predict_named(project: Path, capsys, monkeypatch) -> None:
    (project / "later" / "broken.wav").write_bytes(b"RIFF not really a wav")
    write_tone(project / "later" / "late_hifi.wav", 800.0, np.random.default_rng(3), rate=16000)
    code, _, err = cli(capsys, predict, "exps=t", "test=later", "method=soft+tta", "skip_bad_audio=true")
    assert code == 0, err
    assert "1 of 5 test clips resampled to audio.sample_rate=8000 Hz (1 at 16000 Hz)" in err
    record = json.loads((project / "experiments" / "t" / "test-later.json").read_text())
    assert record["unreadable"] == ["broken"] and len(record["ids"]) == 6 and record["folds"] == [0, 1, 2]
    code, out, err = cli(capsys, blend, "exps=t", "test=later", "method=soft+tta", "name=blended")
    assert code == 0, err
    assert (project / "submissions" / "blended.csv").read_text() == \
        (project / "submissions" / "later-soft+tta.csv").read_text()
    assert "broken: unreadable, answered with the training clips' class frequencies" in err

    write_tone(project / "later" / "late_extra.wav", 300.0, np.random.default_rng(4))  # the set was re-released
    code, _, err = cli(capsys, blend, "exps=t", "test=later", "method=soft", "name=again")
    assert code == 2 and "later changed since t predicted it" in error_line(err), err
    (project / "later" / "late_extra.wav").unlink()
    (project / "experiments" / "t" / "fold_1" / "test-later.csv").unlink()  # as if fold 1 were retrained since
    code, _, err = cli(capsys, blend, "exps=t", "test=later", "method=soft", "name=again")
    assert code == 2 and "fold_1/test-later.csv is missing" in error_line(err), err
    code, _, err = cli(capsys, blend, "exps=t", "test=never", "method=soft", "name=again")
    assert code == 2 and "t has not predicted a test set of that name" in error_line(err), err

    def stopped(*args, **kwargs) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the models' files were rewritten, before the answer and the record

    monkeypatch.setattr(predict, "write_answer", stopped)
    with pytest.raises(KeyboardInterrupt):
        predict.main(["exps=t", "test=later", "tta.views=[plain]", "skip_bad_audio=true", "overwrite=true"])
    assert set(pd.read_csv(project / "experiments" / "t" / "fold_0" / "test-later.csv")["view"]) == {"plain"}
    code, _, err = cli(capsys, blend, "exps=t", "test=later", "method=soft", "name=again")
    assert code == 2 and "t has not predicted a test set of that name" in error_line(err), err


def test_one_pass_equals_each_model_alone(project: Path, capsys) -> None:
    """Models over one pass share log-mels only where their frontends compute the same thing: a frontend with other
    statistics gets its own, and every model's probabilities equal those it gives alone."""
    exp = load_experiment("t", ["frontend.normalize=dataset"])
    cpu = torch.device("cpu")
    split, cache = load_split(Split("test", Source("later"), pd.DataFrame(
        {"id": [f"late_{i}" for i in range(4)], "path": [f"late_{i}.wav" for i in range(4)]})), exp.cfg, False)
    part = Part(split.clips["id"].to_numpy(), cache, cache.rows(split.clips["path"]), None)
    predictors = []
    for fold, tilt in ((0, 0.0), (1, 0.0), (1, 40.0)):
        model, frontend = load_fold_model(exp.fold_dir(fold) / "model.pt", exp.cfg, cpu)
        frontend.band_mean.copy_(torch.linspace(-tilt, tilt, len(frontend.band_mean))[:, None])  # the third's differ
        predictors.append(Predictor(model, frontend, exp.cfg, ["plain", "whole", "gain:-6"]))
    together = predict_together(predictors, part, cpu)
    alone = [predict_together([p], part, cpu)[0] for p in predictors]
    small = load_experiment("t", ["frontend.normalize=dataset", "train.eval_batch_size=3"]).cfg  # batches split clips
    counts = window_counts(part, crop_samples(small))
    assert counts.tolist() == [len(cache.windows(row, crop_samples(small))) for row in part.rows]
    batches = list(clip_batches(part, 3, counts))
    assert np.concatenate(batches).tolist() == list(range(len(part))) and len(batches) > 1
    assert all(len(batch) == 1 or counts[batch].sum() <= 3 for batch in batches)
    in_small_batches = predict_together([Predictor(p.model, p.frontend, small, p.views) for p in predictors], part, cpu)
    for ours, theirs, smaller in zip(together, alone, in_small_batches):
        for view in theirs:
            np.testing.assert_allclose(ours[view], theirs[view], atol=1e-6)
            np.testing.assert_allclose(smaller[view], theirs[view], atol=1e-6)
    assert np.abs(np.log(together[2]["plain"]) - np.log(together[1]["plain"])).max() > 1  # not the second's log-mel
    code, _, err = cli(capsys, predict, "exps=t", "test=later", "name=by_one", "models_per_pass=1")
    assert code == 0, err
    code, _, err = cli(capsys, predict, "exps=t", "test=later")
    assert code == 0, err
    for fold_dir in sorted((project / "experiments" / "t").glob("fold_?")):
        by_one, together = pd.read_csv(fold_dir / "test-by_one.csv"), pd.read_csv(fold_dir / "test-later.csv")
        pd.testing.assert_frame_equal(by_one, together, atol=2e-6)


def test_a_deleted_test_csv_is_refused_before_anything_is_written_and_re_predicting_fixes_it(project: Path,
                                                                                            capsys) -> None:
    code, _, err = cli(capsys, blend, "exps=t", "method=soft", "name=before")
    assert code == 0, err
    (project / "experiments" / "t" / "fold_1" / "test.csv").unlink()
    code, out, err = cli(capsys, blend, "exps=t")
    line = error_line(err)
    assert code == 2 and "experiments/t/fold_1/test.csv missing though data.test is set" in line, err
    assert "written" not in out and not (project / "submissions" / "tones-soft.csv").exists()
    fix = line.split("with python -m competition.predict ")[1].split(", then")[0].split()
    assert fix == ["exps=t", "test=data/test", "name=tones"] and "then blend again adding test=tones" in line
    code, _, err = cli(capsys, predict, *fix)  # the fix it names: no retraining
    assert code == 0, err
    code, _, err = cli(capsys, blend, "exps=t", "method=soft", "test=tones", "name=after")
    assert code == 0, err
    assert (project / "submissions" / "after.csv").read_text() == (project / "submissions" / "before.csv").read_text()
