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


@pytest.mark.parametrize("verb", ["run", "folds", "blend"])
def test_help_prints_the_usage_and_runs_nothing(verb, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "COMPETITION_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", f"competition.{verb}", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"python -m competition.{verb}" in done.stdout
    assert done.stdout.strip() == importlib.import_module(f"competition.{verb}").__doc__.strip()
    assert list(tmp_path.iterdir()) == []  # no demo data, fold file or cache was made


def test_short_flag_among_other_arguments(capsys):
    calls = []

    def main(argv: list[str]) -> None:
        calls.append(argv)

    main_guard(main, ["exp=default", "-h"])
    assert calls == []
    assert capsys.readouterr().out.strip() == __doc__.strip()
    main_guard(main, ["exp=default"])
    assert calls == [["exp=default"]]
