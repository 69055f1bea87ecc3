"""The import graph of ``service`` and the trainer has no cycle, and ``service`` never imports torch.

Every ``import`` / ``from … import`` statement counts, at module level or inside a function
(a lazy import still ties the two modules together); only ``if TYPE_CHECKING:`` blocks are
left out. A name imported from a package resolves to the submodule when there is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"service": ROOT / "service", "trainer": ROOT / "models" / "trainer"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """dotted name -> (file, is package) for every first-party module (generated code excluded)."""
    mods: dict[str, tuple[Path, bool]] = {}
    for top, base in SOURCES.items():
        for path in base.rglob("*.py"):
            if "gen" in path.relative_to(base).parts:
                continue
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, known: set[str]) -> set[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            src = ".".join([*base, node.module] if node.module else base)
        else:
            src = node.module or ""
        names = [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_pkg: bool, known: set[str]) -> None:
        self.module, self.is_pkg, self.known = module, is_pkg, known
        self.first_party: set[str] = set()
        self.external: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _add(self, node: ast.Import | ast.ImportFrom) -> None:
        self.first_party |= _targets(node, self.module, self.is_pkg, self.known)
        if isinstance(node, ast.Import):
            self.external |= {a.name.split(".")[0] for a in node.names}
        elif not node.level and node.module:
            self.external.add(node.module.split(".")[0])

    visit_Import = _add
    visit_ImportFrom = _add


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(first-party edges, top-level external packages) per module."""
    mods = _modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        visitor = _Imports(name, is_pkg, known)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = visitor.first_party - {name}
        external[name] = visitor.external
    return graph, external


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_is_read() -> None:
    graph, _ = import_graph()
    assert "service.pipeline" in graph["service.core"]
    assert "service.policies.registry" in graph["service.pipeline"]
    assert sum(map(len, graph.values())) > 100


def test_no_import_cycle() -> None:
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("forbidden", ["torch", "trainer"])
def test_service_never_imports_the_trainer_stack(forbidden: str) -> None:
    graph, external = import_graph()
    offenders = sorted(
        m
        for m in graph
        if m.startswith("service") and (forbidden in external[m] or any(t.startswith(forbidden) for t in graph[m]))
    )
    assert not offenders, f"service modules importing {forbidden}: {offenders}"
