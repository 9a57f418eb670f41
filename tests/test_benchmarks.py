"""Every benchmark script keeps working: each one's --smoke run is a test, tiny and in this process; without a GPU the
plain GPU check says so in one line."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def benchmark(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


def test_gpu_check_runs_every_check_on_the_cpu_in_smoke_mode(capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch):
    lines = smoke("gpu_check", capsys, monkeypatch)
    for check in ("train", "queue", "tune", "predict", "overhead"):
        assert any(line.split()[:2] == ["ok", check] for line in lines), (check, lines)
    assert "pinned to CUDA_VISIBLE_DEVICES {0: '0', 1: '1'}" in "\n".join(lines)  # one job per pretended GPU
    assert lines[-1] == "gpu_check: 5 passed, 0 failed"


def test_gpu_check_without_a_gpu_says_so_in_one_line():
    result = benchmark("gpu_check.py", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("gpu_check: no CUDA GPU is visible here")


def test_multilabel_digits_smoke_runs(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """The plain and SED heads trained, predicted, blended and scored on a tiny mixed-digit contest."""
    shared_data("fsdd", "recordings")
    shared_data("background_noise")
    lines = smoke("multilabel_digits", capsys, monkeypatch)
    assert any(line.startswith("| head | OOF lwlrap | test clips lwlrap |") for line in lines), lines
    for row in ("| plain (model.head=plain) |", "| sed (model.head=sed) |", "| soft blend of both |"):
        assert any(line.startswith(row) for line in lines), (row, lines)
    assert lines[-1].startswith("Conclusion: ")


def outputs() -> dict[str, int]:
    """What a benchmark could leave in the repository: every file under the folders outputs go to, and the top-level
    names, with their modification times."""
    found = {path.name: 0 for path in REPO.iterdir()}
    for folder in ("benchmarks/results", "experiments", "folds", "submissions"):
        found.update({str(path): path.stat().st_mtime_ns for path in (REPO / folder).rglob("*") if path.is_file()})
    return found


def smoke(name: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """benchmarks/<name>.py --smoke, its main run in this process from the repository root as a user runs it (a
    subprocess would spend about 8 s importing torch and the toolkit): the lines it printed. It must leave the
    repository's outputs, the working directory, the environment and torch's threads as it found them."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import common and each other
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    files, environment, threads = outputs(), dict(os.environ), torch.get_num_threads()
    module.main(["--smoke"])  # the signal handlers it sets are put back after the test (conftest)
    assert outputs() == files
    changed = {k for k in set(environment) | set(os.environ) if environment.get(k) != os.environ.get(k)}
    # torch's compile cache settings, set on first use, scikit-learn's OpenMP settings (KMP_*), set by its first
    # import, which may come inside a script now that metrics import it at the first score, and W&B's service address,
    # which wandb.teardown() clears when this process started the service (in an earlier test too) are the libraries'
    assert {k for k in changed if not k.startswith(("TORCHINDUCTOR_", "KMP_", "WANDB_SERVICE"))} == set()
    assert (os.getcwd(), torch.get_num_threads()) == (str(REPO), threads)
    return capsys.readouterr().out.splitlines()


def table(lines: list[str], header: str) -> list[list[str]]:
    """The cells of the rows of the markdown table whose header line starts with `header`."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def number(cell: str) -> float:
    """A table cell's number (bold, thousands separators, a unit after it allowed), which must be finite."""
    value = float(cell.strip("*").split()[0].rstrip("x").replace(",", ""))
    assert math.isfinite(value), cell
    return value


def test_trainer_overhead_smoke_times_both_loops(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    lines = smoke("trainer_overhead", capsys, monkeypatch)
    assert any(line.startswith("## Training-loop overhead (resnet10t, batch 8, input 32 mels x 101 frames, 1 steps")
               for line in lines), lines
    rows = table(lines, "| loop | samples/s | per repeat |")
    assert [row[0].split(":")[0] for row in rows] == ["ours", "bare", "**ratio ours / bare**"]
    ours, bare, ratio = (number(row[1]) for row in rows)
    assert ours > 0 and bare > 0 and ratio == pytest.approx(ours / bare, rel=0.03)
    assert lines[-1].startswith(f"Goal ours / bare >= 0.9: {ratio:.2f} (")


def test_accuracy_demo_smoke_scores_every_view_of_both_recipes(capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch):
    lines = smoke("accuracy_demo", capsys, monkeypatch)
    assert "## The keyword demo, experiments/default, fold(s) 0" in lines
    rows = table(lines, "| recipe | view | validation accuracy | holdout accuracy")
    views = ["plain", "window:-0.1", "window:-0.05", "window:0.05", "window:0.1", "shift:-0.1", "shift:0.1", "gain:-6",
             "mean", "(seconds per fold)"]
    assert [row[:2] for row in rows] == [[recipe, view] for recipe in ("old", "new") for view in views]
    for recipe, view, validation, holdout in rows:
        if view != "(seconds per fold)":
            assert 0 <= number(validation) <= 1 and 0 <= number(holdout) <= 1, (recipe, view)
        else:
            assert number(validation) >= 0 and holdout.endswith(" holdout clips") and number(holdout) > 0


def test_accuracy_fsdd_smoke_trains_and_blends_every_recipe(capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch):
    shared_data("fsdd", "recordings")
    lines = smoke("accuracy_fsdd", capsys, monkeypatch)
    recipes = ["old", "new", "windows"]
    folds = table(lines, "| recipe | fold | validation speaker | val accuracy |")
    assert [row[:2] for row in folds] == [[recipe, "0"] for recipe in recipes]
    assert all(0 <= number(row[column]) <= 1 for row in folds for column in (3, 5, 6))  # val, holdout, with TTA
    methods = table(lines, "| recipe | method | holdout accuracy | notes |")
    assert [row[0] for row in methods] == [recipe for recipe in recipes for _ in range(4)]
    assert all(0 <= number(row[2]) <= 1 for row in methods)
    results = json.loads(lines[-1])
    assert list(results) == [*recipes, "seconds"]
    for recipe in recipes:
        assert results[recipe]["n"] == 6 and len(results[recipe]["single"]) == 1  # one speaker's 6 clips held out
        assert results[recipe]["written"] in {row[1].removeprefix("written by blend: ") for row in methods}


def test_accuracy_fsdd_speakers_smoke_scores_the_ensemble_against_the_probe(capsys: pytest.CaptureFixture,
                                                                           monkeypatch: pytest.MonkeyPatch):
    shared_data("fsdd", "recordings")
    lines = smoke("accuracy_fsdd_speakers", capsys, monkeypatch)
    assert ("## FSDD, leave one speaker out (6 test clips of the held speaker, 30 training clips of five others)"
            in lines)
    rows = table(lines, "| held speaker | words 2-fold soft ensemble | probe LR C=1 | probe LR C=10 | words OOF |")
    assert [row[0] for row in rows] == ["theo", "mean of 1"]
    assert rows[0][1:5] == rows[1][1:5] and rows[0][5:7] == ["-", "-"]  # one speaker; no CNN in a smoke run
    assert all(0 <= number(cell) <= 1 for cell in rows[0][1:5])
    words = number(rows[0][1])
    assert any(line.startswith(f"words ensemble mean {words:.4f} (") for line in lines)
    for c in ("1", "10"):
        assert any(line.startswith(f"- against probe C={c} (") and "McNemar exact p = " in line for line in lines)
    result = json.loads(lines[-1])["results"][0]
    assert result["speaker"] == "theo" and result["words"] == pytest.approx(words, abs=5e-5)


def test_pseudo_rounds_smoke_plays_round_one_and_a_pseudo_round(capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch):
    shared_data("fsdd", "recordings")
    lines = smoke("pseudo_rounds", capsys, monkeypatch)
    assert any(line.startswith("### fsdd, leave one speaker out (") and line.endswith(
        "; 6 test clips of the held speaker, 30 training clips of five others; words_encoder recipe, 2 "
        "speaker-grouped folds)") for line in lines)
    rows = table(lines, "| held speaker | round 1 test | round 1 OOF | round 2 test | round 2 OOF |")
    assert len(rows) == 1 and rows[0][0] == "theo"
    assert all(0 <= number(cell) <= 1 for cell in rows[0][1:5])
    assert number(rows[0][5]) == pytest.approx(number(rows[0][4]) - number(rows[0][3]), abs=2e-4)
    counts, right = rows[0][6].removesuffix(" right)").split(" (")
    assert counts == "6, 6" and right.endswith("/12")  # threshold 0: each fold labels every test clip
    assert any(line.startswith("round 2 beats round 1 on the test clips: ") for line in lines)
    assert any(line.startswith("round 2 OOF within 2 points of its test accuracy: ") for line in lines)
    result = json.loads(lines[-1])
    assert result["threshold"] == 0.0 and [r["exp"] for r in result["results"][0]["rounds"]] == ["words_theo",
                                                                                               "words_theo_pl1"]


def test_averaging_fsdd_smoke_compares_the_four_models_of_a_fold(capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch):
    shared_data("fsdd", "recordings")
    lines = smoke("averaging_fsdd", capsys, monkeypatch)
    assert any(line.startswith("## Weight averaging on fsdd: theo held out (6 test clips), OOF on the other five (6 "
                               "clips, takes 0-1 of each digit)") for line in lines)
    assert any(line.startswith("Recipe: ") and line.endswith("the per-epoch training losses are identical across the "
                                                             "variants") for line in lines)
    rows = table(lines, "| model of each fold | OOF accuracy | theo: fold ensemble | theo: single fold (mean) |")
    assert [row[0] for row in rows] == ["best epoch", "ema 0.99", "swa 2", "average_best 2"]
    assert all(0 <= number(cell) <= 1 for row in rows for cell in row[1:4])
    kept = {row[0]: row[4] for row in rows}
    assert kept["best epoch"] in ("1", "2") and sorted(kept["swa 2"].split("+")) == ["1", "2"]
    assert sorted(kept["average_best 2"].split("+")) == ["1", "2"]  # two epochs run: both averaged
    assert set(json.loads(lines[-1])) == {*kept, "seconds"}


def test_voice_groups_smoke_scores_every_grouping_and_the_voice_clusters(capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch):
    shared_data("speechocean762_gender")
    lines = smoke("voice_groups", capsys, monkeypatch)
    assert any(line.startswith("voice.yaml recipe; 6 training speakers, 2 unseen test speakers per draw; 2 folds")
               for line in lines)
    rows = table(lines, "| draw | grouping | OOF accuracy | unseen-speaker test accuracy | OOF - test | groups |")
    assert [row[:2] for row in rows] == [["0", grouping] for grouping in
                                         ("per clip", "folds.groups=voice", "true speakers (reference)")]
    for row in rows:
        oof, test = number(row[2]), number(row[3])
        assert 0 <= oof <= 1 and 0 <= test <= 1 and number(row[4]) == pytest.approx(oof - test, abs=2e-4)
    voice = rows[1]
    assert 3 <= int(voice[5]) <= 36 and 0 < number(voice[6]) <= 1 and 0 < number(voice[7]) <= 1
    assert 0 <= int(voice[8]) <= 6
    means = table(lines, "| grouping | draws | mean OOF | mean test |")
    assert [row[:2] for row in means] == [[row[1], "1"] for row in rows]
    assert [r["grouping"] for r in json.loads(lines[-1])["results"]] == [row[1] for row in rows]


def test_accuracy_gender_smoke_runs_every_method_on_unseen_speakers(capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch):
    shared_data("speechocean762_gender")
    lines = smoke("accuracy_gender", capsys, monkeypatch)
    methods = ["baseline (log-mel + LR)", "probe (speaker encoder + LR)", "old default (cnn)", "new default (voice)",
               "voice pitch", "voice encoder", "voice encoder fine-tuned", "voice pitch + voice encoder",
               "voice pitch + fine-tuned encoder", "the pair after a pseudo-label round"]
    rows = table(lines, "| regime | draw | method | grouping | local OOF accuracy | unseen-speaker test accuracy |")
    assert [row[:4] for row in rows] == [["six", "0", method, "-" if i < 2 else "speaker"]
                                         for i, method in enumerate(methods)]
    for row in rows:
        assert (row[4] == "-") == (row[3] == "-") and all(0 <= number(cell) <= 1 for cell in row[4:6] if cell != "-")
    summary = table(lines, "| regime | method | grouping | draws | mean test accuracy |")
    assert [row[1] for row in summary] == methods
    assert all(row[9] in ("-", "0/1", "1/1") and row[10] in ("-", "0/1", "1/1") for row in summary)
    assert any(line.startswith("six0: baseline (log-mel + LR) test ") for line in lines)  # the draw's progress line
    assert [r["method"] for r in json.loads(lines[-1])["results"]] == methods


def test_feature_pipeline_smoke_times_every_contender(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    lines = smoke("feature_pipeline", capsys, monkeypatch)
    assert ("## Training-input throughput (64 one-second 16 kHz clips, batch 32, 32 clips timed per contender and "
            "repeat)") in lines
    rows = {row[0]: row[1] for row in table(lines, "| clips/s (median of 1) | 64 mels |")}
    assert list(rows) == [
        "ours: waveform cache + batched gain/shift/noise + torch LogMel",
        "naive Dataset: librosa + audiomentations, num_workers=0", "naive Dataset: librosa + audiomentations, num_workers=2",
        "PNG reference: one-off mel + PNG write (no augmentation)", "PNG reference: read PNGs back, per epoch",
        "PNG reference: 20-epoch equivalent (write once + 20 reads)", "PNG reference: one-off write time for 64 clips",
        "**ratio ours / naive, 0 workers**", "**ratio ours / naive, 2 workers**",
        "**ratio ours / PNG 20-epoch equivalent**"]
    ours, naive = number(rows["ours: waveform cache + batched gain/shift/noise + torch LogMel"]), number(
        rows["naive Dataset: librosa + audiomentations, num_workers=0"])
    assert all(number(value) > 0 for value in rows.values())
    ratio = number(rows["**ratio ours / naive, 0 workers**"])
    assert ratio == pytest.approx(ours / naive, rel=0.05, abs=0.05)  # one repeat: the ratio of the two rates
    assert lines[-1].startswith(f"Goal ours >= 3x the naive per-item librosa pipeline at 64 mels: {ratio:.1f}x (")


def test_predict_speed_smoke_times_every_variant_against_the_fp32_reference(capsys: pytest.CaptureFixture,
                                                                            monkeypatch: pytest.MonkeyPatch):
    lines = smoke("predict_speed", capsys, monkeypatch)
    assert "## CPU inference: 2-fold resnet10t x 4 TTA views, 2 demo test clips" in lines
    rows = table(lines, "| variant | clips/s | vs naive | argmax agreement with fp32 | largest prob. difference |")
    variants = [row[0] for row in rows]
    assert variants[:4] == ["naive loop: librosa per clip, one call per clip, fold and view",
                            "ours, model by model: cache + batched log-mel and model calls (fp32)",
                            "ours, one pass: every fold model over each batch (fp32)", "one pass + channels_last"]
    assert variants[-1] == "pack-and-predict: bundle.zip -> competition.predict (end to end)"
    assert {"one pass + bf16 autocast", "one pass + TorchScript (traced, frozen)"} <= set(variants)
    for variant, speed, against_naive, agreement, difference in rows:
        assert number(speed) > 0 and number(against_naive) > 0, variant
        assert 0 <= number(agreement) <= 1 and 0 <= number(difference) < 1, variant
    assert rows[1][3:] == ["1.0000", "0.0e+00"]  # the reference itself
    assert number(rows[0][2]) == 1.0 and number(rows[-1][3]) == 1.0  # the bundle answers as the folds do


def test_tracking_overhead_smoke_trains_abba_with_and_without_tracking(capsys: pytest.CaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch):
    lines = smoke("tracking_overhead", capsys, monkeypatch)
    assert ("## Offline W&B tracking on experiments/default, fold 0, 1 epochs, 2 folds per mode in ABBA order"
            in lines)
    rows = table(lines, "| tracking | fold wall times (s) | median (s) | inside tracking calls (s) |")
    assert [row[0] for row in rows] == ["disabled", "offline"]
    for mode, walls, middle, inside, service in rows:
        walls = [number(wall) for wall in walls.split(", ")]
        assert len(walls) == 2 and all(wall > 0 for wall in walls) and number(middle) > 0
        if mode == "disabled":
            assert (inside, service) == ("-", "-")
        else:
            assert number(inside) > 0 and number(service) >= 0
    off, on = number(rows[0][2]), number(rows[1][2])
    assert lines[-1].startswith("offline / disabled median wall time: ")
    ratio = number(lines[-1].split(": ")[1])  # of the medians before they were printed to 0.1 s: within their rounding
    assert (on - 0.05) / (off + 0.05) - 1e-3 <= ratio <= (on + 0.05) / max(off - 0.05, 1e-9) + 1e-3, (on, off, ratio)


def test_tune_demo_smoke_compares_the_recipe_with_the_best_trial(capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch):
    lines = smoke("tune_demo", capsys, monkeypatch)
    assert any(line.startswith("## Tuning the demo: 1 complete and 0 pruned trials of 1 epochs on fold 0 in ")
               for line in lines)
    rows = table(lines, "| config | searched values | validation accuracy (what was tuned) | locked holdout accuracy |")
    assert [row[0] for row in rows] == ["recipe as shipped (trial 0)", "tuned (trial 0)"]
    assert rows[0][1:] == rows[1][1:]  # one trial: the recipe is the best
    assert sorted(value.split("=")[0] for value in rows[0][1].split(", ")) == ["mixup.p", "n_mels", "spec_time.p"]
    assert 0 <= number(rows[0][2]) <= 1 and 0 <= number(rows[0][3]) <= 1 and number(rows[0][4]) >= 0


def test_training_speed_smoke_times_every_precision_and_memory_format(capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch):
    from competition.compute import native_bf16

    lines = smoke("training_speed", capsys, monkeypatch)
    rows = table(lines, "| backbone | timm family | input (mels x frames) | arm | samples/s | vs fp32 |")
    assert [row[3] for row in rows] == ["fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last"]
    assert {(row[0], row[1], row[2]) for row in rows} == {("resnet10t", "resnet", "64x101")}
    speeds = [number(row[4]) for row in rows]
    assert all(speed > 0 for speed in speeds)
    for row, speed in zip(rows, speeds):
        assert number(row[5]) == pytest.approx(speed / speeds[0], rel=0.05, abs=0.01)  # of speeds printed rounded
    assert lines[-1] == f"train.precision=auto trains in {'bf16' if native_bf16() else 'fp32'} on this CPU"
