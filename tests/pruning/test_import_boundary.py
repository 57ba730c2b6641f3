"""pruning/ is pure PyTorch: no orchestration, tracking or config libraries (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"prefect", "ray", "mlflow", "datasets", "pydantic", "yaml", "infra", "tasks", "flows"}
PRUNING = Path(__file__).resolve().parents[2] / "pruning"


def _imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_pruning_imports_nothing_forbidden():
    files = sorted(PRUNING.rglob("*.py"))
    assert files
    bad = {str(f.relative_to(PRUNING)): _imported_roots(f.read_text()) & FORBIDDEN for f in files}
    assert not {f: r for f, r in bad.items() if r}


def _private_uses(source: str) -> set[str]:
    """Private names (`_x`) a module takes from another pruning module: imported, or read
    as an attribute of a pruning module it imported."""
    tree = ast.parse(source)
    modules, found = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pruning")):
            found |= {a.name for a in node.names if a.name.startswith("_")}
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("pruning")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in modules:
                found.add(f"{node.value.id}.{node.attr}")
    return found


def test_pruning_modules_share_only_public_names():
    """A helper two modules need is public, or lives where both can import it."""
    uses = {str(f.relative_to(PRUNING)): _private_uses(f.read_text()) for f in sorted(PRUNING.rglob("*.py"))}
    assert not {f: names for f, names in uses.items() if names}
