"""Ctrl-C on a queue running on Ray: the running job stops cleanly and the waiting ones are cancelled.

Kept apart from tests/test_queue.py, and collected early: run after the whole suite up to test_queue.py's other Ray
tests, Ray's cancel of the running task was not delivered within the 30 s grace (the queue then cancels by force and
the fold is still resumable); run alone, after test_queue.py alone, or after the first half of the suite, it is
delivered at once. The cause is not found yet; this file keeps the behaviour tested meanwhile.
"""
from __future__ import annotations

from pathlib import Path

from competition.foldrun import can_resume
from competition.queue import GRACE_SECONDS, cpu_cores
from conftest import write_tones_data, write_tones_experiment
from test_queue import FAST, LONG, interrupt, require_ray, start_queue, summary, wait_for_checkpoint


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
