"""Benchmark scripts that keep working: the GPU check's smoke mode runs every check on the CPU here (about a minute,
on generated data), and without a GPU the plain check says so in one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import shared_data

REPO = Path(__file__).resolve().parents[1]


def benchmark(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


def test_gpu_check_runs_every_check_on_the_cpu_in_smoke_mode():
    result = benchmark("gpu_check.py", "--smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for check in ("train", "queue", "tune", "predict", "overhead"):
        assert any(line.split()[:2] == ["ok", check] for line in lines), (check, result.stdout)
    assert "pinned to CUDA_VISIBLE_DEVICES {0: '0', 1: '1'}" in result.stdout  # one job per pretended GPU
    assert lines[-1] == "gpu_check: 5 passed, 0 failed"


def test_gpu_check_without_a_gpu_says_so_in_one_line():
    result = benchmark("gpu_check.py", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("gpu_check: no CUDA GPU is visible here")


def test_multilabel_digits_smoke_runs():
    """The plain and SED heads trained, predicted, blended and scored on a tiny mixed-digit contest (about 40 s)."""
    shared_data("fsdd", "recordings")
    shared_data("background_noise")
    result = benchmark("multilabel_digits.py", "--smoke", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("| head | OOF lwlrap | test clips lwlrap |") for line in lines), result.stdout
    for row in ("| plain (model.head=plain) |", "| sed (model.head=sed) |", "| soft blend of both |"):
        assert any(line.startswith(row) for line in lines), (row, result.stdout)
    assert lines[-1].startswith("Conclusion: ")
