"""The layering of docs/architecture.md, checked on the source: every import (at the top of
a module or inside a function) points to the module's own package or a layer below it,
Prefect stays in the orchestration layer, the bottom layer stays light, and no two
modules import each other, directly or round a loop."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# bottom first; packages in one layer may not import each other
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("warehouse", "twin", "models"),
    ("tasks",),
    ("flows", "serving"),
    ("steelsight", "bench"),
)
LAYER = {package: n for n, packages in enumerate(LAYERS) for package in packages}
PREFECT_ALLOWED = {"flows", "steelsight", "bench"}  # the API and the work itself run without it
HEAVY = {"prefect", "distributed", "dask", "mlflow", "torch", "tensorflow", "keras", "ultralytics"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module name an import statement in the file names (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    return {
        _module(path): _imports(path)
        for package in LAYER
        for path in sorted((REPO / package).rglob("*.py"))
    }


GRAPH = _graph()


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, names in graph.items():
        home = module.split(".")[0]
        for name in names:
            target = name.split(".")[0]
            if target in LAYER and target != home and LAYER[target] >= LAYER[home]:
                found.append(f"{module} imports {name} (layer {LAYER[target]} >= {LAYER[home]})")
    return sorted(set(found))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other round a loop (Tarjan's algorithm)."""
    modules = set(graph)
    edges = {
        m: {n if n in modules else n.rsplit(".", 1)[0] for n in names} & modules - {m}
        for m, names in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_package_is_placed_in_a_layer() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} | {"bench"}
    assert packages - {"tests"} <= set(LAYER), packages - set(LAYER)


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(GRAPH) == []


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("package", sorted(set(LAYER) - PREFECT_ALLOWED))
def test_prefect_stays_in_the_orchestration_layer(package: str) -> None:
    users = [
        m
        for m, names in GRAPH.items()
        if m.split(".")[0] == package and "prefect" in {n.split(".")[0] for n in names}
    ]
    assert users == []


def test_the_bottom_layer_stays_light() -> None:
    heavy = {
        m: sorted(n for n in names if n.split(".")[0] in HEAVY)
        for m, names in GRAPH.items()
        if m.split(".")[0] == "core"
    }
    assert {m: n for m, n in heavy.items() if n} == {}


SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE)\b")
# MLflow's own SQLite store (artifact locations), not the warehouse
SQL_ELSEWHERE = {"models.registry"}


def _literal_text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal_text(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _literal_text(node.left) + _literal_text(node.right)
    return ""


def sql_outside_warehouse() -> list[str]:
    found = []
    for package in set(LAYER) - {"warehouse"}:
        for path in sorted((REPO / package).rglob("*.py")):
            if _module(path) in SQL_ELSEWHERE:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"query", "sql", "execute", "executemany"}
                    and node.args
                    and SQL.search(_literal_text(node.args[0]))
                ):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_sql_lives_in_the_warehouse_package() -> None:
    """Queries are warehouse/queries.py's (and the API's warehouse/reads.py's) by name."""
    assert sql_outside_warehouse() == []


def test_the_check_sees_an_upward_import_and_a_cycle() -> None:
    """The rules catch what they are for (on a made-up graph)."""
    made_up = {
        "core.rle": {"numpy", "tasks.labels"},
        "tasks.labels": {"core.rle"},
        "models.a": {"models.b"},
        "models.b": {"models.a", "warehouse.store"},
        "warehouse.store": set(),
    }
    assert upward_imports(made_up) == [
        "core.rle imports tasks.labels (layer 2 >= 0)",
        "models.b imports warehouse.store (layer 1 >= 1)",
    ]
    assert sorted(cycles(made_up)) == [["core.rle", "tasks.labels"], ["models.a", "models.b"]]
