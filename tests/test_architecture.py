"""The import graph of the two packages: data -> models -> command line, and no cycle.

Every ``import`` and ``from ... import`` counts, those inside functions too (a lazy import hides a
cycle from Python, not from a reader). A package's ``__init__`` is a module like any other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("t2i_data", "t2i_models")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file). ``from pkg import name``
    counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    files = {_module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, path.name == "__init__.py", node)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:  # `import t2i_data.text.hf` -> the deepest project module
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_module_of_the_two_packages_imports_itself_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_in_t2i_data_imports_t2i_models():
    wrong = sorted(f"{m} -> {d}" for m, deps in import_graph().items() if m.split(".")[0] == "t2i_data"
                   for d in deps if d.split(".")[0] == "t2i_models")
    assert wrong == []


def test_the_command_line_is_imported_by_no_module():
    wrong = sorted(m for m, deps in import_graph().items() if any(d.endswith(".cli") for d in deps))
    assert wrong == []


@pytest.mark.parametrize("edges,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
])
def test_the_cycle_finder_finds_cycles_and_only_cycles(edges, expected):
    assert find_cycle(edges) == expected


def test_the_graph_counts_imports_inside_functions(tmp_path):
    pkg = tmp_path / "t2i_data"
    pkg.mkdir()
    (tmp_path / "t2i_models").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import a\n")
    graph = import_graph(tmp_path)
    assert graph["t2i_data.a"] == {"t2i_data.b"} and graph["t2i_data.b"] == {"t2i_data.a"}
    assert find_cycle(graph) == ["t2i_data.a", "t2i_data.b", "t2i_data.a"]


def test_the_readme_architecture_section_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture"):]
    section = section[: section.find("\n## ", 5) if "\n## " in section[5:] else None]
    modules = sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert [m for m in modules if m not in section] == []
