"""Every verb answers -h / --help with its usage (the module's docstring) instead of running."""
from __future__ import annotations

import importlib

import pytest

from competition.cli import main_guard


@pytest.mark.parametrize("verb", ["run", "folds", "blend", "tune", "predict", "pack"])
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
