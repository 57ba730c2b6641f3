"""What produced a result: code version and library versions, recorded on every run."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

_PACKAGES = ("pruning", "infra", "tasks", "flows")
_LIBRARIES = ("torch", "transformers", "ray", "mlflow", "prefect", "datasets", "pyarrow", "pandas")


def code_version() -> str:
    """Short hash of the project's own source files (stable across machines and clones)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions
