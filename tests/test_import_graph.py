"""The import graph follows shared/DESIGN.md: ``pipelines -> curation -> manifests``,
``training -> manifests``, ``curation.embed`` may use ``training.models`` and nothing else of
the trainer (and ``training.models`` only ``training.layers`` of it), no engine framework
outside ``pipelines/``, and no import cycles (lazy imports
inside functions count; ``if TYPE_CHECKING:`` imports do not run and do not)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("manifests", "curation", "pipelines", "training")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements, leaving out the bodies of ``if TYPE_CHECKING:``."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports: ``from a.b import c`` is ``a.b.c`` where c is a module."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:  # relative: from the package, up level - 1
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        names.add(base)
        names |= {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
    return names


def _graph() -> dict[str, set[str]]:
    files = [f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")]
    return {_module_name(f): _imports(f) for f in files}


GRAPH = _graph()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(importers: str, forbidden: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in GRAPH.items()
        if _within(module, importers)
        for name in names
        if _within(name, forbidden) and not any(_within(name, a) for a in allowed)
    )


def test_the_graph_is_read():
    assert "manifests.image_rows" in GRAPH["training.data.dataset"]  # from x import y
    assert "curation.crawl.shard" in GRAPH["curation.crawl.crawler"]
    assert "pipelines.demo.run" in GRAPH["pipelines.build_lvd"]  # an import inside a function
    assert len(GRAPH) > 80


@pytest.mark.parametrize("importers", ["curation", "pipelines"])
def test_stages_do_not_import_the_trainers_data_package(importers):
    assert _violations(importers, "training.data") == []


@pytest.mark.parametrize(
    "importers, forbidden, allowed",
    [
        ("manifests", "curation", ()),
        ("manifests", "pipelines", ()),
        ("manifests", "training", ()),
        ("curation", "pipelines", ()),
        ("curation", "training", ("training.models",)),
        ("training", "curation", ()),
        ("training", "pipelines", ()),
        # the backbone and its loading stand alone: curation's embedder uses them
        ("training.models", "training", ("training.models", "training.layers")),
        ("curation", "ray", ()),
        ("curation", "apache_beam", ()),
        ("training", "ray", ()),
        ("training", "apache_beam", ()),
    ],
)
def test_imports_point_one_way(importers, forbidden, allowed):
    assert _violations(importers, forbidden, allowed) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue  # not ours
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == []
