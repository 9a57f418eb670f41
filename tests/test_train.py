"""End to end: config -> folds -> one trained fold with its outputs, on generated tones and real recordings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from competition.config import load_experiment
from competition.errors import UserError
from competition.foldrun import is_finished
from competition.train import train_fold
from conftest import TONES, error_line, run_verb, shared_data

REPO = Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_run_writes_complete_fold_outputs(tones: Path) -> None:
    # 8 epochs: after the tones config's 4, validation accuracy is anywhere from 0.72 to 1.00 with the seed and the
    # precision (bf16 where the CPU has it); after 8 it is 1.00 for each of seeds 42, 1 and 3, in fp32 and in bf16
    result = run_cli("competition.run", "exp=tones", "fold=0", "device=cpu", "train.epochs=8", cwd=tones)
    assert result.returncode == 0, result.stderr
    assert "epoch   8/8" in result.stdout and "eta" in result.stdout
    fold_dir = tones / "experiments" / "tones" / "fold_0"
    for name in ("DONE", "model.pt", "config.yaml", "metrics.csv", "curves.png", "oof.csv", "holdout.csv", "test.csv"):
        assert (fold_dir / name).is_file(), name
    assert not (tones / "experiments" / "tones" / "fold_0.partial").exists()

    folds = pd.read_csv(tones / "folds" / "tones.csv", dtype=str)
    oof = pd.read_csv(fold_dir / "oof.csv", dtype={"id": str, "label": str})
    assert sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == "0", "id"])
    holdout = pd.read_csv(fold_dir / "holdout.csv", dtype={"id": str})
    assert sorted(holdout["id"]) == sorted(folds.loc[folds["fold"] == "-1", "id"])
    test = pd.read_csv(fold_dir / "test.csv", dtype={"id": str})
    assert sorted(test["id"]) == [f"clip_{i}" for i in range(6)]
    assert set(test["view"]) == {"plain"}
    classes = sorted(TONES)
    for frame in (oof, holdout, test):
        assert np.allclose(frame[classes].sum(axis=1), 1.0, atol=1e-4)

    summary = json.loads((fold_dir / "DONE").read_text())
    accuracy = (oof[classes].to_numpy().argmax(1) == oof["label"].map(classes.index)).mean()
    assert summary["val_accuracy"] == pytest.approx(accuracy)
    assert accuracy >= 0.9  # three well separated tones
    assert len(pd.read_csv(fold_dir / "metrics.csv")) == summary["epochs_run"] == 8
    checkpoint = torch.load(fold_dir / "model.pt", weights_only=False)
    assert checkpoint["classes"] == classes and checkpoint["epoch"] == summary["best_epoch"]


def test_same_seed_gives_same_predictions(tones: Path) -> None:
    first = train_fold(load_experiment("tones", ["train.epochs=2"]), 1, "cpu")
    oof_first = (tones / "experiments" / "tones" / "fold_1" / "oof.csv").read_text()
    second = train_fold(load_experiment("tones", ["train.epochs=2"]), 1, "cpu", overwrite=True)
    assert (tones / "experiments" / "tones" / "fold_1" / "oof.csv").read_text() == oof_first
    assert first["val_accuracy"] == second["val_accuracy"]


def test_finished_fold_is_never_overwritten_by_accident(tones: Path, capsys: pytest.CaptureFixture) -> None:
    from competition import run

    exp = load_experiment("tones", ["train.epochs=1"])
    train_fold(exp, 2, "cpu")
    done = (exp.fold_dir(2) / "DONE").read_text()
    code, _, err = run_verb(capsys, run, "exp=tones", "fold=2", "train.epochs=1")
    assert code == 2 and "Traceback" not in err
    assert "overwrite=true" in error_line(err)
    assert (exp.fold_dir(2) / "DONE").read_text() == done
    code, out, _ = run_verb(capsys, run, "exp=tones", "fold=all", "train.epochs=1")
    assert "fold 2: already finished, skipped" in out


def test_interrupted_fold_does_not_look_finished(tones: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import competition.train as train

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "plot_curves", crash)  # dies after the epochs, before the predictions
    exp = load_experiment("tones", ["train.epochs=1"])
    with pytest.raises(KeyboardInterrupt):
        train_fold(exp, 0, "cpu")
    assert not exp.fold_dir(0).exists() and not is_finished(exp.fold_dir(0))
    assert (exp.dir / "fold_0.partial" / "model.pt").exists()
    assert not (exp.dir / "fold_0.partial" / "DONE").exists()


@pytest.mark.parametrize("averaging,killed_after", [
    (["train.swa=2"], 3),  # the window of epochs 2-3 is in last.pt; 3 is still averaged after epoch 4
    (["train.average_best=2", "train.memory_format=channels_last"], 3),  # one epoch after the kill cannot make two
    # best epochs alone; channels_last resumes exactly as the default layout does (bf16 autocast holds no state to
    # resume, and emulated bf16 on a CPU without it in hardware would make this test many times slower)
], ids=["swa", "average_best_channels_last"])  # each also resumes what a plain fold does: weights, EMA, optimizer, schedule, RNGs
def test_killed_fold_resumes_to_the_same_result(tones: Path, capsys: pytest.CaptureFixture, averaging: list[str],
                                                killed_after: int) -> None:
    """SIGKILL mid-run, then resume=true: the fold finishes with the outputs an uninterrupted run gives, also when
    it averages the weights of several epochs, some kept before the kill."""
    import shutil
    import signal
    import time

    from competition import run

    shutil.copytree(tones / "experiments" / "tones", tones / "experiments" / "killed")
    args = ["train.epochs=4", "train.ema=0.9", "train.label_smoothing=0.1", *averaging, "device=cpu"]
    process = subprocess.Popen([sys.executable, "-m", "competition.run", "exp=killed", "fold=0", *args], cwd=tones,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    history = tones / "experiments" / "killed" / "fold_0.partial" / "metrics.csv"  # written after last.pt

    def epochs_done() -> int:
        return len(history.read_text().splitlines()) - 1 if history.exists() else 0

    deadline = time.time() + 300
    while epochs_done() < killed_after and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed while training, not after finishing
    killed = tones / "experiments" / "killed" / "fold_0"
    assert not killed.exists()

    code, _, err = run_verb(capsys, run, "exp=killed", "fold=0", *args)
    assert code == 2 and "resume=true" in err  # never restarted silently
    code, _, err = run_verb(capsys, run, "exp=killed", "fold=0", "resume=true", *args[:-1], "train.lr=0.02")
    assert code == 2 and "train.lr" in err  # other settings: say which
    code, _, err = run_verb(capsys, run, "exp=killed", "fold=0", "resume=true", *args)
    assert code == 0, err
    assert "resuming after epoch" in err
    assert is_finished(killed) and not (killed / "last.pt").exists()

    train_fold(load_experiment("tones", args[:-1]), 0, "cpu")
    reference = tones / "experiments" / "tones" / "fold_0"
    for name in ("oof.csv", "holdout.csv", "test.csv"):
        assert (killed / name).read_text() == (reference / name).read_text(), name
    columns = ["epoch", "train_loss", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(killed / "metrics.csv")[columns],
                                  pd.read_csv(reference / "metrics.csv")[columns])
    resumed, uninterrupted = (torch.load(path / "model.pt", weights_only=True) for path in (killed, reference))
    assert resumed.get("averaged") == uninterrupted.get("averaged") and "averaged" in resumed
    assert resumed["model"].keys() == uninterrupted["model"].keys()
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


def test_resume_without_a_checkpoint_is_refused(tones: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train_fold(load_experiment("tones"), 0, "cpu", resume=True)


@pytest.mark.parametrize("args,expected", [
    (["fold=7"], "fold=7 is out of range"),
    (["model.name=resnet_18"], "did you mean resnet18"),
    (["train.epoch=3"], "train.epochs"),
    (["device=cuda:9"], "device="),
    (["overwrite=maybe"], "overwrite=maybe"),
    (["train.swa=-1"], "'train.swa' counts epochs to average, from 0 (off) to train.epochs (4), got -1"),
    (["train.average_best=5"], "'train.average_best' counts epochs to average"),
    (["train.swa=2", "train.average_best=2"], "'train.swa' and 'train.average_best' are both set"),
    (["model.name=stats_linear", "frontend.kind=clip_stats", "train.swa=2"], "stats_linear is fitted exactly"),
])
def test_run_user_mistakes_are_one_line(tones: Path, capsys: pytest.CaptureFixture, args: list[str],
                                        expected: str) -> None:
    from competition import run
    from competition.cli import main_guard

    with pytest.raises(SystemExit) as exit_info:
        main_guard(run.main, ["exp=tones", *args])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0]


def test_pretrained_weights_from_local_file(tmp_path: Path) -> None:
    import timm

    from competition.config import load_config
    from competition.models import create_model

    rgb = timm.create_model("resnet10t", num_classes=1000)
    torch.save(rgb.state_dict(), tmp_path / "resnet10t.pth")
    config = tmp_path / "config.yaml"
    config.write_text("data: {name: x}\nmodel: {name: resnet10t}\n")
    model = create_model(load_config(config, [f"model.weights_file={tmp_path / 'resnet10t.pth'}"]), 5)
    stem = model.conv1[0].weight
    assert stem.shape[1] == 1 and model.get_classifier().out_features == 5
    assert torch.allclose(stem[:, 0], rgb.conv1[0].weight.sum(1), atol=1e-5)  # RGB stem folded into one channel

    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="lacks"):
        create_model(load_config(config, [f"model.weights_file={tmp_path / 'other.pth'}"]), 5)
    with pytest.raises(UserError, match="not found"):
        create_model(load_config(config, [f"model.weights_file={tmp_path / 'missing.pth'}"]), 5)


def test_pretrained_offline_says_how_to_supply_weights(tones: Path) -> None:
    result = run_cli("competition.run", "exp=tones", "model.pretrained=true", cwd=tones,
                     HF_HUB_OFFLINE="1", HF_HOME=str(tones / "hf"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "cannot load pretrained weights for 'resnet10t'" in error[0]
    assert "model.weights_file" in error[0]


def test_fsdd_subset_grouped_by_speaker_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real recordings, folds by speaker: the validation speaker was never heard, and it still beats chance."""
    fsdd = shared_data("fsdd", "recordings")
    subset = tmp_path / "fsdd"  # 4 speakers x 10 digits x 8 takes, linked, never copied
    subset.mkdir()
    for path in fsdd.glob("*.wav"):
        digit, speaker, take = path.stem.split("_")
        if speaker in {"jackson", "nicolas", "theo", "george"} and int(take) < 8:
            (subset / path.name).symlink_to(path)
    exp = tmp_path / "experiments" / "fsdd"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(f"""
data:
  name: fsdd_subset
  cache_dir: {tmp_path / 'cache'}
  train: {{path: {subset}, layout: filename, filename_regex: '(?P<label>\\d)_(?P<group>[a-z]+)_\\d+'}}
audio: {{sample_rate: 8000, duration: 0.8}}
folds: {{n_splits: 4}}
frontend: {{n_mels: 40, n_fft: 256, hop_length: 80}}
model: {{name: resnet10t}}
train: {{epochs: 8, batch_size: 32, lr: 0.003}}
""")
    monkeypatch.chdir(tmp_path)
    summary = train_fold(load_experiment("fsdd"), 0, "cpu")
    folds = pd.read_csv(tmp_path / "folds" / "fsdd_subset.csv")
    assert folds.groupby("group")["fold"].nunique().max() == 1  # no speaker in two folds
    assert summary["n_val"] == 80 and summary["n_train"] == 240
    assert summary["val_accuracy"] > 0.3, summary["val_accuracy"]  # chance is 0.1


def test_ohem_keeps_only_the_hardest_samples_and_smoothing_matches_torch() -> None:
    from competition.task import SINGLE
    from competition.train import training_loss

    def loss(targets: torch.Tensor, ohem: float = 1.0) -> float:
        return training_loss(SINGLE, logits, targets, OmegaConf.create({"ohem": ohem, "focal_gamma": 0.0})).item()

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -2.0]])
    y = torch.tensor([0, 1, 2, 2])
    per_sample = F.cross_entropy(logits, y, reduction="none")
    assert loss(SINGLE.targets(y.numpy(), 3, 0.0)) == pytest.approx(per_sample.mean().item())
    hardest_half = per_sample.sort(descending=True).values[:2].mean()
    assert loss(SINGLE.targets(y.numpy(), 3, 0.0), ohem=0.5) == pytest.approx(hardest_half.item())
    smoothed = loss(SINGLE.targets(y.numpy(), 3, 0.2))
    assert smoothed == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.2).item())


def test_multilabel_loss_is_bce_summed_over_classes_and_focal_down_weights_easy_terms() -> None:
    from competition.task import Task

    task = Task("multilabel", " ")
    logits = torch.tensor([[4.0, -3.0, 0.5], [-1.0, 2.0, -4.0]])
    y = np.array([[1, 0, 1], [0, 0, 0]], np.float32)
    bce = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y), reduction="none")
    assert torch.allclose(task.losses(logits, task.targets(y, 3, 0.0)), bce.sum(1))
    smoothed = task.targets(y, 3, 0.2)  # 1 -> 0.9, 0 -> 0.1
    assert torch.allclose(smoothed, torch.tensor([[0.9, 0.1, 0.9], [0.1, 0.1, 0.1]]))
    p = logits.sigmoid()
    p_true = torch.where(torch.from_numpy(y) == 1, p, 1 - p)
    focal = task.losses(logits, task.targets(y, 3, 0.0), focal_gamma=2.0)
    assert torch.allclose(focal, (bce * (1 - p_true) ** 2).sum(1))
    assert (focal < bce.sum(1)).all()
    assert torch.allclose(task.probabilities(logits), p)  # one sigmoid per class, rows need not sum to one


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "onecycle"])
def test_schedules_warm_up_then_follow_their_shape(tmp_path: Path, schedule: str) -> None:
    from competition.config import load_config
    from competition.train import make_scheduler

    config = tmp_path / "config.yaml"
    config.write_text("data: {name: x}\n")
    cfg = load_config(config, [f"train.schedule={schedule}", "train.epochs=5", "train.warmup_epochs=1", "train.lr=0.1"])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch=10)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rise, rest = np.array(lrs[:10]), np.array(lrs[10:])
    assert (np.diff(rise) > 0).all() and rise[0] < 0.02  # warm-up climbs from near zero
    assert max(lrs) == pytest.approx(0.1, rel=0.02)
    if schedule == "constant":
        assert np.allclose(rest, 0.1)
    else:
        assert (np.diff(rest) <= 1e-12).all() and rest[-1] < 0.01  # decays after the warm-up
    if schedule == "linear":
        assert np.allclose(np.diff(rest), np.diff(rest)[0])


def test_gradient_clipping_and_ema_are_applied_only_when_enabled(tones: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import competition.train as train

    norms, updates = [], []
    clip = torch.nn.utils.clip_grad_norm_
    ema_update = train.ModelEmaV3.update

    def spy_clip(parameters, max_norm):
        parameters = list(parameters)
        clip(parameters, max_norm)
        norms.append(torch.norm(torch.stack([p.grad.norm() for p in parameters])).item())

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    monkeypatch.setattr(train.ModelEmaV3, "update", lambda self, model: updates.append(1) or ema_update(self, model))
    train_fold(load_experiment("tones", ["train.epochs=1"]), 0, "cpu")
    assert norms == [] and updates == []
    summary = train_fold(load_experiment("tones", ["train.epochs=1", "train.grad_clip=0.05", "train.ema=0.5"]), 0,
                         "cpu", overwrite=True)
    steps = summary["n_train"] // 16 + (summary["n_train"] % 16 >= 2)
    assert len(norms) == len(updates) == steps
    assert max(norms) <= 0.05 * 1.001


def test_augmented_run_writes_every_tta_view_and_their_mean(tones: Path) -> None:
    noise = shared_data("background_noise")
    args = ["train.epochs=2", "augment.gain.p=0.5", "augment.shift.p=0.5", "augment.noise.p=0.5",
            "augment.spec_time.p=0.5", "augment.spec_freq.p=0.5", "augment.mixup.p=0.5", "augment.cutmix.p=0.3",
            "augment.pitch_shift.p=0.5", "augment.time_stretch.p=0.5", "train.workers=2",
            "tta.views=[plain,shift:0.1,gain:-6]", "augment.background.p=0.5", f"augment.background.folder={noise}"]
    summary = train_fold(load_experiment("tones", args), 0, "cpu")
    holdout = pd.read_csv(tones / "experiments" / "tones" / "fold_0" / "holdout.csv", dtype={"id": str})
    assert list(holdout["view"].unique()) == ["plain", "shift:0.1", "gain:-6", "mean"]
    classes = sorted(TONES)
    views = {view: frame.set_index("id")[classes] for view, frame in holdout.groupby("view")}
    mean = (views["plain"] + views["shift:0.1"] + views["gain:-6"]) / 3
    assert np.allclose(views["mean"].loc[mean.index], mean, atol=1e-5)
    assert not np.allclose(views["plain"], views["shift:0.1"].loc[views["plain"].index])
    assert "holdout_accuracy_mean" in summary and summary["tta_views"] == ["plain", "shift:0.1", "gain:-6"]


def test_stats_linear_is_scikit_learns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    from competition.backbones import StatsLinear

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)) * [1, 5, 0.1, 2, 1, 1] + [0, 3, 1, 0, 0, 0]
    y = (x[:, 0] + 0.3 * x[:, 1] + rng.normal(size=120) > 1).astype(int) + (x[:, 3] > 1.5)
    l2 = 0.05
    model = StatsLinear(3)
    model.fit(torch.from_numpy(x)[:, None, :, None], torch.from_numpy(y), l2)
    ours = model(torch.from_numpy(x).float()[:, None, :, None]).softmax(-1).detach().numpy()
    scaled = (x - x.mean(0)) / x.std(0)
    theirs = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10000).fit(scaled, y).predict_proba(scaled)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_voice_recipe_fits_exactly_and_predicts_again_from_its_model(tones: Path) -> None:
    exp = load_experiment("tones", ["frontend.kind=clip_stats", "model.name=stats_linear", "tta.views=[plain,gain:6]"])
    summary = train_fold(exp, 0, "cpu")
    fold_dir = tones / "experiments" / "tones" / "fold_0"
    assert summary["best_epoch"] == summary["epochs_run"] == 1 and summary["val_accuracy"] >= 0.9
    assert len(pd.read_csv(fold_dir / "metrics.csv")) == 1
    from competition.train import load_data, load_fold_model, predict

    model, frontend = load_fold_model(fold_dir / "model.pt", exp.cfg, torch.device("cpu"))
    probs = predict(model, frontend, load_data(exp).fold(0).val, exp.cfg, torch.device("cpu"))
    oof = pd.read_csv(fold_dir / "oof.csv", dtype={"id": str})
    np.testing.assert_allclose(oof[oof["view"] == "plain"][sorted(TONES)].to_numpy(), probs, atol=1e-5)
    plain, louder = (oof[oof["view"] == view][sorted(TONES)].to_numpy() for view in ("plain", "gain:6"))
    assert not np.allclose(plain, louder)  # the band levels are raw decibels: a level cue the model can use


def test_dataset_normalisation_is_fitted_per_fold_and_kept_with_its_model(tones: Path) -> None:
    exp = load_experiment("tones", ["train.epochs=1", "frontend.normalize=dataset"])
    train_fold(exp, 0, "cpu")
    checkpoint = torch.load(tones / "experiments" / "tones" / "fold_0" / "model.pt", weights_only=True)
    mean, std = checkpoint["frontend"]["band_mean"], checkpoint["frontend"]["band_std"]
    assert mean.shape == (32, 1) and mean.abs().max() > 1 and not torch.allclose(std, torch.ones_like(std))
    from competition.frontend import LogMel
    from competition.train import batches, crop_samples, load_data

    fresh = LogMel.from_config(exp.cfg)
    fresh.fit(torch.from_numpy(w) for _, w in batches(load_data(exp).fold(0).train, 64, crop_samples(exp.cfg), None))
    torch.testing.assert_close(fresh.band_mean, mean)  # fitted on the fold's own training clips


def test_a_metric_tie_goes_to_the_lower_validation_loss(tones: Path) -> None:
    summary = train_fold(load_experiment("tones", ["train.epochs=6"]), 0, "cpu")
    history = pd.read_csv(tones / "experiments" / "tones" / "fold_0" / "metrics.csv")
    top = history[history["val_accuracy"] == history["val_accuracy"].max()]
    assert summary["best_epoch"] == int(top.loc[top["val_loss"].idxmin(), "epoch"])


def epoch_weights(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, torch.Tensor]]:
    """Each epoch's evaluated weights by epoch, copied as the fold's checkpoint saves them."""
    import competition.train as train

    weights = {}
    save = train.TrainState.save

    def spy(self, path: Path) -> None:
        weights[self.epoch] = {name: tensor.clone() for name, tensor in self.eval_model.state_dict().items()}
        save(self, path)

    monkeypatch.setattr(train.TrainState, "save", spy)
    return weights


def scripted_accuracy(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """The epochs' validation accuracy is `values` in turn (their losses stay real), so which epochs are best, and
    when patience stops, is known in advance; later scores (the averaged model's) are real."""
    import competition.train as train

    real, script = train._validation_scores, iter(values)

    def scores(cfg, y: np.ndarray, probs: np.ndarray) -> dict:
        row = real(cfg, y, probs)
        return {**row, "val_accuracy": next(script, row["val_accuracy"])}

    monkeypatch.setattr(train, "_validation_scores", scores)


def parameter_names(exp) -> list[str]:
    from competition.models import create_model

    return [name for name, _ in create_model(exp.cfg, len(TONES), pretrained=False).named_parameters()]


def test_swa_averages_the_last_epochs_run_and_reestimates_batchnorm(tones: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from competition.train import batches, crop_samples, load_data, load_fold_model

    epochs = epoch_weights(monkeypatch)
    scripted_accuracy(monkeypatch, [0.5, 0.9, 0.8, 0.7])  # best epoch 2; patience 2 stops after epoch 4
    exp = load_experiment("tones", ["train.epochs=6", "train.patience=2", "train.swa=3"])
    summary = train_fold(exp, 0, "cpu")
    assert summary["epochs_run"] == 4 and summary["best_epoch"] == 2
    averaged = summary["averaged"]
    assert averaged["kind"] == "swa" and averaged["epochs"] == [2, 3, 4]
    assert averaged["val_accuracy"] == summary["val_accuracy"]  # the model predicted is the averaged one
    assert f"swa of epochs 2, 3, 4 | val loss {averaged['val_loss']:.4f} accuracy" in capsys.readouterr().out
    weights = torch.load(exp.fold_dir(0) / "model.pt", weights_only=True)["model"]
    for name in parameter_names(exp):
        torch.testing.assert_close(weights[name], torch.stack([epochs[e][name] for e in (2, 3, 4)]).mean(0))
    assert not torch.allclose(weights["fc.weight"], epochs[4]["fc.weight"])

    running = [name for name in weights if name.endswith("running_mean")]
    for epoch in epochs.values():  # neither any epoch's statistics nor their mean: estimated again
        assert all(not torch.allclose(weights[name], epoch[name]) for name in running)
    # the stem's first BatchNorm holds the mean over the training batches (centred crops, the frontend's log-mels)
    # of its input's channel means
    model, frontend = load_fold_model(exp.fold_dir(0) / "model.pt", exp.cfg, torch.device("cpu"))
    with torch.no_grad():
        means = [model.conv1[0](frontend(torch.from_numpy(wave))).mean((0, 2, 3)) for _, wave in
                 batches(load_data(exp).fold(0).train, exp.cfg.train.batch_size, crop_samples(exp.cfg), None)
                 if len(wave) > 1]
    torch.testing.assert_close(model.conv1[1].running_mean, torch.stack(means).mean(0))


def test_average_best_averages_the_epochs_with_the_best_validation_metric(tones: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    epochs = epoch_weights(monkeypatch)
    scripted_accuracy(monkeypatch, [0.6, 0.9, 0.8, 0.9, 0.8])
    exp = load_experiment("tones", ["train.epochs=5", "train.average_best=3"])
    summary = train_fold(exp, 0, "cpu")
    history = pd.read_csv(exp.fold_dir(0) / "metrics.csv").set_index("epoch")
    third = history.loc[[3, 5], "val_loss"].idxmin()  # a tie on the metric goes to the lower validation loss
    assert summary["averaged"]["kind"] == "average_best" and summary["averaged"]["epochs"] == sorted([2, 4, third])
    assert summary["best_epoch"] == history.loc[[2, 4], "val_loss"].idxmin()
    checkpoint = torch.load(exp.fold_dir(0) / "model.pt", weights_only=True)
    assert checkpoint["averaged"]["epochs"] == summary["averaged"]["epochs"]
    for name in parameter_names(exp):
        torch.testing.assert_close(checkpoint["model"][name],
                                   torch.stack([epochs[e][name] for e in (2, 4, third)]).mean(0))


def test_the_eta_leaves_out_the_first_epochs_start_up_and_counts_the_final_predictions() -> None:
    from competition.train import time_left

    assert time_left([30.0], 3, 5.0) == 95.0  # epoch 1 alone: all there is to go by
    assert time_left([30.0, 10.0, 12.0, 11.0], 2, 5.0) == 2 * 11.0 + 5.0  # then the later epochs' median
