"""Import hygiene, beside the layering rules: a private name (`_x`) stays in its package.

A module may use the private names of its own package (the same directory), never those of
another: `from infra.data.sources import _read` in infra/experiment/, or `data._read(...)` on an
imported module, couples two packages through a name its owner may rename at any time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pruning", "infra", "tasks", "flows", "bench")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _home(dotted: str, root: Path) -> Path | None:
    """The directory a project module or package lives in (a package is its own directory)."""
    path = root.joinpath(*dotted.split("."))
    if path.is_dir():
        return path
    if path.with_suffix(".py").is_file():
        return path.parent
    return None


def _absolute(node: ast.ImportFrom, file: Path, root: Path) -> str:
    if not node.level:
        return node.module or ""
    base = file.parent.relative_to(root).parts
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _project(dotted: str) -> bool:
    return dotted.split(".")[0] in PACKAGES


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a chain of names, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (head := _dotted(node.value)) is not None:
        return f"{head}.{node.attr}"
    return None


def _private_modules(dotted: str) -> Iterator[tuple[str, str]]:
    """(name, package it belongs to) for each private segment of a module path."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            yield part, ".".join(parts[:i])


def violations(file: Path, root: Path = ROOT) -> list[str]:
    """`file:line uses _name of owner` for each private name `file` takes from another package:
    imported by name, as a private module, or read as an attribute of an imported module."""
    here, tree = file.parent, ast.parse(file.read_text(), str(file))
    found: list[tuple[int, str, str]] = []  # (line, name, owning module or package)
    modules: dict[str, str] = {}  # local name -> project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _project(alias.name):
                    found += [(node.lineno, n, pkg) for n, pkg in _private_modules(alias.name)]
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(node, file, root)
            if not _project(origin):
                continue
            found += [(node.lineno, n, pkg) for n, pkg in _private_modules(origin)]
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, alias.name, origin))
                elif _home(f"{origin}.{alias.name}", root) is not None:  # a submodule, bound to a name
                    modules[alias.asname or alias.name] = f"{origin}.{alias.name}"
    for node in ast.walk(tree):  # `module._x` on a module bound above
        if isinstance(node, ast.Attribute) and _private(node.attr) and _dotted(node.value) in modules:
            found.append((node.lineno, node.attr, modules[_dotted(node.value)]))
    where = file.relative_to(root)
    return [f"{where}:{line} uses {name} of {owner}" for line, name, owner in sorted(found)
            if _home(owner, root) not in (None, here)]


def test_no_module_uses_a_private_name_of_another_package() -> None:
    files = sorted(f for package in PACKAGES for f in (ROOT / package).rglob("*.py"))
    assert files
    bad = [v for f in files for v in violations(f)]
    assert not bad, "private names used outside their package:\n" + "\n".join(bad)


def test_the_check_sees_each_form_of_the_mistake(tmp_path: Path) -> None:
    for module in ("infra/data/sources.py", "infra/experiment/config.py", "infra/experiment/x.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    probe = tmp_path / "infra/experiment/x.py"
    probe.write_text(
        "from infra.data.sources import _hidden, visible\n"   # private name of another package
        "from infra.experiment.config import _same\n"         # same package: allowed
        "from . import _sibling\n"                            # same package, relative: allowed
        "from ..data import sources\n"
        "from infra import data as d\n"
        "sources._helper()\n"                                 # private attribute of another package
        "d._thing\n"
        "d.__doc__\n"                                         # dunder: not private
        "import infra.data._cache\n"                          # private module of another package
        "import infra.data.sources\n"
        "infra.data.sources._helper\n")
    assert violations(probe, tmp_path) == [
        "infra/experiment/x.py:1 uses _hidden of infra.data.sources",
        "infra/experiment/x.py:6 uses _helper of infra.data.sources",
        "infra/experiment/x.py:7 uses _thing of infra.data",
        "infra/experiment/x.py:9 uses _cache of infra.data",
        "infra/experiment/x.py:11 uses _helper of infra.data.sources"]
