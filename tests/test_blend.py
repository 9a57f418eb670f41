"""Blending: each method against hand-computed arrays, fitted weights and their honest (nested) score, the answer
file's exact format and checks, and the CLI on hand-made fold outputs and on really trained folds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from scipy.stats import binomtest

from competition import blend, evidence, predict
from competition.ensemble import (METHODS, apply_stacker, as_network, fit_caruana, fit_scipy, geometric_mean,
                                  hard_vote, mean_probability, nested_score, rank_average, stack_features)
from competition.evidence import paired_test
from competition.predictions import ViewPreds
from competition.config import SubmissionConfig
from conftest import error_line, run_here, run_verb, tone, write_clip, write_tones_data, write_tones_experiment
from competition.errors import UserError
from competition.metrics import METRICS
from competition.submission import check_answer, render_answer, write_answer

REPO = Path(__file__).resolve().parents[1]
ACCURACY = METRICS["accuracy"]

P = np.array([
    [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],
    [[0.2, 0.5, 0.3], [0.1, 0.2, 0.7]],
    [[0.5, 0.4, 0.1], [0.3, 0.3, 0.4]],
])  # three models, two clips, three classes
EQUAL = np.full(3, 1 / 3)


def test_soft_is_the_weighted_mean() -> None:
    assert np.allclose(mean_probability(P, EQUAL), [[1.3 / 3, 1.2 / 3, 0.5 / 3], [0.6 / 3, 1.0 / 3, 1.4 / 3]])
    weighted = mean_probability(P, np.array([0.5, 0.25, 0.25]))
    assert np.allclose(weighted[0], [0.3 + 0.05 + 0.125, 0.15 + 0.125 + 0.1, 0.05 + 0.075 + 0.025])


def test_hard_vote_counts_labels_and_stays_a_distribution() -> None:
    # clip 0: labels 0, 1, 0 -> votes (2, 1, 0); clip 1: labels 1, 2, 2 -> votes (0, 1, 2)
    expected = np.array([[2 + 1.3 / 3, 1 + 1.2 / 3, 0 + 0.5 / 3], [0 + 0.6 / 3, 1 + 1.0 / 3, 2 + 1.4 / 3]]) / 4
    combined = hard_vote(P, EQUAL)
    assert np.allclose(combined, expected) and np.allclose(combined.sum(1), 1)
    assert list(combined.argmax(1)) == [0, 2]
    # the majority wins even against a larger summed probability: two weak votes for 1, one sure vote for 0
    sure = np.array([[[0.3, 0.4, 0.3]], [[0.3, 0.4, 0.3]], [[1.0, 0.0, 0.0]]])
    assert hard_vote(sure, EQUAL).argmax(1)[0] == 1 and mean_probability(sure, EQUAL).argmax(1)[0] == 0


def test_hard_vote_ties_go_to_the_larger_summed_probability() -> None:
    half = np.full(2, 0.5)
    tie_for_1 = np.array([[[0.5, 0.4, 0.1]], [[0.05, 0.55, 0.4]]])  # one vote each; summed 0.55 for 0, 0.95 for 1
    assert hard_vote(tie_for_1, half).argmax(1)[0] == 1
    tie_for_0 = np.array([[[0.9, 0.05, 0.05]], [[0.3, 0.4, 0.3]]])  # one vote each; summed 1.2 for 0, 0.45 for 1
    assert hard_vote(tie_for_0, half).argmax(1)[0] == 0


def test_geometric_mean_is_the_renormalised_product_root() -> None:
    rows = np.array([[0.6 * 0.2 * 0.5, 0.3 * 0.5 * 0.4, 0.1 * 0.3 * 0.1],
                     [0.2 * 0.1 * 0.3, 0.5 * 0.2 * 0.3, 0.3 * 0.7 * 0.4]]) ** (1 / 3)
    assert np.allclose(geometric_mean(P, EQUAL), rows / rows.sum(1, keepdims=True))
    vetoed = geometric_mean(np.array([[[0.5, 0.5]], [[0.0, 1.0]]]), np.full(2, 0.5))
    assert vetoed[0, 0] < 1e-6  # one member's zero outvotes the other's 0.5


def test_rank_average_uses_ranks_over_the_clips() -> None:
    # per member and class, rank of each clip's probability among the two clips, divided by two:
    # member 0: (1, .5, .5) and (.5, 1, 1); members 1 and 2: (1, 1, .5) and (.5, .5, 1)
    rows = np.array([[1.0, 2.5 / 3, 0.5], [0.5, 2 / 3, 1.0]])
    assert np.allclose(rank_average(P, EQUAL), rows / rows.sum(1, keepdims=True))
    tied = rank_average(np.array([[[0.2, 0.8], [0.2, 0.8]]]), np.ones(1))
    assert np.allclose(tied, 0.5)  # equal scores share the average rank
    assert np.allclose(rank_average(P ** 3, EQUAL), rank_average(P, EQUAL))  # calibration does not matter


def test_tta_averages_each_models_views_before_combining() -> None:
    plain = np.array([[0.3, 0.4, 0.3]])
    shifted = np.array([[0.1, 0.2, 0.7]])
    preds = ViewPreds(np.array(["x"]), np.array([2]), {"plain": plain, "shift:0.1": shifted})
    assert np.allclose(preds.take(False).p, plain)
    assert np.allclose(preds.take(True).p, [[0.2, 0.3, 0.5]])


def noisy_members(rng: np.random.Generator, n: int, members: int, classes: int = 3) -> np.ndarray:
    return rng.dirichlet(np.ones(classes), size=(members, n))


def test_caruana_gives_a_useless_member_no_weight() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.1)
    right = rng.random(300) < 0.85
    good[np.arange(300), np.where(right, y, (y + 1) % 3)] = 0.8
    stack = np.stack([noisy_members(rng, 300, 1)[0], good])
    weights = fit_caruana(stack, y, ACCURACY)
    assert weights[0] == 0.0 and weights[1] == 1.0
    assert fit_caruana(stack, y, METRICS["log_loss"])[1] > 0.9
    assert fit_scipy(stack, y, ACCURACY)[1] > 0.9


def test_caruana_mixes_members_that_err_apart() -> None:
    """Two members each wrong on a different third of the clips: their mean beats either alone."""
    y = np.arange(300) % 3
    members = []
    for wrong in (slice(0, 100), slice(100, 200)):
        probs = np.eye(3)[y] * 0.6 + 0.2 / 3 * 2
        probs[wrong] = np.eye(3)[(y[wrong] + 1) % 3] * 0.45 + 0.55 / 3
        members.append(probs)
    weights = fit_caruana(np.stack(members), y, ACCURACY)
    assert weights[0] > 0.25 and weights[1] > 0.25


@pytest.mark.parametrize("method,metric", [("caruana", "accuracy"), ("scipy", "log_loss")])
def test_nested_cv_exposes_weights_fitted_to_noise(method: str, metric: str) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    folds = np.arange(150) % 5
    stack = noisy_members(rng, 150, 8)
    fitted, metric_ = METHODS[method], METRICS[metric]
    in_sample = metric_.score(y, fitted.combine(stack, fitted.fit(stack, y, metric_)))
    nested = nested_score(fitted, stack, y, folds, metric_)
    assert metric_.better(in_sample, nested)  # in-sample flatters; nested does not
    if metric == "accuracy":
        assert in_sample > 0.38 and in_sample - nested > 0.05  # chance is a third


def test_mcnemar_counts_only_the_clips_one_method_gets_right() -> None:
    # 40 clips: both right on 20, only a on 3, only b on 12, neither on 5
    y = np.zeros(40, int)
    right_a = np.r_[np.ones(20), np.ones(3), np.zeros(12), np.zeros(5)].astype(bool)
    right_b = np.r_[np.ones(20), np.zeros(3), np.ones(12), np.zeros(5)].astype(bool)
    a, b = (np.where(right[:, None], [0.8, 0.2], [0.3, 0.7]) for right in (right_a, right_b))
    difference, p = paired_test(ACCURACY, y, a, b)
    assert difference == pytest.approx((12 - 3) / 40)
    assert p == pytest.approx(binomtest(12, 15).pvalue) and p == pytest.approx(2 * (455 + 105 + 15 + 1) / 2 ** 15)
    assert paired_test(ACCURACY, y, b, a) == pytest.approx((-difference, p))  # b better: positive; a better: negative


def test_bootstrap_p_is_small_for_a_clear_gain_and_one_for_none() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    sharp = np.eye(3)[y] * 0.6 + 0.4 / 3
    vague = 0.7 * noisy_members(rng, 400, 1)[0] + 0.3 * sharp
    log_loss = METRICS["log_loss"]
    difference, p = paired_test(log_loss, y, vague, sharp)
    # lower is better for log loss: positive means b, the sharp predictions, is better
    assert difference == pytest.approx(log_loss.score(y, vague) - log_loss.score(y, sharp)) and difference > 0.3
    assert 0 < p < 0.01  # sharp wins every resample, and a finite bootstrap never claims p = 0
    assert paired_test(log_loss, y, vague, vague.copy()) == (0.0, 1.0)


@pytest.mark.parametrize("name", ["log_loss", "bce"])
def test_a_mean_over_clips_is_bootstrapped_from_its_per_clip_values_exactly_as_by_rescoring(name: str) -> None:
    """Resampling the clips' values gives the rescoring bootstrap's p, on a difference too small to be sure of."""
    import dataclasses

    rng = np.random.default_rng(1)
    metric = METRICS[name]
    if name == "bce":
        y = (rng.random((300, 4)) < 0.3).astype(float)
        a = rng.random((300, 4))
    else:
        y = rng.integers(0, 3, 300)
        a = rng.dirichlet([1, 1, 1], 300)
    b = np.clip(a + rng.normal(0, 0.03, a.shape), 0.01, 0.99)
    assert metric.per_clip(y, a).mean() == pytest.approx(metric.score(y, a), rel=1e-12)
    fast, rescored = paired_test(metric, y, a, b), paired_test(dataclasses.replace(metric, per_clip=None), y, a, b)
    assert fast[0] == rescored[0] and fast[1] == pytest.approx(rescored[1]) and 0.01 < fast[1] < 1


# The answer file

def fmt(**keys: object):
    return OmegaConf.merge(OmegaConf.structured(SubmissionConfig), keys)


def test_gender_answer_is_id_tab_label_lines_only(tmp_path: Path) -> None:
    section = yaml.safe_load((REPO / "experiments" / "_contests" / "demo_gender.yaml").read_text())["submission"]
    gender = fmt(**section)
    path = tmp_path / "answer.tsv"
    write_answer(path, ["f2", "f1", "m1"], ["1", "1", "0"], ["m1", "f1", "f2"], ["0", "1"], gender)
    assert path.read_bytes() == b"f2\t1\nf1\t1\nm1\t0\n"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_words_answer_has_its_header_and_file_names(tmp_path: Path) -> None:
    section = yaml.safe_load((REPO / "experiments" / "_contests" / "demo_words.yaml").read_text())["submission"]
    text = render_answer(["clip_0", "clip_1"], ["yes", "no"], ["no", "yes"], fmt(**section))
    assert text == "fname,label\nclip_0.wav,yes\nclip_1.wav,no\n"


@pytest.mark.parametrize("rows,expected", [
    ("a,x\nb,y\n", "1 test ids missing (c)"),
    ("a,x\nb,y\nc,x\nc,y\n", "1 ids on more than one line (c)"),
    ("a,x\nb,y\nc,x\nd,x\n", "1 ids that are not test clips (d)"),
    ("a,x\nb,y\nc,z\n", "labels that are not classes (z)"),
    ("a,x\nb,y,1\nc,x\n", "lines are not <id>','<label>"),
    ("a,x\n\nb,y\nc,x\n", "lines are not <id>','<label>"),
])
def test_answer_check_names_what_is_wrong(rows: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_answer("id,label\n" + rows, ["a", "b", "c"], ["x", "y"], fmt(), "answer.csv")
    check_answer("id,label\na,x\nb,y\nc,x\n", ["a", "b", "c"], ["x", "y"], fmt(), "answer.csv")


def test_answer_check_wants_the_contests_header_and_suffix() -> None:
    with pytest.raises(UserError, match="header"):
        check_answer("a,x\nb,y\n", ["a", "b"], ["x", "y"], fmt(), "answer.csv")
    with pytest.raises(UserError, match="missing"):
        check_answer("id,label\na,x\nb,y\n", ["a", "b"], ["x", "y"], fmt(id_suffix=".wav"), "answer.csv")


def test_refused_answer_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="delimiter"):  # an id with a comma would shift the columns
        write_answer(tmp_path / "a.csv", ["a,b"], ["x"], ["a,b"], ["x"], fmt())
    assert not list(tmp_path.iterdir())


# The CLI on hand-made fold outputs: one experiment, three folds, a five-clip holdout whose ladder is known

CLASSES = ["down", "go", "up"]
HOLDOUT_Y = [0, 1, 2, 0, 1]
LADDER = np.array([  # plain-view probabilities of the holdout clips A..E by fold model
    [[.7, .2, .1], [.5, .45, .05], [.3, .4, .3], [.8, .1, .1], [.2, .7, .1]],
    [[.6, .3, .1], [.5, .45, .05], [.3, .4, .3], [.8, .1, .1], [.2, .3, .5]],
    [[.3, .6, .1], [0., 1., 0.], [.3, .4, .3], [.8, .1, .1], [.1, .8, .1]],
])
# single folds 3/5, 2/5, 3/5; hard vote 3/5 (B: two votes for the wrong class); soft 4/5 (B: summed probability);
# the second view sees C right, so soft + TTA gets 5/5 and hard + TTA 4/5
EXPECTED = {"fold 0": 0.6, "fold 1": 0.4, "fold 2": 0.6, "hard": 0.6, "soft": 0.8, "hard+tta": 0.8, "soft+tta": 1.0}
TEST_IDS = [f"t{i}" for i in range(5)]


def write_predictions(path: Path, ids: list[str], views: dict[str, np.ndarray], labels: list[str] | None,
                      classes: list[str]) -> None:
    """Long format as train.py writes it: id, view, [label,] one column per class."""
    frames = []
    for view, probs in views.items():
        frame = pd.DataFrame({"id": ids, "view": view, **({"label": labels} if labels else {})})
        frames.append(pd.concat([frame, pd.DataFrame(probs[:len(ids)], columns=classes)], axis=1))
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)


def write_contest_data(root: Path) -> None:
    """Real clips of the three classes by six speakers, and the five test clips, so that the folds' inputs can be
    fingerprinted as training would."""
    for c, label in enumerate(CLASSES):
        for speaker in range(6):
            write_clip(root / "data" / "train" / label / f"s{speaker}_nohash_0.wav", tone(300 * (c + 1), 8000, 0.1), 8000)
    for i, clip in enumerate(TEST_IDS):
        write_clip(root / "data" / "test" / f"{clip}.wav", tone(300 * (i % 3 + 1), 8000, 0.1), 8000)


def write_fold(root: Path, exp: str, k: int, data: str = "w", classes: list[str] = CLASSES,
               test_ids: list[str] | None = TEST_IDS, ladder: np.ndarray | None = LADDER,
               oof: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Path:
    """A finished fold as train.py leaves it: DONE, resolved config, the record of what it was made from (the
    current inputs), oof/holdout/test csv with two views and mean; without test ids the contest has no test set,
    without a ladder no holdout; `oof` (true classes, plain view, second view) replaces three clips both views get
    right."""
    from competition.config import load_experiment
    from competition.foldrun import record
    from competition.train import load_data

    fold_dir = root / "experiments" / exp / f"fold_{k}"
    fold_dir.mkdir(parents=True)
    (root / "experiments" / exp / "config.yaml").write_text(f"""
data:
  name: {data}
  cache_dir: {root / "cache"}
  train: {{path: {root / "data" / "train"}, layout: class_folders, filename_regex: '(?P<group>[^_]+)_nohash_\\d+'}}
  test: {f"{{path: {root / 'data' / 'test'}}}" if test_ids else "null"}
audio: {{sample_rate: 8000}}
folds: {{n_splits: 3, holdout: 0.2}}
tta: {{views: [plain, "gain:-6"]}}
submission: {{id_column: fname, label_column: label, id_suffix: .wav}}
""")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        exp_ = load_experiment(exp)
        OmegaConf.save(exp_.cfg, fold_dir / "config.yaml")
        record(fold_dir, load_data(exp_).inputs)
    if oof is None:
        oof_y = np.array([(k + j) % 3 for j in range(3)])
        oof = (oof_y, np.eye(3)[oof_y] * 0.7 + 0.1, np.eye(3)[oof_y] * 0.7 + 0.1)
    oof_y, plain, second = oof
    write_predictions(fold_dir / "oof.csv", [f"c{k}_{j}" for j in range(len(oof_y))],
                      {"plain": plain, "gain:-6": second, "mean": (plain + second) / 2}, [classes[c] for c in oof_y],
                      classes)
    if ladder is not None:
        plain = ladder[k]
        second = plain.copy()
        second[2] = [.1, .2, .7]
        views = {"plain": plain, "gain:-6": second, "mean": (plain + second) / 2}
        write_predictions(fold_dir / "holdout.csv", list("ABCDE"), views, [classes[c] for c in HOLDOUT_Y], classes)
        if test_ids:
            write_predictions(fold_dir / "test.csv", test_ids, views, None, classes)
    (fold_dir / "DONE").write_text(json.dumps({"classes": classes, "best_epoch": 1, "tta_views": ["plain", "gain:-6"],
                                               "experiment": exp, "fold": k}))
    return fold_dir


@pytest.fixture
def contest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_contest_data(tmp_path)
    for k in range(3):
        write_fold(tmp_path, "a", k)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def blend_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    return run_verb(capsys, blend, *args)


def test_holdout_ladder_single_hard_soft_tta(contest: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = blend_cli(capsys, "method=soft+tta")
    assert code == 0, err
    report = json.loads((contest / "submissions" / "w-soft+tta.json").read_text())
    holdout = {row["method"]: row["holdout"] for row in report["table"] if row["scope"] == "a"}
    assert {key: holdout[key] for key in EXPECTED} == pytest.approx(EXPECTED)
    assert report["method"] == "soft+tta" and report["scores"]["holdout"] == 1.0 and report["weights"] == {"a": 1.0}
    assert report["chosen_by"] == "method=" and report["decision"] == []
    assert report["confusion"]["on"] == "holdout" and np.trace(report["confusion"]["matrix"]) == 5
    assert "soft+tta *" in out and "fold 1" in out
    answer = (contest / "submissions" / "w-soft+tta.csv").read_text()
    assert answer == "fname,label\nt0.wav,down\nt1.wav,go\nt2.wav,up\nt3.wav,down\nt4.wav,go\n"
    markdown = (contest / "submissions" / "w-soft+tta.md").read_text()
    assert "| a | soft+tta * | 1.0000 |  | 1.0000 |  |" in markdown
    for suffix in ("scores.png", "confusion.png"):
        assert (contest / "submissions" / f"w-soft+tta.{suffix}").stat().st_size > 1000

    code, out, err = blend_cli(capsys, "method=hard", "name=voted")
    assert code == 0, err
    assert (contest / "submissions" / "voted.csv").read_text().splitlines()[2] == "t1.wav,down"  # B: the majority

    # by default the OOF decides, where both views agree on every clip: soft, however well TTA does on the holdout
    code, out, err = blend_cli(capsys)
    assert code == 0, err
    report = json.loads((contest / "submissions" / "w-soft.json").read_text())
    assert report["method"] == "soft" and report["scores"]["holdout"] == 0.8 and report["chosen_by"] == "auto"
    assert report["decision"][0] == {
        "candidate": "soft+tta", "against": "soft", "oof_candidate": 1.0, "oof_against": 1.0, "difference": 0.0,
        "p_value": 1.0, "test": "McNemar", "kept": "soft"}
    assert "TTA: soft+tta OOF 1.0000 vs soft 1.0000 (+0.0000, McNemar p=1): within noise, kept the simpler soft" in out
    assert "a      soft *" in out and "  written: soft" in out


def test_existing_answer_is_kept_unless_overwrite(contest: Path, capsys: pytest.CaptureFixture) -> None:
    assert blend_cli(capsys, "name=first")[0] == 0
    before = (contest / "submissions" / "first.csv").read_text()
    code, _, err = blend_cli(capsys, "name=first", "method=rank")
    assert code == 2 and "overwrite=true" in error_line(err)
    assert (contest / "submissions" / "first.csv").read_text() == before
    assert blend_cli(capsys, "name=first", "method=hard", "overwrite=true")[0] == 0


def test_blend_of_two_experiments_fits_weights(contest: Path, capsys: pytest.CaptureFixture) -> None:
    shuffled = LADDER[:, [1, 0, 3, 4, 2]]  # b sees other clips: a worse model of the same contest
    for k in range(3):
        write_fold(contest, "b", k, ladder=shuffled)
    code, out, err = blend_cli(capsys, "method=caruana+tta")
    assert code == 0, err
    report = json.loads((contest / "submissions" / "w-caruana+tta.json").read_text())
    methods = {row["method"] for row in report["table"] if row["scope"] == "blend"}
    assert methods == {f"{m}{t}" for m in METHODS for t in ("", "+tta")}
    chosen = next(r for r in report["table"] if r["scope"] == "blend" and r["method"] == "caruana+tta")
    assert chosen["oof_nested"] is not None and sum(chosen["weights"].values()) == pytest.approx(1)
    assert "blend  caruana+tta *" in out


def remade_folds(root: Path) -> None:
    """A second experiment whose clips sit in other folds, as if the fold file had been remade in between."""
    for k in range(3):
        write_fold(root, "b", k)
    b = root / "experiments" / "b"
    (b / "fold_0").rename(b / "fold_x")
    (b / "fold_1").rename(b / "fold_0")
    (b / "fold_x").rename(b / "fold_1")


@pytest.mark.parametrize("setup,args,expected", [
    (remade_folds, [], "the fold file was remade"),
    (lambda root: write_fold(root, "b", 0, data="other"), [], "different fold files"),
    (lambda root: write_fold(root, "b", 0, classes=["down", "go", "left"]), [], "other classes"),
    (lambda root: write_fold(root, "b", 0, test_ids=TEST_IDS[:4]), [], "different test ids"),
    (lambda root: (root / "experiments" / "a" / "fold_2").rename(root / "experiments" / "a" / "fold_2.partial"),
     ["missing=fail"], "fold 2 unfinished"),
    (lambda root: (root / "experiments" / "a" / "fold_1" / "test.csv").write_text(
        (root / "experiments" / "a" / "fold_1" / "test.csv").read_text().replace("0.7", "nan", 1)), [], "NaN"),
    (lambda root: None, ["exps=nope"], "'nope' not found"),
    (lambda root: None, ["method=median"], "method=median is unknown"),
    (lambda root: None, ["missing=maybe"], "missing=maybe"),
    (lambda root: None, ["name=../x"], "plain file name"),
    (lambda root: None, ["train.lr=1"], "not a blend option"),
    (lambda root: None, ["submission.header=maybe"], "submission"),
    (lambda root: write_clip(root / "data" / "test" / "t9.wav", tone(500, 8000, 0.1), 8000), [],
     "a fold 0: the test clips changed"),
])
def test_bad_input_gets_one_line(contest: Path, capsys: pytest.CaptureFixture, setup, args: list[str],
                                 expected: str) -> None:
    setup(contest)
    code, _, err = blend_cli(capsys, *args)
    assert code == 2 and expected in error_line(err)
    assert not list(contest.glob("submissions/*"))  # neither answer nor report


def test_no_finished_experiments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "experiments" / "x" / "fold_0.partial").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code, _, err = blend_cli(capsys)
    assert code == 2 and "no finished experiments" in error_line(err)


def test_unfinished_fold_is_left_out_and_reported(contest: Path, capsys: pytest.CaptureFixture) -> None:
    (contest / "experiments" / "a" / "fold_2").rename(contest / "experiments" / "a" / "fold_2.partial")
    code, out, err = blend_cli(capsys)
    assert code == 0, err
    assert "a: fold 2 unfinished" in out and "fold 2  " not in out
    report = json.loads((contest / "submissions" / "w-soft.json").read_text())
    assert report["members"][0]["folds"] == [0, 1] and "fold 2 unfinished" in report["members"][0]["left_out"][0]


def test_without_holdout_or_test_set_only_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    write_contest_data(tmp_path)
    for k in range(3):
        write_fold(tmp_path, "a", k, test_ids=None, ladder=None)
    monkeypatch.chdir(tmp_path)
    code, out, err = blend_cli(capsys, "method=hard")
    assert code == 0, err
    assert "answer file: none (no test set" in out
    assert sorted(p.name for p in (tmp_path / "submissions").iterdir()) == [
        "w-hard.confusion.png", "w-hard.json", "w-hard.md", "w-hard.scores.png"]
    report = json.loads((tmp_path / "submissions" / "w-hard.json").read_text())
    assert report["confusion"]["on"] == "OOF" and report["n_holdout"] is None and report["scores"]["holdout"] is None
    assert report["scores"]["oof"] == pytest.approx(1.0)  # every OOF clip is predicted right
    assert blend_cli(capsys, "method=hard")[0] == 2  # the report alone is not overwritten either


def test_format_override_on_the_command_line(contest: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = blend_cli(capsys, "name=tab", 'submission.delimiter="\\t"', "submission.header=false",
                             'submission.id_suffix=""', "submission.extension=tsv")
    assert code == 0, err
    assert (contest / "submissions" / "tab.tsv").read_text().splitlines() == [  # soft: the views agree on OOF
        "t0\tdown", "t1\tgo", "t2\tgo", "t3\tdown", "t4\tgo"]


def tta_oof(k: int, fixed: int, broken: int, n: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold k's n OOF clips: true classes, a plain view right on 85% of them (0.45 to 0.9 sure), and a second view
    that puts the TTA mean right on `fixed` clips the plain view gets wrong and wrong on `broken` clips it gets
    right: 0.98 sure, so that the mean gives its class at least 0.49, the other view's at most 0.455."""
    rng = np.random.default_rng(k)
    y = rng.integers(0, 3, n)
    wrong = int(0.15 * n)
    sure = rng.uniform(0.45, 0.9, (n, 1))
    plain = np.eye(3)[np.where(np.arange(n) < wrong, (y + 1) % 3, y)] * (1.5 * sure - 0.5) + (1 - sure) / 2
    second = plain.copy()
    second[:fixed] = np.eye(3)[y[:fixed]] * 0.97 + 0.01
    second[wrong:wrong + broken] = np.eye(3)[(y[wrong:wrong + broken] + 1) % 3] * 0.97 + 0.01
    return y, plain, second


@pytest.mark.parametrize("fixed,broken,written,verdict", [
    (50, 10, "soft+tta", "kept soft+tta"),  # TTA helps: 150 clips put right, 30 wrong
    (10, 50, "soft", "kept soft"),  # TTA hurts
    (17, 13, "soft", "within noise, kept the simpler soft"),  # TTA 0.4 points better, which 3000 clips cannot tell
])
def test_auto_keeps_tta_only_when_the_oof_shows_it_better(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, fixed: int, broken: int,
                                                         written: str, verdict: str) -> None:
    write_contest_data(tmp_path)
    for k in range(3):
        write_fold(tmp_path, "a", k, oof=tta_oof(k, fixed, broken))
    monkeypatch.chdir(tmp_path)
    code, out, err = blend_cli(capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "submissions" / f"w-{written}.json").read_text())
    assert report["method"] == written and report["chosen_by"] == "auto" and report["n_oof"] == 3000
    tta, *others = report["decision"]
    # one member: each OOF clip has one model, so of the other combiners only rank (which works across clips) is judged
    assert [(step["candidate"], step["against"], step["kept"]) for step in others] == [
        (f"rank{written[4:]}", written, written)]
    gain = (fixed - broken) / 1000
    assert tta == {"candidate": "soft+tta", "against": "soft", "oof_candidate": pytest.approx(0.85 + gain),
                   "oof_against": pytest.approx(0.85), "difference": pytest.approx(gain),
                   "p_value": pytest.approx(binomtest(3 * fixed, 3 * (fixed + broken)).pvalue), "test": "McNemar",
                   "kept": written}
    line = next(line.strip() for line in out.splitlines() if line.strip().startswith("TTA: "))
    assert line.endswith(f"McNemar p={tta['p_value']:.2g}): {verdict}")
    markdown = (tmp_path / "submissions" / f"w-{written}.md").read_text()
    assert f"  - {line}" in markdown and f"  - written: {written}" in markdown and f"| a | {written} * |" in markdown
    assert (tmp_path / "submissions" / f"w-{written}.csv").is_file()


def member_oof(y: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """A model right on about `accuracy` of the clips, its confidence varying from clip to clip."""
    rng = np.random.default_rng(seed)
    predicted = np.where(rng.random(len(y)) < accuracy, y, (y + rng.integers(1, 3, len(y))) % 3)
    logits = 2 * np.eye(3)[predicted] + rng.normal(0, 0.5, (len(y), 3))
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_fitted_weights_within_noise_of_equal_ones_are_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Two experiments, one a little better: the weights fitted to lean on it beat equal ones in sample, but on
    nested CV by no more than 3000 clips can tell apart."""
    write_contest_data(tmp_path)
    for seed, (name, accuracy) in enumerate((("a", 0.80), ("b", 0.78))):
        for k in range(3):
            y = np.random.default_rng(k).integers(0, 3, 1000)
            probs = member_oof(y, accuracy, seed=10 * k + seed)
            write_fold(tmp_path, name, k, oof=(y, probs, probs))
    monkeypatch.chdir(tmp_path)
    code, out, err = blend_cli(capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "submissions" / "w-soft.json").read_text())
    rows = {row["method"]: row for row in report["table"] if row["scope"] == "blend"}
    assert rows["caruana"]["oof"] > rows["soft"]["oof"]  # the best-scoring row would have been the fitted one
    weighted = {step["candidate"]: step for step in report["decision"] if step["candidate"] in ("caruana", "scipy")}
    assert set(weighted) == {"caruana", "scipy"}
    for step in weighted.values():
        assert step["against"] == "soft" and step["kept"] == "soft" and step["p_value"] >= evidence.ALPHA
        assert step["oof_candidate"] == pytest.approx(rows[step["candidate"]]["oof_nested"])  # judged nested
    assert "weights: caruana nested OOF" in out and "blend  soft *" in out


def test_rank_is_not_offered_on_two_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """Four clips in five of class 0 and every model sure and right: ranks would call the top half of the clips
    class 1, 0.7 where every fold scores 1.0."""
    write_contest_data(tmp_path)
    y = (np.arange(100) % 5 == 0).astype(int)
    for k in range(3):
        go = np.where(y == 1, 0.9, 0.1) + np.random.default_rng(k).uniform(-0.05, 0.05, 100)
        probs = np.stack([1 - go, go], axis=1)
        write_fold(tmp_path, "a", k, classes=["down", "go"], test_ids=None, ladder=None, oof=(y, probs, probs))
    monkeypatch.chdir(tmp_path)
    assert (rank_average(probs[None], np.ones(1)).argmax(1) == y).mean() == 0.7  # the top 50 clips called 'go'
    assert (probs.argmax(1) == y).mean() == 1.0
    code, out, err = blend_cli(capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "submissions" / "w-soft.json").read_text())
    assert {row["method"] for row in report["table"] if not row["method"].startswith("fold")} == {
        "hard", "soft", "geometric", "hard+tta", "soft+tta", "geometric+tta"}
    assert "rank" not in out and all("rank" not in step["candidate"] for step in report["decision"])
    for method in ("rank", "rank+tta"):
        code, _, err = blend_cli(capsys, f"method={method}")
        assert code == 2 and "on two classes" in error_line(err) and "use method=soft" in error_line(err)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_classes", [2, 4])
def test_a_stackers_network_gives_what_sklearn_predicts(n_classes: int) -> None:
    """Logistic regression and an MLP, fitted by sklearn on members' log-probabilities, carried as plain lists: the
    probabilities they give are sklearn's own, two classes (one logistic unit) included."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 400)
    probs = rng.dirichlet(np.ones(n_classes), size=(2, 400)) + np.eye(n_classes)[y]  # two members, both mostly right
    probs /= probs.sum(2, keepdims=True)
    features = stack_features(probs)
    logistic = LogisticRegression(max_iter=500).fit(features, y)
    mlp = MLPClassifier(hidden_layer_sizes=(8, 5), max_iter=100, random_state=0).fit(features, y)
    for network, model in ((as_network([logistic.coef_.T], [logistic.intercept_], logistic.classes_), logistic),
                           (as_network(mlp.coefs_, mlp.intercepts_, mlp.classes_), mlp)):
        network = json.loads(json.dumps(network))  # as a report or a bundle carries it
        assert np.allclose(apply_stacker(probs, network), model.predict_proba(features), atol=1e-10)


def stacking_contest(root: Path, members: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]],
                     clips: int, classes: list[str] = CLASSES) -> None:
    """Three folds of `clips` OOF clips per member, each member's probabilities made from the true classes; the
    holdout and test clips of the three-class contest only with its classes."""
    write_contest_data(root)
    for k in range(3):
        y = np.random.default_rng(k).integers(0, len(classes), clips)
        for seed, (name, make) in enumerate(members.items()):
            probs = make(y, np.random.default_rng(100 * k + seed))
            other = {} if classes == CLASSES else {"ladder": None, "test_ids": None}
            write_fold(root, name, k, classes=classes, oof=(y, probs, probs), **other)


def confused(wrong_on: int, says: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """A member right on every class but one, whose clips it calls `says`, surely (0.9), while it is less sure (0.6)
    where it is right: what soft voting cannot undo and a stacker can learn."""
    def predict(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        called = np.where(y == wrong_on, says, y)
        probs = np.where(y == wrong_on, 0.9, 0.6)[:, None] * np.eye(3)[called]
        probs += (1 - probs.sum(1, keepdims=True)) / 2 * (1 - np.eye(3)[called])
        probs = probs * rng.uniform(0.9, 1.1, probs.shape)
        return probs / probs.sum(1, keepdims=True)
    return predict


def test_stacking_wins_where_members_err_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """a calls class 2 clips 1, b calls class 0 clips 2, both surely: soft, weights and geometric mean stay wrong on
    those, a stacker learns to read each through the other. auto writes a stacker on its nested OOF score."""
    stacking_contest(tmp_path, {"a": confused(2, 1), "b": confused(0, 2)}, clips=200)
    monkeypatch.chdir(tmp_path)
    code, out, err = blend_cli(capsys, "name=auto")
    assert code == 0, err
    report = json.loads((tmp_path / "submissions" / "auto.json").read_text())
    rows = {row["method"]: row for row in report["table"] if row["scope"] == "blend"}
    assert rows["soft"]["oof"] < 0.8 and rows["caruana"]["oof_nested"] < 0.8 and rows["geometric"]["oof"] < 0.8
    assert rows["stack"]["oof_nested"] > 0.95 and rows["stack_mlp"]["oof_nested"] > 0.95
    assert report["method"] in ("stack", "stack_mlp") and report["chosen_by"] == "auto"
    step = next(step for step in report["decision"] if step["candidate"] == report["method"])
    assert step["kept"] == report["method"] and step["p_value"] < evidence.ALPHA
    assert report["scores"]["oof_nested"] == pytest.approx(step["oof_candidate"])  # the nested score, reported
    assert report["stacker"]["layers"] and report["weights"] == {"a": 0.5, "b": 0.5}
    markdown = (tmp_path / "submissions" / "auto.md").read_text()
    assert f"stacker: {report['method']} nested OOF" in markdown and "- stacker: 6 inputs" in markdown



def test_stacking_loses_to_soft_on_too_few_clips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Three members whose errors are independent noise, ten classes and 20 OOF clips a fold: a stacker has 30
    features to fit on 40 clips and nothing to learn that averaging does not do, so its nested score falls below
    soft's and auto keeps soft."""
    classes = [f"c{i}" for i in range(10)]

    def noisy(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        predicted = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 10, len(y)))
        logits = 2 * np.eye(10)[predicted] + rng.normal(0, 0.7, (len(y), 10))
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    stacking_contest(tmp_path, {"a": noisy, "b": noisy, "c": noisy}, clips=20, classes=classes)
    monkeypatch.chdir(tmp_path)
    code, out, err = blend_cli(capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "submissions" / "w-soft.json").read_text())
    rows = {row["method"]: row for row in report["table"] if row["scope"] == "blend"}
    for stacker in ("stack", "stack_mlp"):
        assert rows[stacker]["oof_nested"] < rows["soft"]["oof"] - 0.05, (stacker, rows[stacker], rows["soft"])
        assert rows[stacker]["oof"] > rows[stacker]["oof_nested"]  # in sample it flatters itself
        step = next(step for step in report["decision"] if step["candidate"] == stacker)
        assert step["kept"] == "soft"
    assert report["method"] == "soft" and report["stacker"] is None


# End to end on really trained folds: the tones contest, two folds with two TTA views, and a copy of them as a second
# experiment (training a second one would double the test's time; the hand-made folds above cover different members)

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from competition.config import load_experiment
    from competition.train import train_fold

    root = tmp_path_factory.mktemp("blend")
    write_tones_data(root)
    write_tones_experiment(root, audio={"duration": 0.5}, folds={"n_splits": 2},
                           frontend={"n_mels": 16, "hop_length": 128}, train={"epochs": 1},
                           tta={"views": ["plain", "gain:-6"]})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for fold in range(2):
            train_fold(load_experiment("tones"), fold, "cpu")
    shutil.copytree(root / "experiments" / "tones", root / "experiments" / "tones_copy")
    return root


def test_blend_cli_on_trained_folds(trained: Path) -> None:
    result = run_here("competition.blend", cwd=trained)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    [path] = (trained / "submissions").glob("tones-*.json")
    report = json.loads(path.read_text())
    label = report["method"]  # auto's choice, whichever the 54 OOF clips support
    assert report["decision"][0]["candidate"] == "soft+tta" and label in {step["kept"] for step in report["decision"]}
    assert path.name == f"tones-{label}.json" and f"  written: {label}" in lines
    for scope, method in [("tones", "fold 0"), ("tones", "fold 1"), ("tones_copy", "hard"), ("tones", "soft+tta"),
                          ("blend", "caruana"), ("blend", "scipy+tta"), ("blend", f"{label} *")]:
        assert any(line.split("  ")[0].strip() == scope and f" {method} " in f"{line} " for line in lines), method
    answer = (trained / "submissions" / f"tones-{label}.csv").read_text().splitlines()
    assert answer[0] == "id,label" and len(answer) == 7
    assert sorted(line.split(",")[0] for line in answer[1:]) == [f"clip_{i}" for i in range(6)]
    assert {line.split(",")[1] for line in answer[1:]} <= {"high", "low", "mid"}
    assert [m["experiment"] for m in report["members"]] == ["tones", "tones_copy"]
    assert report["n_holdout"] == 18 and report["n_oof"] == 54
    holdout_rows = {(r["scope"], r["method"]) for r in report["table"] if r["holdout"] is not None}
    assert {("tones", "fold 0"), ("tones", "hard"), ("tones", "soft"), ("tones", "soft+tta")} <= holdout_rows
    for suffix in ("md", "scores.png", "confusion.png"):
        assert (trained / "submissions" / f"tones-{label}.{suffix}").is_file()


def test_a_stacked_answer_is_reproduced_by_predict_and_from_a_bundle(trained: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """The stacker a blend fitted travels in its report to predict, and in a bundle: each member's fold ensemble on
    the test clips, in the order it was fitted in whatever order exps= gives, answers as the blend did."""
    import shutil

    from competition import pack

    shutil.copytree(trained, tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    code, _, err = blend_cli(capsys, "exps=tones,tones_copy", "method=stack+tta", "name=stacked")
    assert code == 0, err
    report = json.loads(Path("submissions/stacked.json").read_text())
    assert report["method"] == "stack+tta" and len(report["stacker"]["layers"][0]["weight"]) == 2 * 3
    blended = Path("submissions/stacked.csv").read_text()
    code, _, err = run_verb(capsys, predict, "exps=tones_copy,tones", "blend=stacked", "test=data/test", "name=again")
    assert code == 0, err
    assert Path("submissions/again-stack+tta.csv").read_text() == blended
    assert run_verb(capsys, pack, "exps=tones,tones_copy", "blend=stacked", "out=bundle.zip")[0] == 0
    code, _, err = run_verb(capsys, predict, "bundle=bundle.zip", "test=data/test", "name=bundled")
    assert code == 0, err
    assert Path("submissions/bundled-stack+tta.csv").read_text() == blended
    code, _, err = run_verb(capsys, predict, "exps=tones,tones_copy", "method=stack", "test=data/test")
    assert code == 2 and "has a stacker fitted on OOF predictions" in error_line(err)
