"""A blend's report beside its answer file: the score table (text and markdown), a bar chart of the scores, the
written method's confusion matrix, and the same as JSON for predict, pack and dashboards to read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from competition.ensemble import METHODS, ensemble, oof_stack, parse_method
from competition.evidence import AUTO, Row, Step, fmt_score
from competition.files import atomic_write, atomic_write_text
from competition.members import Member
from competition.metrics import Metric

COLUMNS = ["scope", "method", "oof", "oof nested", "holdout", "weights"]


def fitted_cell(row: Row) -> str:
    """What a row fitted on OOF: its weights, or its stacker's shape; blank for equal weights."""
    if row.stacker is not None:
        layers = row.stacker["layers"]
        hidden = "".join(f" -> {len(layer['bias'])}" for layer in layers[:-1])
        return f"stacker: {len(layers[0]['weight'])} inputs{hidden} -> {len(row.stacker['classes'])} classes"
    return ", ".join(f"{name} {w:.2f}" for name, w in row.weights.items()) if row.fitted else ""


def table_cells(rows: list[Row], chosen: Row) -> list[list[str]]:
    cells = []
    for row in rows:
        mark = " *" if row is chosen else ""
        cells.append([row.scope, row.method + mark, fmt_score(row.oof), fmt_score(row.nested), fmt_score(row.holdout),
                      fitted_cell(row)])
    return cells


def text_table(cells: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [COLUMNS, *cells])


def markdown_table(cells: list[list[str]]) -> str:
    lines = [COLUMNS, ["---"] * len(COLUMNS), *cells]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_scores(rows: list[Row], chosen: Row, metric: Metric, path: Path) -> None:
    """Horizontal bars per method (OOF, nested OOF, holdout), the axis zoomed to the scores' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"oof": [r.oof for r in rows], "oof nested": [r.nested for r in rows],
              "holdout": [r.holdout for r in rows]}
    series = {k: np.array([math.nan if v is None else v for v in vs]) for k, vs in series.items()}
    series = {k: v for k, v in series.items() if np.isfinite(v).any()}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(rows) * max(1, len(series)) / 2))
    height = 0.8 / max(1, len(series))
    positions = np.arange(len(rows))
    for i, (label, values) in enumerate(series.items()):
        ax.barh(positions + i * height, np.nan_to_num(values, nan=0.0), height, label=label)
    labels = [f"{r.scope} / {r.method}{' *' if r is chosen else ''}" for r in rows]
    ax.set_yticks(positions + height * (len(series) - 1) / 2, labels)
    ax.invert_yaxis()
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()]) if series else np.array([0.0, 1.0])
    low, high = finite.min(), finite.max()
    margin = max((high - low) * 0.15, 1e-3)
    ax.set_xlim(max(0.0, low - margin), high + margin)
    better = "higher" if metric.greater_is_better else "lower"
    ax.set(xlabel=metric.name, title=f"{metric.name} per method ({better} is better)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)


MULTILABEL_COUNTS = ["found", "missed", "false alarms"]  # per class, at probability 0.5


def confusion(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix (true class x predicted class), or for multi-label y (a 0/1 matrix) each class's clips
    found, missed and falsely flagged at probability 0.5; and the names of its columns."""
    from sklearn.metrics import confusion_matrix

    if y.ndim == 2:
        truth, said = y >= 0.5, probs >= 0.5
        return np.stack([(truth & said).sum(0), (truth & ~said).sum(0), (~truth & said).sum(0)], 1), MULTILABEL_COUNTS
    return confusion_matrix(y, probs.argmax(1), labels=np.arange(len(classes))), classes


def plot_confusion(y: np.ndarray, probs: np.ndarray, classes: list[str], title: str, path: Path) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix, columns = confusion(y, probs, classes)
    size = max(4.0, 0.32 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    if len(classes) <= 15:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted" if columns is classes else "clips at probability 0.5",
           ylabel="true" if columns is classes else "class", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
    return matrix


def _json_value(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def describe(method: str, multilabel: bool = False) -> str:
    name, tta = parse_method(method)
    combiner = METHODS[name].per_class if multilabel else METHODS[name].single
    parts = [combiner.__doc__.split("\n\n")[0]]
    if METHODS[name].fit is not None:
        parts.append(METHODS[name].fit.__doc__.split("\n\n")[0])
    if tta:
        parts.append("Each model's test-time views are averaged first.")
    return " ".join(" ".join(part.split()) for part in parts)


def write_reports(base: Path, members: list[Member], rows: list[Row], chosen: Row, label: str, metric: Metric,
                  fmt: DictConfig, answer: str, decision: list[Step] | None) -> None:
    """`<base>.md` and `.json` (method, how it was chosen, members, weights, the score table), the scores' bar chart
    and the chosen method's confusion matrix on the holdout (on OOF when there is none)."""
    method, tta = parse_method(label)
    stack, y_oof, _ = oof_stack(members, tta)
    holdout = ensemble(members, "holdout", method, tta, chosen.weights, chosen.stacker)
    params = chosen.stacker if chosen.stacker is not None else np.array(list(chosen.weights.values()))
    on, y, probs = (("holdout", holdout.y, holdout.p) if holdout is not None
                    else ("OOF", y_oof, METHODS[method].combine(stack, params, y_oof.ndim == 2)))
    classes = members[0].folds[0].classes
    matrix = plot_confusion(y, probs, classes, f"{label} on {on} ({len(y)} clips)", Path(f"{base}.confusion.png"))
    plot_scores(rows, chosen, metric, Path(f"{base}.scores.png"))
    better = "higher" if metric.greater_is_better else "lower"
    report = {
        "name": base.name, "answer_file": answer, "method": label, "definition": describe(label, y_oof.ndim == 2),
        "chosen_by": "method=" if decision is None else "auto",
        "decision": [{key: _json_value(value) if isinstance(value, float) else value
                      for key, value in vars(step).items()} for step in decision or []],
        "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "members": [{"experiment": m.name, "folds": [f.number for f in m.folds], "left_out": m.left_out,
                     "tta_views": list(m.folds[0].oof.views)} for m in members],
        "weights": chosen.weights,  # in the members' order, which a stacker takes them in
        "stacker": chosen.stacker,
        "scores": {"oof": _json_value(chosen.oof), "oof_nested": _json_value(chosen.nested),
                   "holdout": _json_value(chosen.holdout)},
        "n_oof": len(y_oof), "n_holdout": None if holdout is None else len(holdout.ids),
        "format": OmegaConf.to_container(fmt),
        "table": [{"scope": r.scope, "method": r.method, "oof": _json_value(r.oof), "oof_nested": _json_value(r.nested),
                   "holdout": _json_value(r.holdout), "weights": None if r.stacker else r.weights,
                   "fitted": fitted_cell(r)} for r in rows],
        "confusion": {"on": on, "classes": classes, "matrix": matrix.tolist()},
    }
    atomic_write_text(Path(f"{base}.json"), json.dumps(report, indent=2) + "\n")
    scores = ", ".join(f"{what} {fmt_score(value)}" for what, value in
                       (("OOF", chosen.oof), ("nested OOF", chosen.nested), ("holdout", chosen.holdout))
                       if value is not None)
    members_md = [f"  - {m.name}: folds {', '.join(str(f.number) for f in m.folds)}; "
                  f"views {', '.join(m.folds[0].oof.views)}" + "".join(f"; {note}, left out" for note in m.left_out)
                  for m in members]
    chosen_by = (["- chosen by: `method=` on the command line"] if decision is None else
                 [f"- chosen by: {AUTO}:", *(f"  - {step.line()}" for step in decision), f"  - written: {label}"])
    markdown = "\n".join([
        f"# {base.name}", "",
        f"- answer file: {answer}",
        f"- method: **{label}**: {describe(label, y_oof.ndim == 2)}",
        *chosen_by,
        f"- weights: {', '.join(f'{n} {w:.3f}' for n, w in chosen.weights.items())}" if chosen.stacker is None
        else f"- {fitted_cell(chosen)} (its network is in {base.name}.json)",
        f"- {metric.name} ({better} is better): {scores}",
        f"- OOF clips: {len(y_oof)}; holdout clips: {'none' if holdout is None else len(holdout.ids)}",
        "- members:", *members_md, "",
        "## Scores", "",
        "Fold rows score one fold model (plain view) on its validation clips and on the holdout; method rows score the "
        "experiment's fold ensemble, or the blend of all experiments; *oof nested* scores fitted weights on the folds "
        "they were not fitted on; * marks the method written.", "",
        markdown_table(table_cells(rows, chosen)), "",
        f"![scores per method]({base.name}.scores.png)", "",
        f"![confusion matrix of {label} on {on}]({base.name}.confusion.png)", "",
    ])
    atomic_write_text(Path(f"{base}.md"), markdown)
