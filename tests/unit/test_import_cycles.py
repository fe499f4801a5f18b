"""No import cycles at run time: the module-level imports of `forwarder/` form no cycle (imports
under `if TYPE_CHECKING:` and inside functions are not run at import), and every module imports
first, on its own, in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "forwarder"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, also inside if/try/with, but not
    inside functions, classes or `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            pending += node.orelse if _is_type_checking(node.test) else node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            pending += node.body
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules of this package an import statement loads (a `from x import name` loads x.name
    too when that is a module)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    is_package = MODULES[module].name == "__init__.py"
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    submodules = {f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES}
    # `from . import headers` needs only the submodule: its package (an ancestor, already being
    # imported) is not asked for a name. Any other name does come from the package's __init__.
    names_from_package = len(submodules) < len(node.names) or not module.startswith(source + ".")
    return submodules | ({source} if source in MODULES and names_from_package else set())


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = {t for node in _runtime_imports(tree) for t in _targets(module, node)} - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports() -> None:
    """The walk finds real edges (relative, absolute, `from . import module`), so an empty result means something."""
    graph = _graph()
    assert "forwarder.websocket_relay" in graph["forwarder.middleware.websocket"]
    assert "forwarder.middleware.headers" in graph["forwarder.middleware.core"]  # from . import headers as h
    assert "forwarder.middleware" not in graph["forwarder.middleware.core"]  # ... which asks its package for nothing
    assert "forwarder.runtime" in graph["forwarder"]
    assert "forwarder.dev.edge.routing" in graph["forwarder.dev.edge.app"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_at_run_time() -> None:
    assert _cycles(_graph()) == []


# Modules whose framework is an optional extra not installed by scripts/install.
_OPTIONAL = {"django", "datasette"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    if any(part in _OPTIONAL for part in module.split(".")):
        pytest.importorskip(next(part for part in module.split(".") if part in _OPTIONAL))
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
