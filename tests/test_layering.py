"""Layering: imports inside `decortask/` run one way, modules stay small, and `app.py` stays at the bottom.

The import graph is read from the source (ast), not by importing: an edge is an `import` or `from` statement
that runs, at module level or inside a function (a deferred import is a runtime import all the same, and
the way a loop hides); those under `if TYPE_CHECKING:` are for the type checker only and do not count.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "decortask"
MAX_LINES = 600

#: What `app.py` may import: the modules below it. `app.handle()` is documented API returning a
#: `TaskHandle`, so `handle` is the one module beside it that it builds (handle.py never imports app.py at
#: run time: checked by the cycle test). `outbox` is the app's background publisher, held like its transport
#: (it needs nothing of the app at run time); `transactions` is `app.transaction()`'s block (it imports only
#: `errors` at run time). Never `producer`, `task`, the worker or anything else above it.
APP_MAY_IMPORT = {
    "decortask.call_options",
    "decortask.config",
    "decortask.errors",
    "decortask.handle",
    "decortask.middleware",
    "decortask.outbox",
    "decortask.registry",
    "decortask.security",
    "decortask.store",
    "decortask.transactions",
    "decortask.transport",
}


@dataclass(frozen=True)
class Import:
    """One import statement of a decortask module naming another decortask module."""

    source: str
    target: str
    line: int
    deferred: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        where = "deferred, " if self.deferred else ""
        where += "TYPE_CHECKING, " if self.type_only else ""
        return f"{self.source} -> {self.target} ({where}{_path(self.source)}:{self.line})"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _path(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE.parent))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The decortask modules one statement imports (a name imported from a package is the package)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
        ]
    return [name for name in names if name in MODULES and name != module]


def imports_of(module: str) -> list[Import]:
    """Every import statement in `module` that names another decortask module."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[Import] = []

    def visit(nodes: list[ast.stmt], deferred: bool, type_only: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend(
                    Import(module, t, node.lineno, deferred, type_only) for t in _targets(module, node)
                )
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, deferred, True)
                visit(node.orelse, deferred, type_only)
                continue
            inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child], inner, type_only)
                elif isinstance(child, ast.excepthandler):
                    visit(child.body, inner, type_only)

    visit(tree.body, False, False)
    return found


def _runtime_graph() -> dict[str, list[Import]]:
    return {m: [i for i in imports_of(m) if not i.type_only] for m in MODULES}


def find_cycle(graph: dict[str, list[Import]]) -> list[Import] | None:
    """One import cycle of `graph` as the chain of statements that makes it, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[Import] = []

    def walk(module: str) -> list[Import] | None:
        state[module] = "open"
        for edge in graph[module]:
            if state.get(edge.target) == "open":
                start = next((n for n, e in enumerate(path) if e.source == edge.target), len(path))
                return [*path[start:], edge]
            if edge.target not in state:
                path.append(edge)
                cycle = walk(edge.target)
                if cycle is not None:
                    return cycle
                path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = walk(module)
            if cycle is not None:
                return cycle
    return None


def test_the_import_graph_finds_a_cycle_it_is_given() -> None:
    """The checker itself: a made-up loop a -> b -> a is reported statement by statement."""
    a, b = "decortask.app", "decortask.config"  # names only: the edges are invented
    graph = {a: [Import(a, b, 1, False, False)], b: [Import(b, a, 2, True, False)]}
    assert [str(edge) for edge in find_cycle(graph) or []] == [
        f"{a} -> {b} (decortask/app.py:1)",
        f"{b} -> {a} (deferred, decortask/config.py:2)",
    ]


def test_no_runtime_import_cycle_inside_the_package() -> None:
    cycle = find_cycle(_runtime_graph())
    assert cycle is None, "runtime import cycle:\n  " + "\n  ".join(str(edge) for edge in cycle or [])


def test_no_module_is_over_600_lines() -> None:
    sizes = {_path(m): len(p.read_text().splitlines()) for m, p in MODULES.items()}
    too_long = {path: lines for path, lines in sizes.items() if lines > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines: {too_long}"


def test_app_imports_nothing_above_it() -> None:
    """`app.py` (settings, transport, store) is imported by everything above it and imports none of it.

    Type-only imports count here too: a protocol serves where app.py needs something of a caller.
    """
    above = [
        str(i)
        for i in imports_of("decortask.app")
        if i.target not in APP_MAY_IMPORT and not i.target.startswith("decortask.store.")
    ]
    assert above == [], "app.py imports modules above it:\n  " + "\n  ".join(above)
