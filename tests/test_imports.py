"""The package's modules import one another without a circle (function-level imports included), so every stage can
be read, tested and replaced from the bottom up: pack and predict depend on the ensemble layer, never on each other."""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "competition"


def imported_modules(path: Path) -> set[str]:
    """The package's modules that `path` imports anywhere in it (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "competition":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("competition."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("competition."))
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: imported_modules(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def test_the_package_imports_in_one_direction_without_a_circle() -> None:
    graph = import_graph()
    assert {"blend", "predict", "pack", "members", "ensemble", "bundle"} <= graph.keys()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None
    below = {name: order.index(name) for name in order}
    assert "predict" not in graph["pack"] and "pack" not in graph["predict"]  # both stand on the bundle format
    for command in ("blend", "predict", "pack"):  # commands; only pseudo, which chains run and predict, imports one
        assert {name for name, deps in graph.items() if command in deps} <= {"pseudo"}, command
    assert below["members"] < below["ensemble"] < below["evidence"] < below["report"] < below["blend"]


def test_the_check_finds_a_circle(tmp_path: Path) -> None:
    """The check above can fail: two modules importing each other, one of them inside a function, are a circle."""
    (tmp_path / "a.py").write_text("from competition.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from competition import a\n")
    graph = {path.stem: imported_modules(path) for path in tmp_path.glob("*.py")}
    assert graph == {"a": {"b"}, "b": {"a"}}
    with pytest.raises(CycleError):
        list(TopologicalSorter(graph).static_order())
