"""A static HTML board of the whole project in this folder: experiments and their folds, tuning studies, blends and
submissions, on one page that needs no server.

    python -m competition.board [out=board] [serve=false] [port=8000]

Built only from the project's own files; run it again to refresh it. Shown:
  - experiments x folds: per finished fold (experiments/<exp>/fold_<k>/DONE) its validation and holdout scores, best
    epoch, epochs run, training time and whether it is current or stale (made from other inputs than today's config,
    fold file, training clips, TTA views or test clips: the check blend makes), with its curves and metrics.csv;
    unfinished folds (fold_<k>.partial/) are listed as such;
  - tuning studies (experiments/<exp>/tune/<study>/trials.csv): the best five trials and the study's plots;
  - blends (submissions/<name>.json): the method written, why it was chosen, the score table and its charts;
  - submissions (submissions/log.csv): OOF, holdout and leaderboard (LB) scores, and a CV-vs-LB plot once an LB score
    is recorded (python -m competition.submit <file> lb=<score>).

The board is the folder `out` (index.html and its images, copied in, so the folder can be moved or shared as it is).
It is built beside it and renamed into place, so a reader never sees half a board; a folder there that is not a board
is never replaced. serve=true then serves it on http://127.0.0.1:<port>/ until Ctrl-C (port=0: any free port).
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, pandas or matplotlib

import html
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from competition.cli import format_seconds, main_guard, parse_bool, parse_options
from competition.errors import UserError
from competition.files import atomic_write_text

COMMAND_KEYS = {"out": "board", "serve": "false", "port": "8000"}
GENERATOR = "competition.board"  # the meta tag that marks a folder as a board this command may replace
EXPERIMENTS = Path("experiments")
SUBMISSIONS = Path("submissions")
TOP_TRIALS = 5
CV_VS_LB = "cv_vs_lb.png"

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; } h3 { margin-top: 1.5em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
.stale { color: #a40000; font-weight: bold; } .current { color: #196f1c; } .note { color: #666; }
.error { color: #a40000; background: #fdecea; padding: 4px 8px; border-left: 4px solid #a40000; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
.row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; } .row > img, .row > figure { max-width: 49%; }
figure { margin: 0; } figcaption { color: #666; font-size: 12px; }
details { margin: 0.3em 0 0.8em; } summary { cursor: pointer; color: #245; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def number(value: object, digits: int = 4) -> str:
    """A score as the board shows it: four decimals; blank when missing, n/a when not a number."""
    if value is None or value == "":
        return ""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def general(value: object) -> object:
    """A value from a CSV file as a table shows it: floats to four significant digits, blank when missing."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return value


def table(header: list[str], rows: list[list[object]], text_columns: tuple[int, ...] = (),
          classes: dict[tuple[int, int], str] | None = None, ident: str = "") -> str:
    """An HTML table, every cell escaped; `classes` maps (row, column) to a CSS class."""
    def cell(tag: str, i: int, j: int, value: object) -> str:
        css = " ".join(c for c in ("text" if j in text_columns else "", (classes or {}).get((i, j), "")) if c)
        attribute = f' class="{css}"' if css else ""
        return f"<{tag}{attribute}>{esc(value)}</{tag}>"

    head = "".join(cell("th", -1, j, name) for j, name in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, j, v) for j, v in enumerate(row)) + "</tr>\n"
                   for i, row in enumerate(rows))
    attribute = f' id="{esc(ident)}"' if ident else ""
    return f"<table{attribute}>\n<tr>{head}</tr>\n{body}</table>\n"


class Images:
    """Images copied (or drawn) into the board folder, each under a plain name of its own."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def name(self, *parts: str) -> str:
        self.count += 1
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("_")[:80]
        return f"img/{self.count:03d}-{safe}.png"

    def copy(self, source: Path, *parts: str, alt: str, caption: str = "") -> str:
        """`<img>` of a copy of `source` (in a captioned figure if `caption`), or nothing when it does not exist."""
        if not source.is_file():
            return ""
        relative = self.name(*parts)
        (self.folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.folder / relative)
        if caption:
            return f"<figure>{img(relative, alt)}<figcaption>{esc(caption)}</figcaption></figure>"
        return img(relative, alt)


def img(relative: str, alt: str) -> str:
    return f'<img src="{esc(quote(relative))}" alt="{esc(alt)}">'


def error(line: str) -> str:
    return f'<p class="error">{esc(line)}</p>\n'


# --- experiments ------------------------------------------------------------------------------------------------------

@dataclass
class Fold:
    number: int
    dir: Path
    done: dict | None  # DONE's summary; None when unreadable
    problem: str = ""


@dataclass
class ExperimentView:
    name: str
    dir: Path
    folds: list[Fold] = field(default_factory=list)
    partial: list[Path] = field(default_factory=list)
    studies: list[Path] = field(default_factory=list)


def find_experiments() -> list[ExperimentView]:
    """Every experiment folder with a config or any fold or study in it, by name."""
    found = []
    if not EXPERIMENTS.is_dir():
        return found
    for folder in sorted(p for p in EXPERIMENTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        view = ExperimentView(folder.name, folder)
        for path in folder.glob("fold_*"):
            suffix = path.name.removeprefix("fold_")
            if path.is_dir() and suffix.isdigit() and (path / "DONE").is_file():
                try:
                    done = json.loads((path / "DONE").read_text())
                    view.folds.append(Fold(int(suffix), path, done if isinstance(done, dict) else None,
                                           "" if isinstance(done, dict) else "DONE holds no summary"))
                except (OSError, ValueError) as exc:
                    view.folds.append(Fold(int(suffix), path, None, f"DONE unreadable: {exc}"))
            elif path.is_dir() and path.name.endswith(".partial") and suffix.removesuffix(".partial").isdigit():
                view.partial.append(path)
        view.folds.sort(key=lambda f: f.number)
        view.partial.sort(key=lambda p: int(p.name.removeprefix("fold_").removesuffix(".partial")))
        view.studies = sorted(p.parent for p in folder.glob("tune/*/trials.csv"))
        if view.folds or view.partial or view.studies or (folder / "config.yaml").is_file():
            found.append(view)
    return found


def fold_metric(fold: Fold) -> str | None:
    """The metric the fold was trained to (train.metric of the config saved with it)."""
    import yaml

    try:
        cfg = yaml.safe_load((fold.dir / "config.yaml").read_text())
        return str(cfg["train"]["metric"])
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        pass
    keys = [k for k in (fold.done or {}) if k.startswith("val_") and k != "val_loss"]
    return keys[0].removeprefix("val_") if keys else None


def fold_status(view: ExperimentView) -> tuple[dict[int, tuple[str, str]], str]:
    """Per finished fold, ("current" | "stale", why), checked as blend checks it; or the one-line reason why it could
    not be checked."""
    from competition.members import current_folds, stale_message

    done = {f.number: f.dir for f in view.folds if f.done is not None}
    if not done:
        return {}, ""
    try:
        _, _, fresh, stale = current_folds(view.name, done)
    except UserError as exc:
        return {}, f"could not check whether the folds are current: {str(exc).splitlines()[0]}"
    status = {fold: ("current", "") for fold in fresh}
    status.update({fold: ("stale", f"{action}: {why}") for fold, (action, why, _) in stale.items()})
    return status, stale_message({view.name: stale}) if stale else ""


def metrics_table(path: Path) -> str:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        return error(f"{path}: unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    rows = [[general(v) for v in row] for row in frame.itertuples(index=False)]
    return table([str(c) for c in frame.columns], rows)


def experiment_section(view: ExperimentView, images: Images) -> str:
    parts = [f'<h3 id="exp-{esc(quote(view.name))}">{esc(view.name)}</h3>\n']
    status, note = fold_status(view)
    if note:
        parts.append(error(note) if note.startswith("could not") else f'<p class="stale">{esc(note)}</p>\n')
    metrics = {fold_metric(f) for f in view.folds if f.done is not None} - {None}
    metric = sorted(metrics)[0] if len(metrics) == 1 else None
    if view.folds:
        rows, classes = [], {}
        for i, fold in enumerate(view.folds):
            done = fold.done or {}
            m = metric or fold_metric(fold) or ""
            state, why = status.get(fold.number, ("unknown", fold.problem))
            rows.append([fold.number, number(done.get(f"val_{m}")), number(done.get(f"holdout_{m}")),
                         done.get("best_epoch", ""), done.get("epochs_run", ""),
                         format_seconds(done["seconds"]) if isinstance(done.get("seconds"), (int, float)) else "",
                         done.get("n_train", ""), state + (f" ({why})" if why else "")])
            classes[(i, 7)] = state if state in ("stale", "current") else ""
        what = metric or "score"
        parts.append(table(["fold", f"validation {what}", f"holdout {what}", "best epoch", "epochs run", "time",
                            "training clips", "status"], rows, text_columns=(7,), classes=classes))
        scored = [float(f.done[f"val_{metric}"]) for f in view.folds
                  if metric and f.done and isinstance(f.done.get(f"val_{metric}"), (int, float))]
        if scored:
            parts.append(f'<p class="note">mean validation {esc(metric)} over {len(scored)} folds: '
                         f"{number(sum(scored) / len(scored))}</p>\n")
    else:
        parts.append('<p class="note">no finished fold yet: python -m competition.run '
                     f"exp={esc(view.name)} fold=all</p>\n")
    if view.partial:
        items = []
        for path in view.partial:
            epochs = ""
            if (path / "metrics.csv").is_file():
                lines = [line for line in (path / "metrics.csv").read_text(errors="replace").splitlines() if line]
                count = max(0, len(lines) - 1)
                epochs = f", {count} epoch{'' if count == 1 else 's'} done"
            resumable = "resumable with resume=true" if (path / "last.pt").is_file() else "no checkpoint yet"
            items.append(f"<li>fold {esc(path.name.removeprefix('fold_').removesuffix('.partial'))}: unfinished "
                         f"({esc(path.name)}{esc(epochs)}; {esc(resumable)})</li>")
        parts.append(f"<p>Unfinished folds:</p>\n<ul>{''.join(items)}</ul>\n")
    curves = [images.copy(fold.dir / "curves.png", view.name, f"fold_{fold.number}", "curves",
                          alt=f"{view.name} fold {fold.number} training curves", caption=f"fold {fold.number}")
              for fold in view.folds]
    if any(curves):
        parts.append(f'<div class="row">{"".join(curves)}</div>\n')
    for fold in view.folds:
        if (fold.dir / "metrics.csv").is_file():
            parts.append(f"<details><summary>{esc(view.name)} fold {fold.number}: metrics.csv per epoch</summary>\n"
                         f"{metrics_table(fold.dir / 'metrics.csv')}</details>\n")
    for study in view.studies:
        parts.append(study_section(view, study, images))
    return "".join(parts)


# --- tuning studies ---------------------------------------------------------------------------------------------------

def study_direction(view: ExperimentView) -> tuple[str, bool] | None:
    """The experiment's metric and whether greater is better, from its current config."""
    from competition.config import load_experiment
    from competition.metrics import METRICS

    try:
        metric = str(load_experiment(view.name).cfg.train.metric)
    except UserError:
        return None
    return (metric, METRICS[metric].greater_is_better) if metric in METRICS else None


def study_section(view: ExperimentView, study: Path, images: Images) -> str:
    import pandas as pd

    parts = [f"<h4>tuning study {esc(study.name)} ({esc(study.as_posix())})</h4>\n"]
    try:
        trials = pd.read_csv(study / "trials.csv")
    except (OSError, ValueError) as exc:
        return "".join(parts) + error(f"{study / 'trials.csv'}: unreadable ({str(exc).splitlines()[0]})")
    if "value" not in trials:
        return "".join(parts) + error(f"{study / 'trials.csv'}: no value column")
    finished = trials[trials["state"] == "COMPLETE"] if "state" in trials else trials
    finished = finished[pd.to_numeric(finished["value"], errors="coerce").notna()]
    direction = study_direction(view)
    if direction is not None:
        metric, greater = direction
        best = finished.sort_values("value", ascending=not greater, kind="stable").head(TOP_TRIALS)
        order = f"{metric}, {'higher' if greater else 'lower'} is better"
    else:
        metric, best = "value", finished.head(TOP_TRIALS)
        order = "in the order trials.csv lists them (the experiment's metric is unknown)"
    counts = trials["state"].value_counts().to_dict() if "state" in trials else {}
    parts.append(f"<p>{len(trials)} trials ({esc(', '.join(f'{n} {s.lower()}' for s, n in counts.items()))}); "
                 f"the best {len(best)} complete ones by {esc(order)}:</p>\n")
    best = best.drop(columns=[c for c in ("error", "surplus", "pruned") if c in best]).rename(columns={"value": metric})
    scored = list(best.columns).index(metric)
    rows = [[number(v) if j == scored else general(v) for j, v in enumerate(row)] for row in best.itertuples(index=False)]
    parts.append(table([str(c) for c in best.columns], rows) if rows else
                 '<p class="note">no complete trial yet</p>\n')
    plots = [images.copy(study / f"{name}.png", view.name, "tune", study.name, name, alt=f"study {study.name}: {name}")
             for name in ("history", "importances", "slice")]
    return "".join(parts) + (f'<div class="row">{"".join(plots)}</div>\n' if any(plots) else "")


# --- blends -----------------------------------------------------------------------------------------------------------

def decision_line(step: dict) -> str:
    """A step of method=auto as blend printed it."""
    try:
        from competition.evidence import Step

        return Step(**{k: math.nan if v is None and k.startswith(("oof_", "difference", "p_value")) else v
                       for k, v in step.items()}).line()
    except Exception:  # a report from another version: its fields as they are
        return ", ".join(f"{key} {value}" for key, value in step.items())


def find_blends() -> list[tuple[Path, dict | None, str]]:
    """Each blend report submissions/<name>.json: (path, report, problem)."""
    found = []
    for path in sorted(SUBMISSIONS.glob("*.json")) if SUBMISSIONS.is_dir() else []:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            found.append((path, None, f"{path}: unreadable ({exc})"))
            continue
        if isinstance(report, dict) and "method" in report and "table" in report:
            found.append((path, report, ""))
    return found


def blend_section(path: Path, report: dict, images: Images) -> str:
    name = path.stem
    metric = report.get("metric", "")
    better = "higher" if report.get("greater_is_better", True) else "lower"
    parts = [f'<h3 id="blend-{esc(quote(name))}">{esc(name)}</h3>\n<ul>\n',
             f"<li>answer file: <code>{esc(report.get('answer_file', ''))}</code></li>\n",
             f"<li>method: <b>{esc(report['method'])}</b>: {esc(report.get('definition', ''))}</li>\n"]
    if report.get("chosen_by") == "auto":
        steps = "".join(f"<li>{esc(decision_line(step))}</li>" for step in report.get("decision") or []
                        if isinstance(step, dict))
        parts.append(f"<li>chosen by: auto (a paired test on OOF predictions, the holdout left out):<ul>{steps}"
                     f"<li>written: {esc(report['method'])}</li></ul></li>\n")
    else:
        parts.append("<li>chosen by: <code>method=</code> on the command line</li>\n")
    scores = report.get("scores") or {}
    parts.append(f"<li>{esc(metric)} ({better} is better): OOF {esc(number(scores.get('oof')))}, nested OOF "
                 f"{esc(number(scores.get('oof_nested')) or '-')}, holdout {esc(number(scores.get('holdout')) or '-')}"
                 "</li>\n")
    weights = report.get("weights") or {}
    if isinstance(weights, dict) and weights:
        parts.append(f"<li>weights: {esc(', '.join(f'{k} {number(v, 3)}' for k, v in weights.items()))}</li>\n")
    for member in report.get("members") or []:
        if isinstance(member, dict):
            left = "".join(f"; {note}, left out" for note in member.get("left_out") or [])
            parts.append(f"<li>member {esc(member.get('experiment'))}: folds "
                         f"{esc(', '.join(map(str, member.get('folds') or [])))}{esc(left)}</li>\n")
    parts.append("</ul>\n")
    chosen = (report["method"], scores.get("oof"))
    rows = [[r.get("scope", ""), r.get("method", "") + (" *" if (r.get("method"), r.get("oof")) == chosen else ""),
             number(r.get("oof")), number(r.get("oof_nested")), number(r.get("holdout")), r.get("fitted", "")]
            for r in report.get("table") or [] if isinstance(r, dict)]
    parts.append(table(["scope", "method", "oof", "oof nested", "holdout", "fitted"], rows, text_columns=(0, 1, 5)))
    charts = [images.copy(path.with_name(f"{name}.{kind}.png"), "blend", name, kind, alt=f"{name}: {kind}")
              for kind in ("scores", "confusion")]
    return "".join(parts) + (f'<div class="row">{"".join(charts)}</div>\n' if any(charts) else "")


# --- submissions ------------------------------------------------------------------------------------------------------

def no_answers() -> str:
    return (f'<p class="note">no answer file logged yet ({esc(SUBMISSIONS / "log.csv")}): blend or predict writes one, '
            "e.g. <code>python -m competition.blend</code></p>\n")


def submissions_section(images: Images) -> str:
    if not (SUBMISSIONS / "log.csv").is_file():  # the leaderboard module imports torch, seconds for nothing
        return no_answers()
    from competition.leaderboard import read_log

    try:
        log = read_log()
    except UserError as exc:
        return error(str(exc).splitlines()[0])
    if log.empty:
        return no_answers()
    rows = []
    for _, row in log.iterrows():
        try:
            experiments = ", ".join(json.loads(row["experiments"]))
        except (ValueError, TypeError):
            experiments = row["experiments"]
        rows.append([row["written"], row["file"], experiments, row["metric"], number(row["oof"]),
                     number(row["holdout"]), number(row["lb"]), row["submitted"], row["message"],
                     Path(row["report"]).name if row["report"] else ""])
    parts = [table(["written", "file", "experiments", "metric", "OOF", "holdout", "LB", "submitted", "message",
                    "report"], rows, text_columns=(0, 1, 2, 3, 7, 8, 9), ident="submissions-table")]
    scored = log[log["lb"].str.strip() != ""]
    if scored.empty:
        parts.append('<p class="note">No leaderboard score recorded yet. Record one with '
                     "<code>python -m competition.submit &lt;file&gt; lb=&lt;score&gt;</code>; the CV-vs-LB plot "
                     "appears here then.</p>\n")
        return "".join(parts)
    both = scored[scored["oof"].str.strip() != ""]
    if both.empty:
        parts.append('<p class="note">The answers with a leaderboard score have no OOF score logged, so there is '
                     "no CV-vs-LB plot.</p>\n")
        return "".join(parts)
    plot_cv_vs_lb(both, images.folder / CV_VS_LB)
    parts.append(img(CV_VS_LB, "OOF (CV) score against leaderboard score, one point per submission"))
    return "".join(parts)


def plot_cv_vs_lb(log, path: Path) -> None:
    """OOF on x, LB on y, one labelled point per submission, and the line y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oof, lb = log["oof"].astype(float).to_numpy(), log["lb"].astype(float).to_numpy()
    low, high = min(oof.min(), lb.min()), max(oof.max(), lb.max())
    margin = max((high - low) * 0.1, 0.005)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.plot([low - margin, high + margin], [low - margin, high + margin], color="grey", linestyle="--", linewidth=1)
    ax.text(high + margin * 0.9, high + margin * 0.9, "y = x ", color="grey", ha="right", va="top", rotation=45,
            rotation_mode="anchor")
    ax.scatter(oof, lb, zorder=3)
    for x, y, name in zip(oof, lb, log["file"]):
        ax.annotate(Path(name).name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    metrics = ", ".join(sorted(set(log["metric"]) - {""})) or "score"
    ax.set(xlim=(low - margin, high + margin), ylim=(low - margin, high + margin), xlabel=f"OOF {metrics} (CV)",
           ylabel=f"leaderboard {metrics}", title="CV vs LB")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


# --- the page ---------------------------------------------------------------------------------------------------------

def page(folder: Path) -> str:
    images = Images(folder)
    experiments = find_experiments()
    trained = [v for v in experiments if v.folds or v.partial or v.studies]
    configured = [v.name for v in experiments if v not in trained]
    body = [f"<h1>{esc(Path.cwd().name)}</h1>\n",
            f'<p class="note">built {esc(datetime.now().astimezone().isoformat(timespec="seconds"))} from the files '
            f"in {esc(Path.cwd())}; refresh with <code>python -m competition.board</code></p>\n",
            '<nav><a href="#experiments">experiments</a><a href="#blends">blends</a>'
            '<a href="#submissions">submissions</a></nav>\n',
            '<h2 id="experiments">Experiments</h2>\n']
    if not experiments:
        body.append(f"<p>Nothing to show yet: no experiments in {esc(EXPERIMENTS.resolve())}/. Write "
                    "experiments/&lt;name&gt;/config.yaml and train it with <code>python -m competition.run "
                    "exp=&lt;name&gt; fold=all</code>.</p>\n")
    elif not trained:
        body.append('<p class="note">no experiment has a trained fold or a tuning study yet.</p>\n')
    for view in trained:
        body.append(experiment_section(view, images))
    if configured:
        body.append(f'<p class="note">configured, nothing trained yet: {esc(", ".join(configured))}</p>\n')
    body.append('<h2 id="blends">Blends</h2>\n')
    blends = find_blends()
    if not blends:
        body.append('<p class="note">no blend report in submissions/ yet: <code>python -m competition.blend</code>'
                    "</p>\n")
    for path, report, problem in blends:
        body.append(error(problem) if report is None else blend_section(path, report, images))
    body.append('<h2 id="submissions">Submissions</h2>\n')
    body.append(submissions_section(images))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta name="generator" content="{GENERATOR}">\n'
            f"<title>{esc(Path.cwd().name)}: board</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "".join(body) + "</body>\n</html>\n")


def is_board(folder: Path) -> bool:
    index = folder / "index.html"
    try:
        return index.is_file() and f'<meta name="generator" content="{GENERATOR}">' in index.read_text()[:2000]
    except (OSError, UnicodeDecodeError):
        return False


def build(out: Path) -> Path:
    """Write the board into a hidden sibling of `out` (images first, index.html last), then rename it into place."""
    if out.exists() and not (out.is_dir() and (is_board(out) or not any(out.iterdir()))):
        raise UserError(f"out={out}: exists and is not a board made by this command; it is kept: give another out=")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had our process id
    tmp.mkdir()
    try:
        atomic_write_text(tmp / "index.html", page(tmp))
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def serve(folder: Path, port: int) -> None:
    """Serve the board on localhost until Ctrl-C."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # no line per request
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), partial(Quiet, directory=str(folder.resolve())))
    except OSError as exc:
        raise UserError(f"port={port}: cannot serve on it ({exc.strerror or exc}); give another port=") from None
    with server:
        print(f"serving {folder}/ at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)


def board_options(argv: list[str]) -> tuple[Path, bool, int]:
    options = parse_options(argv, COMMAND_KEYS, "out=board serve=true port=8000")
    if not options["out"].strip():
        raise UserError("out=: give the board's folder, e.g. out=board")
    serving = parse_bool("serve", options["serve"])
    if not options["port"].isdigit() or not 0 <= int(options["port"]) <= 65535:
        raise UserError(f"port={options['port']}: expected a port number from 0 to 65535 (0: any free port)")
    return Path(options["out"]), serving, int(options["port"])


def main(argv: list[str]) -> None:
    out, serving, port = board_options(argv)
    build(out)
    print(f"board: {out / 'index.html'}")
    if serving:
        serve(out, port)


if __name__ == "__main__":
    main_guard(main)
