"""The contest's answer file: rendered in its exact format and checked against the test ids before it is written.

The check parses the rendered text back with the contest's own delimiter and header rule, so an id or label that
would break the format (a delimiter inside it, say) is caught as surely as a missing, duplicate or unknown id.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from competition.data import examples
from competition.errors import UserError
from competition.files import atomic_write_text

SUBMISSIONS_DIR = Path("submissions")


def answer_path(name: str, sub: DictConfig) -> Path:
    return SUBMISSIONS_DIR / f"{name}.{sub.extension.lstrip('.')}"


def render_answer(ids: Sequence[str], labels: Sequence[str], sub: DictConfig) -> str:
    """One line per clip, `<id><id_suffix><delimiter><label>`, after a header line if the contest has one."""
    lines = [f"{sub.id_column}{sub.delimiter}{sub.label_column}"] if sub.header else []
    lines += [f"{clip}{sub.id_suffix}{sub.delimiter}{label}" for clip, label in zip(ids, labels)]
    return "\n".join(lines) + "\n"


def check_answer(text: str, test_ids: Sequence[str], classes: Sequence[str], sub: DictConfig, origin: str) -> None:
    """Refuse anything but exactly one row per test id, each with a known label, in the contest's format."""
    if not sub.delimiter:
        raise UserError(f"{origin}: submission.delimiter is empty; set the contest's separator, e.g. ',' or a tab")
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    if sub.header:
        expected = f"{sub.id_column}{sub.delimiter}{sub.label_column}"
        if not lines or lines[0] != expected:
            raise UserError(f"{origin}: the header is {lines[0] if lines else ''!r}, expected {expected!r}")
        lines = lines[1:]
    rows = [line.split(sub.delimiter) for line in lines]
    malformed = [line for line, row in zip(lines, rows) if len(row) != 2]
    if malformed:
        raise UserError(f"{origin}: {len(malformed)} lines are not <id>{sub.delimiter!r}<label> "
                        f"(e.g. {malformed[0]!r}); an id or label contains the delimiter, or a line is empty")
    counts = Counter(row[0] for row in rows)
    expected_ids = {f"{clip}{sub.id_suffix}" for clip in test_ids}
    problems = []
    missing = sorted(expected_ids - counts.keys())
    if missing:
        problems.append(f"{len(missing)} test ids missing ({examples(missing)})")
    duplicate = sorted(clip for clip, n in counts.items() if n > 1)
    if duplicate:
        problems.append(f"{len(duplicate)} ids on more than one line ({examples(duplicate)})")
    unknown = sorted(counts.keys() - expected_ids)
    if unknown:
        problems.append(f"{len(unknown)} ids that are not test clips ({examples(unknown)})")
    labels = sorted({row[1] for row in rows} - set(classes))
    if labels:
        problems.append(f"labels that are not classes ({examples(labels)})")
    if problems:
        raise UserError(f"{origin}: not a valid answer: {'; '.join(problems)}")


def write_answer(path: Path, ids: Sequence[str], labels: Sequence[str], test_ids: Sequence[str],
                 classes: Sequence[str], sub: DictConfig) -> None:
    """Render, check against the test ids, then write atomically: a refused answer leaves no file behind."""
    text = render_answer(ids, labels, sub)
    check_answer(text, test_ids, classes, sub, str(path))
    atomic_write_text(path, text)
