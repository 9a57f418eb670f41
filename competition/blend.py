"""Blend finished folds into ensembles, score each one the way a leaderboard would, and write the answer file.

    python -m competition.blend [exps=a,b] [method=auto] [name=<data.name>-<method>] [metric=accuracy]
                                [missing=skip|fail] [stale=fail|skip] [test=<test set name>] [overwrite=true]
                                [submission.<key>=value ...]

Only folds made from the current inputs are blended: a fold whose config, fold file or training clips changed since
it was trained (or whose predictions predate a change of TTA views or test clips) stops the blend with the reasons and
the command that brings exactly those folds up to date; stale=skip leaves them out instead, naming them. The answer
format is the experiments' current `submission:` section (it is not a training input).

An experiment is one member: its out-of-fold (OOF) predictions are its folds' validation predictions put together.
On OOF the method combines the members; on the holdout and test clips it combines all their fold models at once,
each member's weight split equally among its folds. Weights are equal, or for the weighted methods fitted on the
members' OOF predictions. A stacker (stack: logistic regression, stack_mlp: a small MLP) is a meta-model fitted on
the members' OOF log-probabilities; on the holdout and test clips it reads each member's fold ensemble. A method name
with `+tta` first averages each model's test-time views. Every method is scored on OOF (fitted weights and stackers
also by nested cross-validation over the folds, which in-sample OOF flatters) and on the locked holdout, the local
stand-in for the leaderboard.

The answer covers the configured test set (data.test), or with test=<name> a test set that competition.predict
predicted under that name: its folds' test-<name>.csv, checked against the clips its record (experiments/<exp>/
test-<name>.json) lists and against what its source holds now; its unreadable clips get the training clips' most
frequent class, as predict gave them.

The method written to submissions/<name>.<ext> is `method=` when given, otherwise (`auto`, the default) the one the OOF
predictions support. Taking the best-scoring row would mostly pick noise among a dozen close scores, so auto starts from
soft and departs from it only on a paired test of the same OOF clips at p < 0.05 (McNemar's exact test for accuracy, a
paired bootstrap otherwise): +tta if it beats soft so, then another combiner, or fitted weights or a stacker by their
nested OOF score, if it beats that choice so (of several, the best OOF score). One such decision on thousands of OOF
clips has the power that a pick among a dozen on a few hundred holdout clips lacks; the holdout takes no part and stays
an honest check of it. Rank averaging is not offered on two classes (see rank_average). The report beside the answer
(.md, .json, a bar chart of the scores and the written method's confusion matrix) shares its name and gives each step of
the decision.
"""

from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

import sys
from pathlib import Path

from omegaconf import DictConfig

from competition.cli import main_guard, parse_bool
from competition.config import parse_cli
from competition.ensemble import answered, ensemble, offered, parse_method
from competition.errors import UserError
from competition.evidence import AUTO, Row, choose_method, evaluate, score_table
from competition.folds import FOLDS_DIR, per_clip_warning, read_folds
from competition.leaderboard import log_answer
from competition.members import (Member, TestSet, check_fold_files, check_test_predictions, class_prior,
                                 configured_test_set, load_members, named_test_set, pick_metric, submission_format)
from competition.report import table_cells, text_table, write_reports
from competition.submission import SUBMISSIONS_DIR, answer_cells, answer_path, smoothed, write_answer
from competition.task import task_of
from competition.tracking import mirror_blend

COMMAND_KEYS = {"exps": "", "method": "auto", "name": "", "metric": "", "missing": "skip", "stale": "fail",
                "test": "", "overwrite": "false"}


def submit(members: list[Member], chosen: Row, fmt: DictConfig, path: Path, test_set: TestSet) -> int:
    """The method's labels for the test clips, checked against the test set's own file list, written atomically;
    its unreadable clips (named, one line each) get the training clips' class frequencies."""
    method, tta = parse_method(chosen.method)
    test = ensemble(members, "test", method, tta, chosen.weights, chosen.stacker)  # every fold has them: see main
    classes = members[0].folds[0].classes
    task = task_of(members[0].cfg)
    ids, probs = answered(test, test_set.unreadable, lambda: class_prior(members[0].cfg.data.name, classes, task))
    cells = answer_cells(smoothed(ids, probs, fmt), classes, fmt, task)
    write_answer(path, ids, cells, test_set.ids, classes, fmt, task)
    return len(ids)


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    foreign = [item for item in overrides if not item.startswith("submission.")]
    if foreign:
        raise UserError(f"'{foreign[0]}' is not a blend option; use {', '.join(COMMAND_KEYS)} "
                        "or submission.<key>=value")
    if options["missing"] not in ("skip", "fail"):
        raise UserError(f"missing={options['missing']}: expected skip (leave unfinished folds out) or fail")
    if options["stale"] not in ("skip", "fail"):
        raise UserError(f"stale={options['stale']}: expected fail (refuse stale folds) or skip (leave them out)")
    overwrite = parse_bool("overwrite", options["overwrite"])
    method = options["method"]
    if method != "auto":
        parse_method(method)
    if "/" in options["name"] or options["name"].startswith("."):
        raise UserError(f"name={options['name']}: give a plain file name; the answer goes to "
                        f"{SUBMISSIONS_DIR}/<name>.<ext>")
    names = list(dict.fromkeys(name.strip() for name in options["exps"].split(",") if name.strip()))
    test_name = options["test"]
    if "/" in test_name or test_name.startswith("."):
        raise UserError(f"test={test_name}: give the name predict gave the test set (name=), not a path")
    members = load_members(names, options["missing"] == "fail", options["stale"] == "skip", test_name)
    named = named_test_set(members, test_name) if test_name else None  # checked before any scoring
    has_test = bool(test_name) or (members[0].cfg.data.test is not None and bool(members[0].cfg.data.test.path))
    if has_test and not test_name:
        check_test_predictions(members)
    data_name = check_fold_files(members)
    warning = per_clip_warning(read_folds(FOLDS_DIR / f"{data_name}.csv"), FOLDS_DIR / f"{data_name}.csv")
    if warning:
        print(warning, file=sys.stderr)
    metric = pick_metric(members, options["metric"])
    fmt = submission_format(members, overrides)
    methods = offered(len(members[0].folds[0].classes), task_of(members[0].cfg).multilabel)
    if method != "auto" and parse_method(method)[0] not in methods:
        why = ("has no multi-label form" if task_of(members[0].cfg).multilabel else "(rank averaging on two classes) "
               "only says whether a clip lies above the median clip (the classes' ranks mirror each other)")
        raise UserError(f"method={method} {why}; use method=soft")
    label, decision = choose_method(members, metric) if method == "auto" else (method, None)
    name = options["name"] or f"{test_name or data_name}-{label}"
    answer = answer_path(name, fmt)
    target = answer if has_test else SUBMISSIONS_DIR / f"{name}.md"
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists; pass overwrite=true to replace it, or choose another name=")

    for member in members:
        for note in member.left_out:
            print(f"{member.name}: {note}, left out")
        covered = sum(len(fold.oof.ids) for fold in member.folds)
        if covered < member.n_train:
            print(f"{member.name}: OOF scores cover {covered} of {member.n_train} training clips (the folds left out "
                  "hold the rest)")
    any_tta = any(len(fold.oof.views) > 1 for member in members for fold in member.folds)
    rows = score_table(members, metric, [(m, t) for m in methods for t in ((False, True) if any_tta else (False,))])
    scope = members[0].name if len(members) == 1 else "blend"
    chosen = next((row for row in rows if row.scope == scope and row.method == label), None)
    if chosen is None:  # a weighted method on one experiment: not in the table, where it equals soft
        chosen = evaluate(members, *parse_method(label), metric)
        rows.append(chosen)
    better = "higher" if metric.greater_is_better else "lower"
    print(f"{metric.name} ({better} is better) of {', '.join(m.name for m in members)}: OOF"
          f"{'' if chosen.holdout is None else ' and locked holdout'} scores; * = written")
    print(text_table(table_cells(rows, chosen)))
    if decision is not None:
        print(f"{AUTO}:")
        print("\n".join(f"  {step.line()}" for step in decision) + f"\n  written: {label}")

    SUBMISSIONS_DIR.mkdir(parents=True, exist_ok=True)
    if has_test:
        n_rows = submit(members, chosen, fmt, answer, named or configured_test_set(members))
        written = f"{answer} ({n_rows} rows)"
    else:
        written = f"none (no test set: data.test is not set for {data_name})"
    write_reports(SUBMISSIONS_DIR / name, members, rows, chosen, label, metric, fmt, written, decision)
    if has_test:  # logged after its report, which the log names
        log_answer(answer, Path(f"{SUBMISSIONS_DIR / name}.md"), [m.name for m in members], metric.name, chosen.oof,
                   chosen.holdout)
    print(f"answer file: {written}; report: {SUBMISSIONS_DIR / name}.md")
    mirror_blend(members[0].cfg, SUBMISSIONS_DIR / name)


if __name__ == "__main__":
    main_guard(main)
