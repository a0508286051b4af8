"""The package's shape, as issue 19 set it: short functions, no import circles inside a
handler package, and a CLI that reaches handlers only through `protocols.py`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "serf_handlers"
MAX_FUNCTION_LINES = 50


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_is_over_50_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def _sibling_imports(path: Path) -> set[str]:
    """The modules of the same package that `path` imports when it runs (at module level or
    lazily in a function; not the `if TYPE_CHECKING:` imports, which only name types)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize(
    "package", [pytest.param(p, id=p.name) for p in sorted(PACKAGE.glob("**/__init__.py")) if p.parent != PACKAGE]
)
def test_no_import_circle_inside_a_package(package: Path) -> None:
    graph = {p.stem: _sibling_imports(p) for p in package.parent.glob("*.py") if p.stem != "__init__"}
    graph = {name: {n for n in targets if n in graph and n != name} for name, targets in graph.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError(f"import circle in {package.parent.name}: {' -> '.join((*path, name))}")
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


def test_the_cli_reaches_handlers_only_through_protocols() -> None:
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    private = [
        f"line {node.lineno}: from {node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and "handlers." in node.module
    ]
    concrete = [
        f"line {node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance"
        and "Handler" in ast.unparse(node.args[1])
    ]
    assert private == [] and concrete == []
