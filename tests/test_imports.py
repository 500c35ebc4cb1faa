"""The import graph of talos_os, platforms and bakery, read from the source: no cycles, no bakery on the node.

Every import counts, wherever it is written: at the top, inside a function (a lazy import that
only dodges a cycle at run time is still a cycle in the design), under ``if TYPE_CHECKING:``,
and ``importlib.import_module`` with a literal name. Importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``, but those implicit edges are left out: a package's
``__init__`` re-exporting its own submodules would otherwise be a cycle with each of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("talos_os", "platforms", "bakery")
# grpc stubs, generated and never committed; they import only grpc, protobuf and each other, so
# they are leaves: left out, and imports of them are not taken for imports of talos_os.api.
GENERATED = REPO / "talos_os" / "api" / "gen"
GENERATED_MODULE = "talos_os.api.gen"


@dataclass(frozen=True)
class Import:
    target: str  # the module imported, inside PACKAGES
    line: int


def module_files(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` by dotted name (a package by its own name, for its ``__init__``)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if path.is_relative_to(GENERATED):
                continue
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _imported_names(tree: ast.AST, name: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Dotted names this module imports, made absolute; ``from x import y`` gives x.y (y may be a name in x)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                # y may be a submodule of x or a name defined in x: the caller keeps what exists.
                yield f"{base}.{alias.name}", node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, node.lineno


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The modules among ``modules`` that ``name`` imports (the nearest existing module of each name)."""
    tree = ast.parse(path.read_text(), str(path))
    found: dict[str, Import] = {}
    for dotted, line in _imported_names(tree, name, path.name == "__init__.py"):
        if dotted == GENERATED_MODULE or dotted.startswith(GENERATED_MODULE + "."):
            continue
        target = dotted
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, Import(target, line))
    return sorted(found.values(), key=lambda i: i.target)


def import_graph(modules: dict[str, Path]) -> dict[str, list[Import]]:
    """Each module's imports of the others (standard library and third parties left out)."""
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's components of more than one module (a module importing itself is skipped above)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a long chain of imports cannot hit the recursion limit.
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            edges = graph.get(node, [])
            if i < len(edges):
                work.append((node, i + 1))
                nxt = edges[i].target
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return sorted(components)


def shortest_cycle(graph: dict[str, list[Import]], component: list[str]) -> list[tuple[str, int]]:
    """One shortest cycle through the component's first module: (module, line of its import) pairs."""
    members = set(component)
    start = component[0]
    came_from: dict[str, tuple[str, int]] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for imp in graph[node]:
                if imp.target not in members or imp.target in came_from:
                    continue
                came_from[imp.target] = (node, imp.line)
                if imp.target == start:
                    path: list[tuple[str, int]] = []
                    current = start
                    while True:
                        prev, line = came_from[current]
                        path.append((prev, line))
                        current = prev
                        if current == start:
                            return path[::-1]
                following.append(imp.target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def describe(graph: dict[str, list[Import]], component: list[str], root: Path = REPO) -> str:
    """The component's members, every import among them, and one shortest cycle, with file:line."""
    modules = module_files(root, tuple(sorted({m.partition(".")[0] for m in component})))
    members = set(component)
    where = {m: modules[m].relative_to(root) for m in component}
    lines = [f"cycle among {len(component)} modules: {', '.join(component)}", "  imports among them:"]
    lines += [
        f"    {m} -> {imp.target} ({where[m]}:{imp.line})"
        for m in component
        for imp in graph[m]
        if imp.target in members
    ]
    cycle = shortest_cycle(graph, component)
    lines.append(
        "  shortest: " + " -> ".join([*(f"{m} ({where[m]}:{line})" for m, line in cycle), cycle[0][0]])
    )
    return "\n".join(lines)


def bakery_imports(graph: dict[str, list[Import]], root: Path = REPO) -> list[str]:
    """Imports of bakery by a module of talos_os (which ships in the image; bakery does not)."""
    modules = module_files(root, ("talos_os",))
    return [
        f"{name} ({modules[name].relative_to(root)}:{imp.line}) imports {imp.target}"
        for name, imps in graph.items()
        if name.partition(".")[0] == "talos_os"
        for imp in imps
        if imp.target.partition(".")[0] == "bakery"
    ]


# Cycles accepted for now, listed exactly, so a new cycle, or a new member of one, still fails, and
# so does an entry once its cycle is gone (delete it then). None today: keep it that way.
KNOWN_CYCLES: list[list[str]] = []


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walk_on_a_made_up_tree(tmp_path: Path) -> None:
    """Lazy, relative, TYPE_CHECKING and import_module imports are edges; names in a module are not."""
    write_tree(
        tmp_path,
        {
            "app/__init__.py": "from .core import main\n",  # a package re-exporting its own module
            "app/core.py": "import json\nfrom app import util\n\ndef main() -> None:\n    from . import lazy\n",
            "app/util.py": "from app.core import main as _m  # noqa\n",  # util <-> core
            "app/lazy.py": "import typing\nif typing.TYPE_CHECKING:\n    from app.sub.deep import X\n",
            "app/sub/__init__.py": "",
            "app/sub/deep.py": "import importlib\nimportlib.import_module('app.lazy')\nX = 1\n",
            "app/alone.py": "from app.sub import deep\nfrom app.util import _m\nimport app.sub\n",
            "talos_os/__init__.py": "",
            "talos_os/node.py": "def f() -> None:\n    import bakery.cli\n",
            "talos_os/clean.py": "import bakeryish\n",
            "talos_os/api/__init__.py": "",
            "talos_os/stubs.py": "from talos_os.api.gen import node_pb2\n",  # generated: not talos_os.api
            "bakery/__init__.py": "",
            "bakery/cli.py": "",
        },
    )
    modules = module_files(tmp_path, ("app", "talos_os", "bakery"))
    graph = import_graph(modules)
    targets = {name: [i.target for i in imps] for name, imps in graph.items()}
    assert targets["app"] == ["app.core"]
    assert targets["app.core"] == ["app.lazy", "app.util"]  # json is not ours
    assert targets["app.util"] == ["app.core"]
    assert targets["app.lazy"] == ["app.sub.deep"]
    assert targets["app.sub.deep"] == ["app.lazy"]
    assert targets["app.alone"] == ["app.sub", "app.sub.deep", "app.util"]
    assert targets["talos_os.clean"] == [] and targets["talos_os.stubs"] == []
    assert strongly_connected(graph) == [["app.core", "app.util"], ["app.lazy", "app.sub.deep"]]
    report = describe(graph, ["app.core", "app.util"], tmp_path)
    assert "app.core -> app.util (app/core.py:2)" in report
    assert "app.util -> app.core (app/util.py:1)" in report
    assert bakery_imports(graph, tmp_path) == ["talos_os.node (talos_os/node.py:2) imports bakery.cli"]


def test_components_and_cycles() -> None:
    """A 3-cycle reached from outside, a 2-cycle hanging off it, and modules in no cycle."""
    edges = {"d": ["a"], "a": ["b"], "b": ["c"], "c": ["a", "e"], "e": ["f"], "f": ["e", "g"], "g": []}
    graph = {m: [Import(t, n) for n, t in enumerate(ts, 1)] for m, ts in edges.items()}
    assert strongly_connected(graph) == [["a", "b", "c"], ["e", "f"]]
    assert shortest_cycle(graph, ["a", "b", "c"]) == [("a", 1), ("b", 1), ("c", 1)]
    assert shortest_cycle(graph, ["e", "f"]) == [("e", 1), ("f", 1)]


def test_the_real_graph_is_read() -> None:
    """Guards the walk over the tree itself: known edges, lazy ones included, are found."""
    graph = import_graph(module_files())
    targets = {name: {i.target for i in imps} for name, imps in graph.items()}
    assert "talos_os.init.supervisor.model" in targets["talos_os.init.supervisor.core"]
    assert "talos_os.init.supervisor.core" in targets["talos_os.init.supervisor"]  # re-export
    assert "platforms.bare_metal.publish" in targets["platforms.kvm.cli"]  # imported inside a function
    assert "talos_os.plugins.guest" in targets["talos_os.plugins"]  # under TYPE_CHECKING
    assert len(graph) > 100


def test_no_import_cycles() -> None:
    graph = import_graph(module_files())
    components = strongly_connected(graph)
    new = [describe(graph, c) for c in components if c not in KNOWN_CYCLES]
    gone = [c for c in KNOWN_CYCLES if c not in components]
    if new or gone:
        pytest.fail(
            "\n".join(
                [*(["import cycles:"] if new else []), *new]
                + [f"no longer a cycle as listed (update KNOWN_CYCLES): {', '.join(c)}" for c in gone]
            ),
            pytrace=False,
        )


def test_the_node_never_imports_bakery() -> None:
    offenders = bakery_imports(import_graph(module_files()))
    assert not offenders, "\n".join(offenders)


def test_plugins_and_the_shared_library_never_import_the_init() -> None:
    """A platform plugin builds on the contract (talos_os.plugins) and the node library (talos_os.lib),
    never on PID 1's own modules: the init is only the program that boots the node."""
    graph = import_graph(module_files())
    offenders = [
        f"{name} imports {imp.target} (line {imp.line})"
        for name, imps in graph.items()
        if name.startswith(("platforms", "talos_os.plugins", "talos_os.lib"))
        for imp in imps
        if imp.target == "talos_os.init" or imp.target.startswith("talos_os.init.")
    ]
    assert not offenders, "\n".join(offenders)
