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


HEAVY = {"torch", "timm", "librosa", "wandb", "sklearn", "scipy"}
MISTAKES = {  # verb -> a mistyped command line (an experiment is given by the path of its folder) and its error
    "run": (["exp={default}", "fold=x"], "fold=x: expected a fold number"),
    "folds": (["exp={default}", "folds.n_splits=1"], "'folds.n_splits' must be at least 2"),
    "tune": (["exp={default}", "n_trials=abc"], "n_trials=abc"),
    "blend": (["exps=a", "method=sofft"], "method=sofft is unknown"),
    "predict": (["exps=a", "test=clips", "precision=bf17"], "precision=bf17: choose fp32 or bf16"),
    "pack": (["exps=a", "out=bundle.zip", "half=maybe"], "half=maybe: expected true or false"),
    "pseudo": (["rounds=2"], "exps= is missing"),
    "mixtures": (["source=words", "out=mixed", "clips=many"], "clips=many: expected a whole number"),
    "board": (["port=web"], "port"),
    "submit": (["bogus=1"], "'bogus=1' is not a submit option"),
}


@pytest.mark.parametrize("verb", VERBS)
def test_a_mistyped_command_line_is_refused_before_the_heavy_imports(verb, tmp_path):
    """A command-line mistake is one line and exit 2 from `python -m competition.<verb>`, found before torch, timm,
    librosa, wandb, scipy or sklearn are imported: the seconds those imports take come only once the work starts.
    (The checks that need the machine or timm's registry, device= and model.name, come after them.)"""
    import subprocess
    import sys
    from pathlib import Path

    assert set(MISTAKES) == set(VERBS)
    repo = Path(__file__).resolve().parents[1]
    args, error = MISTAKES[verb]
    args = [arg.format(default=repo / "experiments" / "default") for arg in args]
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"competition.{verb}", *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HOME": str(tmp_path)})
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and error in lines[0], lines
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "competition" in imported  # the listing is real
    assert not imported & HEAVY, imported & HEAVY
    assert list(tmp_path.iterdir()) == []
