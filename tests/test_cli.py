"""Every verb answers -h / --help with its usage (the module's docstring) instead of running."""
from __future__ import annotations

import importlib

import pytest

from competition.cli import main_guard


VERBS = ["run", "folds", "blend", "tune", "predict", "pack", "pseudo", "mixtures", "board", "submit"]


@pytest.mark.parametrize("verb", VERBS)
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


@pytest.mark.parametrize("verb", VERBS)
def test_help_from_the_command_line_imports_no_heavy_package(verb, tmp_path):
    """`python -m competition.<verb> --help` answers before torch, timm, librosa or wandb are imported (they take
    seconds to import, tens of seconds on a loaded machine)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"competition.{verb}", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "competition" in imported  # the listing is real
    assert not imported & {"torch", "timm", "librosa", "wandb", "optuna", "pandas"}, imported
    module = importlib.import_module(f"competition.{verb}")
    assert result.stdout.strip() == module.__doc__.strip()
    assert list(tmp_path.iterdir()) == []
