"""Every verb answers -h / --help with its usage (the module's docstring) instead of running."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from competition.cli import main_guard

REPO = Path(__file__).resolve().parents[1]


def test_help_prints_the_usage_and_runs_nothing_in_a_fresh_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "COMPETITION_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "competition.run", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == importlib.import_module("competition.run").__doc__.strip()
    assert list(tmp_path.iterdir()) == []  # no demo data, fold file or cache was made


@pytest.mark.parametrize("verb", ["run", "folds", "blend", "tune"])
def test_every_verb_prints_its_usage_and_runs_nothing(verb, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPETITION_CACHE", str(tmp_path / "cache"))
    module = importlib.import_module(f"competition.{verb}")
    main_guard(module.main, ["exp=default", "--help"])
    out = capsys.readouterr().out
    assert f"python -m competition.{verb}" in out and out.strip() == module.__doc__.strip()
    assert list(tmp_path.iterdir()) == []  # no demo data, fold file, cache or study was made


def test_short_flag_among_other_arguments(capsys):
    calls = []

    def main(argv: list[str]) -> None:
        calls.append(argv)

    main_guard(main, ["exp=default", "-h"])
    assert calls == []
    assert capsys.readouterr().out.strip() == __doc__.strip()
    main_guard(main, ["exp=default"])
    assert calls == [["exp=default"]]
