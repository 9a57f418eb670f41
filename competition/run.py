"""Train experiments on one fold or on several, in this process or on a queue of workers.

    python -m competition.run exp=default fold=0 [device=cpu|cuda|cuda:N|auto] [overwrite=true] [train.epochs=5 ...]
    python -m competition.run exp=default fold=0 resume=true     # continue an interrupted fold
    python -m competition.run exp=default fold=all [resume=true]  # or fold=0,2,4: one fold after another, here
    python -m competition.run exp=a,b fold=all gpus=0,1,2,3       # a queue, one worker per entry (gpus=0,0,1: two on 0)
    python -m competition.run exp=a,b fold=all workers=2          # a queue of CPU jobs, two at a time
    python -m competition.run exp=a,b fold=all launcher=ray [ray.address=auto|local|host:port] [ray.cpus=1]
                                                                  # [ray.gpus=auto|1|0]: the jobs as Ray tasks

A finished fold is used only while what it was made from (config, fold file, training clips) is unchanged. With
several folds, finished current folds are skipped, folds whose TTA views or test clips changed are re-predicted from
their trained models, and stale folds are named with what changed and the command that retrains exactly them; they
are never reused and never retrained without overwrite=true. resume=true continues interrupted folds, a fold trained
by another process is skipped, and a failing fold is reported without stopping the others.

With gpus=, workers= or launcher=, each (experiment, fold) job runs as its own `python -m competition.run` process
with its output in experiments/<exp>/fold_<k>.log; the terminal shows one live line per worker and a summary table at
the end, also written as experiments/queue-summary.csv. Ray is optional: pip install -r requirements-extra.txt.
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import os
import signal
import sys
from typing import TYPE_CHECKING

from competition.cli import main_guard, parse_bool
from competition.config import Experiment, load_experiment, parse_cli
from competition.errors import UserError
from competition.foldrun import FoldBusy, FoldFinished
from competition.queue import (EXIT_BUSY, EXIT_SKIPPED, JOB_ENV, Job, connect_ray, fold_problems, import_ray,
                               plan_fold, queue_options, run_queue)
from competition.tracking import decide, fold_tracking

if TYPE_CHECKING:
    from competition.train import DataSet

COMMAND_KEYS = {"exp": "default", "fold": "0", "device": "auto", "overwrite": "false", "resume": "false",
                "gpus": "", "workers": "", "launcher": "", "ray.address": "auto", "ray.cpus": "1", "ray.gpus": "auto"}


def parse_fold(value: str) -> list[int] | None:
    """fold=: the fold numbers given, in order and each once, or None for all (checked against an experiment's
    folds.n_splits by folds_of, once it is read)."""
    if value == "all":
        return None
    folds = []
    for item in value.split(","):
        if not item.strip().lstrip("-").isdigit():
            raise UserError(f"fold={value}: expected a fold number, a comma-separated list or 'all'")
        folds.append(int(item))
    return list(dict.fromkeys(folds))


def folds_of(folds: list[int] | None, n_splits: int) -> list[int]:
    if folds is None:
        return list(range(n_splits))
    for fold in folds:
        if not 0 <= fold < n_splits:
            raise UserError(f"fold={fold} is out of range: folds.n_splits is {n_splits} (folds 0..{n_splits - 1})")
    return folds


def train_tracked(exp: Experiment, fold: int, device: str, overwrite: bool, resume: bool,
                  data: DataSet | None = None) -> dict:
    """train_fold, mirrored to the dashboards `tracking` configures (a W&B run per fold, offline by default)."""
    from competition.train import train_fold

    with fold_tracking(exp, fold) as observers:
        return train_fold(exp, fold, device, overwrite, resume, data, observers)


def run_folds(exp: Experiment, folds: list[int], data: DataSet, device: str, overwrite: bool,
              resume: bool) -> list[str]:
    """Bring each fold up to date with the current inputs in this process, one after another, touching no finished
    fold that is not asked for (the decision is `plan_fold`, the queue's too). A failing fold does not stop the others,
    as on the queue: a mistake that fails every fold alike fails each at once, one line each. Returns what is left to
    fix."""
    outcome: dict[str, list[int]] = {"stale": [], "interrupted": [], "failed": [], "busy": []}
    reasons = []
    for fold in folds:
        plan = plan_fold(exp, fold, data, overwrite, resume)
        if not plan.runs:
            print(plan.note, file=sys.stdout if plan.action == "skip" else sys.stderr)
            outcome.get(plan.action, []).append(fold)
            continue
        title = f"{exp.name} fold {fold}"
        try:
            train_tracked(exp, fold, device, overwrite, plan.resume, data)
        except FoldBusy as exc:  # taken by another process since it was looked at
            print(f"{title}: skipped: {exc}", file=sys.stderr)
            outcome["busy"].append(fold)
        except FoldFinished as exc:  # finished by another process since it was looked at
            print(f"{title}: skipped: {exc}")
        except Exception as exc:  # a mistake is one line; anything else also names its type
            reasons.append(str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")
            print(f"{title}: FAILED ({reasons[-1]})", file=sys.stderr)
            outcome["failed"].append(fold)
    why = reasons[0] if len(reasons) == 1 else "each FAILED line above says why"
    return fold_problems(exp, **outcome, failed_hint=f" ({why})" if reasons else "")


def _as_job(exp: Experiment, fold: int, device: str, overwrite: bool, resume: bool) -> None:
    """One fold started by the queue: SIGTERM stops it as Ctrl-C does (an interrupted fold stays resumable), and a
    fold locked by another process exits with EXIT_BUSY so that the queue reports it as busy, not failed."""
    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        train_tracked(exp, fold, device, overwrite, resume)
    except FoldBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BUSY)
    except FoldFinished as exc:  # by another process, after the queue planned this job: nothing to do
        print(exc)
        sys.exit(EXIT_SKIPPED)


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    overwrite = parse_bool("overwrite", options["overwrite"])
    resume = parse_bool("resume", options["resume"])
    specs = [spec.strip() for spec in options["exp"].split(",")]
    if not all(specs):
        raise UserError(f"exp={options['exp']}: expected experiment names separated by commas, e.g. exp=a,b")
    twice = sorted({spec for spec in specs if specs.count(spec) > 1})
    if twice:
        raise UserError(f"exp={options['exp']} lists {', '.join(twice)} twice: each (experiment, fold) job runs once")
    queue = queue_options(options)  # checked before any experiment is read
    asked = parse_fold(options["fold"])
    if queue is not None and queue.launcher == "ray":
        import_ray()
    exps = [load_experiment(spec, overrides) for spec in specs]
    dirs = [exp.dir.resolve() for exp in exps]
    if len(set(dirs)) < len(dirs):
        raise UserError(f"exp={options['exp']} names one experiment folder twice: each (experiment, fold) job runs "
                        "once")
    folds = [folds_of(asked, exp.cfg.folds.n_splits) for exp in exps]
    # The arguments are checked: the work starts, and with it the imports of torch, timm and librosa.
    from competition.models import check_backbone
    from competition.train import load_data, resolve_device

    for exp in exps:
        check_backbone(exp.cfg.model.name)  # before any audio is decoded
    decide(*(exp.cfg for exp in exps))  # W&B online or offline, once for every fold and job
    if queue is None and len(exps) == 1 and len(folds[0]) == 1:  # one job: right here, as always
        run_one = _as_job if os.environ.get(JOB_ENV) else train_tracked
        run_one(exps[0], folds[0][0], options["device"], overwrite, resume)
        return
    if queue is None:
        resolve_device(options["device"])  # a wrong device would fail every fold alike: refuse it once, up front
        data = [load_data(exp) for exp in exps]  # every experiment's cache and fold file, once, before any fold
        problems = []
        for exp, exp_folds, exp_data in zip(exps, folds, data):
            found = run_folds(exp, exp_folds, exp_data, options["device"], overwrite, resume)
            problems += [f"{exp.name}: {problem}" for problem in found] if len(exps) > 1 else found
        if problems:
            raise UserError("; ".join(problems))
        return
    ray, connected = connect_ray(queue.ray_address) if queue.launcher == "ray" else (None, False)
    try:  # an unreachable Ray cluster is refused above, before any audio is decoded
        data = [load_data(exp) for exp in exps]  # every experiment's cache and fold file, once, before any job
        jobs = [Job(exp, spec, fold, plan_fold(exp, fold, exp_data, overwrite, resume))
                for exp, spec, exp_folds, exp_data in zip(exps, specs, folds, data) for fold in exp_folds]
        run_queue(jobs, queue, overrides, options["device"], overwrite)
    finally:
        if connected:
            ray.shutdown()


if __name__ == "__main__":
    main_guard(main)
