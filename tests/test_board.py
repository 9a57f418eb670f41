"""The project board (python -m competition.board) of a real small project: the tones contest trained on three
folds, blended, an answer logged with a leaderboard score; its page read as files and in a real headless browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import error_line, run_here, train_every_fold, write_tones_data, write_tones_experiment

REPO = Path(__file__).resolve().parents[1]
# A console message as chromium logs it with --enable-logging=stderr --v=0, whatever its level (console.error is
# logged at INFO too): `[pid:tid:date:INFO:CONSOLE:2] "text", source: file:///... (2)`; older versions wrote
# `INFO:CONSOLE(2)]`.
CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\]")
# A study's trials.csv as competition.tune writes it (best first there; shuffled here so that the board's own ordering
# is what is checked): number, state, value, the searched keys, seconds, user attributes.
TRIALS = """number,state,value,train.lr,seconds,baseline,error
3,COMPLETE,0.61,0.02,4.1,,
0,COMPLETE,0.55,0.01,4.0,True,
5,PRUNED,0.99,1e-07,1.2,,
1,COMPLETE,0.72,0.03,4.2,,
6,FAIL,,0.5,0.3,,worker died
2,COMPLETE,0.33,1e-07,4.0,,
4,COMPLETE,0.70,0.015,4.3,,
7,COMPLETE,0.40,0.005,4.4,,
"""


class Page(HTMLParser):
    """The tables (rows of cell texts, by id or position), image sources and text of a board page."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._style = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append((attrs.get("id") or "", []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])
        self._style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None
        self._style = False

    def handle_data(self, data: str) -> None:
        if not self._style:
            self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header: str = "", ident: str = "") -> list[dict[str, str]]:
        for name, rows in self.tables:
            if (ident and name == ident) or (not ident and rows and rows[0][0] == first_header):
                return [dict(zip(rows[0], row)) for row in rows[1:]]
        raise AssertionError(f"no table {ident or first_header!r} on the page")

    @property
    def all_text(self) -> str:
        return " ".join("".join(self.text).split())


def read_page(root: Path) -> Page:
    return Page((root / "board" / "index.html").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tones contest (what conftest's `tones` fixture writes, built once for the module): experiment "tones"
    trained on its three folds, blended into a logged answer with a leaderboard score, an interrupted retrain of fold
    2, a tuning study's results, and the board built."""
    root = tmp_path_factory.mktemp("board")
    write_tones_data(root)
    write_tones_experiment(root, "tones", train={"epochs": 2})
    train_every_fold(root, "tones")
    blend = run_here("competition.blend", "exps=tones", cwd=root)
    assert blend.returncode == 0, blend.stderr
    answer = re.search(r"answer file: (\S+)", blend.stdout).group(1)
    before = os.getcwd()
    os.chdir(root)
    try:
        from competition.leaderboard import record_lb

        record_lb(Path(answer), 0.9)
    finally:
        os.chdir(before)
    exp = root / "experiments" / "tones"
    (exp / "fold_2.partial").mkdir()  # a retrain of fold 2 stopped after its first epoch
    (exp / "fold_2.partial" / "metrics.csv").write_text("\n".join((exp / "fold_2" / "metrics.csv").read_text()
                                                                  .splitlines()[:2]) + "\n")
    study = exp / "tune" / "tones"
    study.mkdir(parents=True)
    (study / "trials.csv").write_text(TRIALS)
    shutil.copyfile(exp / "fold_0" / "curves.png", study / "history.png")  # any PNG stands for the study's plot
    board = run_here("competition.board", cwd=root)
    assert board.returncode == 0, board.stderr
    assert "board/index.html" in board.stdout
    return root


def test_the_board_shows_folds_blend_submissions_and_study(project: Path) -> None:
    page = read_page(project)
    text = page.all_text
    assert "tones" in text
    folds = page.table("fold")
    assert [row["fold"] for row in folds] == ["0", "1", "2"]
    assert all(row["status"] == "current" for row in folds), folds
    for row in folds:
        done = json.loads((project / "experiments" / "tones" / f"fold_{row['fold']}" / "DONE").read_text())
        assert row["validation accuracy"] == f"{done['val_accuracy']:.4f}"
        assert row["holdout accuracy"] == f"{done['holdout_accuracy']:.4f}"
        assert row["best epoch"] == str(done["best_epoch"])
    assert "fold 2: unfinished (fold_2.partial, 1 epoch done; no checkpoint yet)" in text
    assert [row["epoch"] for row in page.table("epoch")] == ["1", "2"]  # fold 0's metrics.csv

    report = json.loads(next((project / "submissions").glob("*.json")).read_text())
    assert f"method: {report['method']}:" in text and "chosen by: auto" in text
    assert report["decision"] and "written: " + report["method"] in text
    assert any(row["method"] == report["method"] + " *" for row in page.table("scope"))

    answer = report["answer_file"].split()[0]
    submissions = page.table(ident="submissions-table")
    assert [(row["file"], row["LB"]) for row in submissions] == [(answer, "0.9000")]
    assert submissions[0]["OOF"] == f"{report['scores']['oof']:.4f}"

    trials = page.table("number")  # the study's best five complete trials, best accuracy first
    assert [row["number"] for row in trials] == ["1", "4", "3", "0", "7"]
    assert [row["accuracy"] for row in trials][:2] == ["0.7200", "0.7000"]

    board = (project / "board").resolve()
    assert "cv_vs_lb.png" in page.images
    assert len(page.images) == 3 + 2 + 1 + 1  # fold curves, blend charts, the study's plot, CV vs LB
    for src in page.images:
        path = (board / src).resolve()
        assert path.is_relative_to(board) and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(".board")) == []  # no build folder left


def test_stale_folds_show_as_stale_and_an_unreadable_experiment_as_one_line(project: Path, tmp_path: Path) -> None:
    """After training, the config's train.lr is changed: every fold is stale, with the command that retrains them. A
    second experiment whose training clips are gone cannot be checked: its line is shown, the rest of the board too."""
    root = tmp_path / "project"
    shutil.copytree(project, root)
    config = root / "experiments" / "tones" / "config.yaml"
    body = yaml.safe_load(config.read_text())
    body["train"]["lr"] = 0.02
    config.write_text(yaml.safe_dump(body))
    shutil.copytree(root / "experiments" / "tones", root / "experiments" / "moved")
    body["data"]["train"]["path"] = "gone/train"
    (root / "experiments" / "moved" / "config.yaml").write_text(yaml.safe_dump(body))
    board = run_here("competition.board", cwd=root)
    assert board.returncode == 0, board.stderr
    page = read_page(root)
    moved, tones = [rows for _, rows in page.tables if rows[0][0] == "fold"]
    assert [row[-1] for row in moved[1:]] == ["unknown"] * 3
    assert all(row[-1].startswith("stale (retrain: config changed: train.lr 0.01 -> 0.02") for row in tones[1:]), \
        tones
    text = page.all_text
    assert "python -m competition.run exp=tones fold=0,1,2 overwrite=true" in text
    assert "could not check whether the folds are current: gone/train: no such folder or zip" in text
    assert "0.9000" in text  # the submissions are still there
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".board")) == []  # the old board replaced


def chromium() -> str:
    """Debian's chromium; without it the test is skipped, saying why, except where COMPETITION_REQUIRE_EXTRAS=1 (set
    by CI) makes that a failure, as conftest's require_extra does for optional packages."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "needs a headless chromium (apt-get install chromium)"
        if os.environ.get("COMPETITION_REQUIRE_EXTRAS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def browse(page: Path, tmp_path: Path) -> tuple[str, list[str], Path]:
    """`page` loaded in headless chromium: its DOM after loading, the console messages it logged, and a
    1280x2000 screenshot."""
    screenshot = tmp_path / "screenshot.png"
    result = subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,2000",
                             f"--screenshot={screenshot}", "--dump-dom", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, [line for line in result.stderr.splitlines() if CONSOLE.search(line)], screenshot


def test_the_console_check_catches_a_console_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><script>console.error("deliberate failure")</script>'
                    "</body></html>")
    _, console, _ = browse(page, tmp_path)
    assert len(console) == 1 and '"deliberate failure"' in console[0], console


def test_the_board_in_a_real_browser(project: Path, tmp_path: Path) -> None:
    dom, console, screenshot = browse(project / "board" / "index.html", tmp_path)
    assert console == []
    assert "<h3 id=\"exp-tones\">tones</h3>" in dom
    assert '<table id="submissions-table">' in dom and "tones-soft.csv" in dom and "0.9000" in dom
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000


def test_an_empty_project_gets_a_page_that_says_so(tmp_path: Path) -> None:
    result = run_here("competition.board", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = read_page(tmp_path).all_text
    assert "Nothing to show yet: no experiments" in text
    assert "no answer file logged yet" in text
    assert list((tmp_path / "board").iterdir()) == [tmp_path / "board" / "index.html"]


def test_every_value_from_the_files_is_escaped(tmp_path: Path) -> None:
    evil = '<script>console.error("x")</script>&"'
    folder = tmp_path / "experiments" / evil.replace("/", "") / "fold_0"
    folder.mkdir(parents=True)
    (folder / "DONE").write_text(json.dumps({"classes": [evil], "best_epoch": evil, "seconds": evil}))
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "b.json").write_text(json.dumps({
        "method": evil, "definition": evil, "chosen_by": "auto", "decision": [{"candidate": evil}], "metric": evil,
        "scores": {"oof": evil}, "weights": {evil: evil}, "members": [{"experiment": evil, "folds": [evil]}],
        "table": [{"scope": evil, "method": evil, "oof": evil, "fitted": evil}]}))
    result = run_here("competition.board", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "board" / "index.html").read_text()
    assert "<script" not in page and page.count("&lt;script&gt;") >= 10
    assert "could not check whether the folds are current" in page


@pytest.mark.parametrize("args, expected", [
    (["port=http"], "port=http: expected a port number from 0 to 65535"),
    (["port=70000"], "port=70000: expected a port number"),
    (["serve=maybe"], "serve=maybe: expected true or false"),
    (["colour=red"], "unknown key 'colour'; keys are out, serve, port"),
    (["board"], "argument 'board' is not key=value"),
    (["out=data"], "out=data: exists and is not a board made by this command; it is kept"),
])
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    result = run_here("competition.board", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert expected in error_line(result.stderr)
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_serve_serves_the_board_until_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "competition.board", "serve=true", "port=0"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert process.stdout.readline().strip() == "board: board/index.html"
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == (tmp_path / "board" / "index.html").read_bytes()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
