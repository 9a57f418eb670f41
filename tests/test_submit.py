"""python -m competition.submit: a logged answer file uploaded through the Kaggle client (a fake one here, on PATH),
or its public leaderboard score recorded, in submissions/log.csv; every missing step is one line."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import competition.submit as submit
from competition.leaderboard import log_answer, read_log
from conftest import error_line, run_here

ANSWER = Path("submissions/tones-soft.csv")
SLUG = "birdclef-2025"


@pytest.fixture
def answer(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small answer file logged as blend logs one, with no Kaggle client on PATH, an empty HOME and no KAGGLE_*."""
    ANSWER.parent.mkdir()
    ANSWER.write_text("fname,label\nclip_0.wav,low\nclip_1.wav,mid\n")
    log_answer(ANSWER, Path("submissions/tones-soft.md"), ["tones", "tones-b"], "accuracy", 0.912345, 0.9)
    (workdir / "bin").mkdir()
    (workdir / "home").mkdir()
    monkeypatch.setenv("PATH", str(workdir / "bin"))
    monkeypatch.setenv("HOME", str(workdir / "home"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "KAGGLE_COMPETITION",
                 "KAGGLE_ENABLE_OAUTH", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return ANSWER


def fake_client(root: Path, code: int = 0, stdout: str = "Successfully submitted", stderr: str = "",
                body: str = "") -> Path:
    """bin/kaggle: records its arguments (NUL-separated) in kaggle-args, prints `stdout` and `stderr`, exits `code`."""
    script = root / "bin" / "kaggle"
    script.write_text(f"#!/bin/sh\nfor arg in \"$@\"; do printf '%s\\0' \"$arg\"; done > '{root / 'kaggle-args'}'\n"
                      f"{body}\nprintf '%s\\n' '{stdout}'\nprintf '%s\\n' '{stderr}' >&2\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def client_args(root: Path) -> list[str] | None:
    """The fake client's arguments, or None when it was not run."""
    path = root / "kaggle-args"
    return path.read_text().split("\0")[:-1] if path.exists() else None


def credentials(root: Path) -> None:
    (root / "home" / ".kaggle").mkdir()
    (root / "home" / ".kaggle" / "kaggle.json").write_text('{"username": "someone", "key": "0123abcd"}')


def row() -> dict[str, str]:
    log = read_log()
    assert len(log) == 1
    return log.iloc[0].to_dict()


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_here("competition.submit", *args, cwd=workdir)


def test_lb_records_the_score_against_the_logged_row_and_a_second_replaces_it(answer, workdir):
    result = run(workdir, str(answer), "lb=0.91")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert str(answer) in result.stdout and "OOF 0.912345" in result.stdout and "holdout 0.9" in result.stdout
    assert "LB 0.91" in result.stdout
    assert row()["lb"] == "0.91" and row()["submitted"] == ""  # a score only: nothing was uploaded

    result = run(workdir, f"file={answer}", "lb=0.925")
    assert result.returncode == 0, result.stderr
    assert "LB 0.925" in result.stdout and "replacing 0.91" in result.stdout
    assert row()["lb"] == "0.925"


@pytest.mark.parametrize("args", [["lb=0.9"], ["message=try", f"competition={SLUG}"]], ids=["lb", "upload"])
def test_a_file_changed_since_it_was_logged_is_refused(answer, workdir, args):
    fake_client(workdir)
    credentials(workdir)
    with answer.open("a") as handle:
        handle.write("clip_2.wav,high\n")
    before = read_log()
    result = run(workdir, str(answer), *args)
    assert result.returncode == 2 and result.stdout == ""
    line = error_line(result.stderr)
    assert str(answer) in line and "as it is now" in line
    assert client_args(workdir) is None  # refused before any upload
    assert read_log().equals(before)


def test_an_answer_file_not_in_the_log_is_refused(answer, workdir):
    fake_client(workdir)
    credentials(workdir)
    by_hand = Path("submissions/by-hand.csv")
    shutil.copy(answer, by_hand)
    result = run(workdir, str(by_hand), f"competition={SLUG}")
    assert result.returncode == 2 and str(by_hand) in error_line(result.stderr)
    assert client_args(workdir) is None


def test_without_the_kaggle_client_it_says_to_install_it(answer, workdir):
    credentials(workdir)
    result = run(workdir, str(answer), f"competition={SLUG}")
    assert result.returncode == 2 and result.stdout == ""
    assert "pip install kaggle" in error_line(result.stderr)
    assert row()["submitted"] == ""


@pytest.mark.parametrize("config_dir", [False, True])
def test_without_credentials_it_says_where_kaggle_json_goes(answer, workdir, monkeypatch, config_dir):
    fake_client(workdir)
    if config_dir:  # the client then reads only that folder's kaggle.json
        credentials(workdir)
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(workdir / "conf"))
    result = run(workdir, str(answer), f"competition={SLUG}")
    assert result.returncode == 2 and result.stdout == ""
    line = error_line(result.stderr)
    assert "Create New Token" in line and "KAGGLE_USERNAME" in line
    where = f"{workdir / 'conf' / 'kaggle.json'} (KAGGLE_CONFIG_DIR)" if config_dir else "~/.kaggle/kaggle.json"
    assert where in line
    assert client_args(workdir) is None and row()["submitted"] == ""


@pytest.mark.parametrize("where", ["home", "xdg", "config_dir", "environment"])
def test_upload_runs_the_client_and_logs_the_submission(answer, workdir, monkeypatch, where):
    fake_client(workdir)
    if where == "home":
        credentials(workdir)
    elif where == "xdg":  # where newer clients keep it on Linux when ~/.kaggle is absent
        (workdir / "home" / ".config" / "kaggle").mkdir(parents=True)
        (workdir / "home" / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    elif where == "config_dir":
        (workdir / "conf").mkdir()
        (workdir / "conf" / "kaggle.json").write_text('{"username": "someone", "key": "0123abcd"}')
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(workdir / "conf"))
    else:
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "0123abcd")
    monkeypatch.setenv("KAGGLE_COMPETITION", "some-other-contest")  # competition= wins over it
    result = run(workdir, str(answer), "message=soft blend, 2 exps", f"competition={SLUG}")
    assert result.returncode == 0, result.stderr
    assert client_args(workdir) == ["competitions", "submit", "-c", SLUG, "-f", str(answer), "-m",
                                    "soft blend, 2 exps"]
    logged = row()
    assert logged["submitted"] and logged["message"] == "soft blend, 2 exps" and logged["lb"] == ""
    assert SLUG in result.stdout and "lb=<score>" in result.stdout


def test_the_competition_may_come_from_the_environment_and_the_message_from_the_log(answer, workdir, monkeypatch):
    fake_client(workdir)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123")
    monkeypatch.setenv("KAGGLE_COMPETITION", SLUG)
    result = run(workdir, str(answer))
    assert result.returncode == 0, result.stderr
    args = client_args(workdir)
    assert args[:6] == ["competitions", "submit", "-c", SLUG, "-f", str(answer)] and args[6] == "-m"
    assert "tones, tones-b" in args[7] and "OOF 0.912345" in args[7]
    assert row()["message"] == args[7]


def test_a_failing_client_is_one_line_and_nothing_is_recorded(answer, workdir):
    fake_client(workdir, code=1, stdout="", stderr="403 Client Error: Forbidden (accept the competition rules first)")
    credentials(workdir)
    result = run(workdir, str(answer), f"competition={SLUG}", "message=x")
    assert result.returncode == 2 and result.stdout == ""
    line = error_line(result.stderr)
    assert "403 Client Error: Forbidden (accept the competition rules first)" in line and "exit code 1" in line
    assert "Traceback" not in result.stderr
    assert row()["submitted"] == "" and row()["message"] == ""


def test_a_could_not_line_with_exit_code_0_is_a_failure(answer, workdir):
    """The Kaggle client prints 'Could not find competition ...' for an unknown one and exits 0."""
    fake_client(workdir, stdout="Could not find competition - please verify that you entered the correct ID")
    credentials(workdir)
    result = run(workdir, str(answer), "competition=no-such-contest")
    assert result.returncode == 2 and "Could not find competition" in error_line(result.stderr)
    assert row()["submitted"] == ""


def test_a_client_that_hangs_is_stopped(answer, workdir, monkeypatch):
    fake_client(workdir, body=f"exec {shutil.which('sleep', path='/usr/bin:/bin')} 30")
    credentials(workdir)
    monkeypatch.setattr(submit, "UPLOAD_TIMEOUT_S", 0.5)
    result = run(workdir, str(answer), f"competition={SLUG}")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "did not finish" in line and f"kaggle competitions submissions {SLUG}" in line
    assert row()["submitted"] == ""


@pytest.mark.parametrize("slug", ["", "https://www.kaggle.com/competitions/birdclef-2025"])
def test_without_a_competition_slug_it_names_both_ways_to_give_one(answer, workdir, slug):
    fake_client(workdir)
    credentials(workdir)
    result = run(workdir, str(answer), *([f"competition={slug}"] if slug else []))
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "competition=" in line and ("KAGGLE_COMPETITION" in line if not slug else "slug" in line)
    assert client_args(workdir) is None


@pytest.mark.parametrize("args, named", [
    ([], "give the answer file"),
    (["a.csv", "b.csv"], "one answer file at a time"),
    (["{answer}", "exp=tones"], "file=<path>"),
    (["{answer}", "lb=0.9", "message=x"], "uploads nothing"),
    (["{answer}", "lb=high"], "as a number"),
    (["{answer}", "lb=nan"], "as a number"),
    (["{answer}", "lb="], "as a number"),  # a score left out uploads nothing
    (["submissions/none.csv", "lb=0.9"], "no such answer file"),
])
def test_command_line_mistakes_are_one_line(answer, workdir, args, named):
    result = run(workdir, *[arg.format(answer=answer) for arg in args])
    assert result.returncode == 2 and result.stdout == ""
    assert named in error_line(result.stderr)
    assert row()["lb"] == ""


def test_a_path_with_an_equals_sign_is_a_path(answer, workdir):
    odd = Path("submissions/lr=0.01.csv")
    odd.write_text("fname,label\nclip_0.wav,low\n")
    log_answer(odd, None, ["tones"], "accuracy", 0.8, None)
    result = run(workdir, str(odd), "lb=0.7")
    assert result.returncode == 0, result.stderr
    assert read_log().set_index("file").loc[odd.as_posix(), "lb"] == "0.7"


def test_help_in_process_runs_nothing(workdir):
    result = run(workdir, "submissions/x.csv", "lb=0.9", "--help")
    assert result.returncode == 0 and result.stdout.strip() == submit.__doc__.strip()
    assert not os.path.exists("submissions")
