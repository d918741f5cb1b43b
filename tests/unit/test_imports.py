"""No import cycles among authfilter's modules.

An edge is an import that runs when the module is imported: module-level ``import`` and
``from ... import`` (relative ones resolved), also inside ``try``, ``with``, class bodies and
ordinary ``if`` blocks.  Imports inside functions and inside ``if TYPE_CHECKING:`` are not
edges: they run later, or never.  ``from pkg import name`` is an edge to ``pkg.name`` when that
is a module, else to ``pkg``.  Importing a submodule is not counted as importing its parent
package: Python initialises the package first, but a package ``__init__`` that imports its own
submodules is the ordinary pattern, not a cycle.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import authfilter

PACKAGE_DIR = Path(authfilter.__file__).resolve().parent


def discover(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Module name -> file, for every module of the package at ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, source: str, *, is_package: bool, known: set[str]) -> set[str]:
    """The modules among ``known`` (other than itself) that ``name`` imports at import time."""
    package = name if is_package else name.rpartition(".")[0]
    edges: set[str | None] = set()
    for node in _import_time_statements(ast.parse(source)):
        if isinstance(node, ast.Import):
            edges.update(_longest_known(alias.name, known) for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            base = ".".join((anchor + [base]) if base else anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            edges.add(submodule if submodule in known else _longest_known(base, known))
    return {e for e in edges if e is not None and e != name}


def _import_time_statements(tree: ast.Module):
    """The import statements run when the module is imported (see the module docstring)."""
    pending = deque(tree.body)
    while pending:
        node = pending.popleft()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(child for child in ast.iter_child_nodes(node)
                           if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _longest_known(dotted: str, known: set[str]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: imports_of(name, path.read_text(), is_package=path.name == "__init__.py",
                             known=known)
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each edge that lies on a cycle, duplicates removed.

    Listing every elementary cycle can be exponential; this finite list still shows every
    import that takes part in a cycle, which is what needs fixing.  Each cycle starts at its
    alphabetically first module and ends where it began.
    """
    found: set[tuple[str, ...]] = set()
    for source in sorted(graph):
        for target in sorted(graph[source]):
            path = _shortest_path(graph, target, source)
            if path is not None:
                ring = [source] + path[:-1]
                first = ring.index(min(ring))
                found.add(tuple(ring[first:] + ring[:first]))
    return [list(ring) + [ring[0]] for ring in sorted(found)]


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """Breadth-first: ``[start, ..., goal]`` or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while came_from[path[-1]] is not None:
                path.append(came_from[path[-1]])
            return path[::-1]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return None


def test_authfilter_has_no_import_cycles():
    modules = discover()
    assert "authfilter.dns" in modules and "authfilter.reports.store" in modules
    found = cycles(import_graph(modules))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


# -- the graph builder itself ----------------------------------------------------------------
KNOWN = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d"}


def test_relative_and_absolute_imports_are_resolved_to_modules():
    source = ("import os\nimport pkg.sub.c as c\nfrom . import d\nfrom .. import a\n"
              "from ..b import thing\nfrom pkg.sub import helper\n")
    assert imports_of("pkg.sub.c", source, is_package=False, known=KNOWN) == \
        {"pkg.sub.d", "pkg.a", "pkg.b", "pkg.sub"}
    assert imports_of("pkg.sub", "from . import c\nfrom .d import x\n", is_package=True,
                      known=KNOWN) == {"pkg.sub.c", "pkg.sub.d"}


def test_deferred_imports_are_not_edges():
    source = ("from typing import TYPE_CHECKING\nimport typing\n"
              "if TYPE_CHECKING:\n    from . import a\nelse:\n    from . import b\n"
              "if typing.TYPE_CHECKING:\n    import pkg.sub\n"
              "def f():\n    from . import sub\n"
              "class K:\n    async def g(self):\n        import pkg.sub.d\n"
              "try:\n    from .sub import c\nexcept ImportError:\n    from .sub import d\n")
    assert imports_of("pkg.x", source, is_package=False, known=KNOWN) == \
        {"pkg.b", "pkg.sub.c", "pkg.sub.d"}


def test_cycles_are_reported_once_each_from_their_first_module():
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "a"], ["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
