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
