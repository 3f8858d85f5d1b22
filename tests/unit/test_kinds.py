"""One registry of model kinds (models/kinds.py): every kind is complete, the champion set
is chosen by one rule, and no code outside the registry branches on a kind's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models import kinds
from models.kinds import KINDS, ModelKind, champion_set, floor_least
from tasks.datasets import READERS

REPO = Path(__file__).resolve().parents[2]
SOURCE = ("core", "warehouse", "twin", "models", "tasks", "flows", "serving", "steelsight", "bench")
FAMILY = (
    "recipe_for",
    "fit",
    "evaluate",
    "floor",
    "params",
    "headline",
    "load",
    "predict",
    "output",
)


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_is_complete(name: str) -> None:
    spec = KINDS[name]
    assert spec.name == name and spec.registered_name.startswith("steelsight-")
    assert spec.reader in READERS, f"{name}: no reader {spec.reader!r} in tasks.datasets"
    family = spec.implementation
    missing = [f for f in FAMILY if not callable(getattr(family, f, None))]
    assert not missing, f"{spec.family} lacks {missing}"
    assert spec.role in ("defects", "identity", "offline")
    assert all("==" in r for r in spec.requirements)  # pinned, as the lock file


def test_names_are_one_each() -> None:
    assert len({k.registered_name for k in KINDS.values()}) == len(KINDS)
    with pytest.raises(kinds.UnknownKind, match="choose one of segmentation"):
        kinds.kind("segmentaton")


def test_the_champion_set_needs_defects_and_takes_identity_whole() -> None:
    assert champion_set({"segmentation": None, "marking": 1, "imprint": 2}) is None
    assert champion_set({"segmentation": 3, "classification": 4}) == {"segmentation": 3}
    # one identity model without the other identifies nothing: neither is used
    assert champion_set({"segmentation": 3, "marking": 1, "imprint": None}) == {"segmentation": 3}
    assert champion_set({"segmentation": 3, "marking": 1, "imprint": 2}) == {
        "segmentation": 3,
        "marking": 1,
        "imprint": 2,
    }


def test_a_floor_for_an_unknown_kind_is_refused() -> None:
    assert floor_least({}, "marking") == KINDS["marking"].floor
    with pytest.raises(kinds.UnknownKind, match="promotion_floors names unknown kinds mark"):
        floor_least({"mark": 0.1}, "marking")


def _branches_on_kind(tree: ast.AST) -> list[int]:
    """Lines that compare a variable or attribute called ``kind`` with a kind's name."""

    def is_kind(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "kind") or (
            isinstance(node, ast.Attribute) and node.attr == "kind"
        )

    def names(node: ast.AST) -> set:
        if isinstance(node, ast.Constant):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant)}
        return set()

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(map(is_kind, sides)) and any(names(s) & set(KINDS) for s in sides):
                lines.append(node.lineno)
    return lines


def test_no_code_branches_on_a_kind_name() -> None:
    """What differs between kinds is in their spec and family; the rest asks the spec."""
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for folder in SOURCE
        for path in sorted((REPO / folder).rglob("*.py"))
        for line in _branches_on_kind(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, f"branches on a model kind's name: {found}"


def test_the_check_sees_a_branch() -> None:
    assert _branches_on_kind(ast.parse('if kind == "marking":\n    pass'))
    assert _branches_on_kind(ast.parse('x = p.kind in ("marking", "imprint")'))
    assert not _branches_on_kind(ast.parse('if "marking" in models:\n    pass'))


def test_specs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        KINDS["segmentation"].score = "iou"  # type: ignore[misc]
    assert isinstance(KINDS["segmentation"], ModelKind)
