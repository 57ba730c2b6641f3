"""The layering rules of DESIGN.md, checked on the source: imports point down only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.M)
ABOVE = {"pruning": {"infra", "tasks", "flows"}, "infra": {"tasks", "flows"}, "tasks": {"flows"}}


def _imports(layer: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): set(IMPORT.findall(p.read_text()))
            for p in (ROOT / layer).rglob("*.py")}


def test_no_layer_imports_a_layer_above_it() -> None:
    for layer, above in ABOVE.items():
        for path, names in _imports(layer).items():
            bad = {n for n in names if n.split(".")[0] in above}
            assert not bad, f"{path} imports {bad} from a layer above {layer}/"


def test_outside_systems_each_have_one_home() -> None:
    # MLflow's home is infra/track: runs, the registry, and the buffered step-metric sender.
    homes = {"mlflow": {"infra/track/tracking.py", "infra/track/registry.py", "infra/track/steps.py"},
             "ray.train": {"infra/train/ray_job.py"}}
    for layer in ("pruning", "infra", "tasks", "flows"):
        for path, names in _imports(layer).items():
            for system, allowed in homes.items():
                if any(n == system or n.startswith(system + ".") for n in names):
                    assert path in allowed, f"{path} imports {system}; only {sorted(allowed)} may"


def _calls_from_pretrained(path: Path) -> bool:
    # Calls only: a docstring telling users how to load a model does not count.
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "from_pretrained" for node in ast.walk(ast.parse(path.read_text())))


def test_from_pretrained_is_called_in_one_place() -> None:
    callers = {str(p.relative_to(ROOT)) for layer in ("pruning", "infra", "tasks", "flows")
               for p in (ROOT / layer).rglob("*.py") if _calls_from_pretrained(p)}
    assert "infra/models/pretrained.py" in callers and callers <= {"infra/models/pretrained.py"}, callers


MAX_MODULE_LINES = 320  # "every module under ~300 lines": one screenful of structure, not a folder's worth


def test_every_module_stays_small_enough_to_read_in_one_sitting() -> None:
    too_long = {str(p.relative_to(ROOT)): n
                for layer in ("flows", "tasks", "infra", "pruning", "bench")
                for p in (ROOT / layer).rglob("*.py")
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines, split them: {too_long}"
