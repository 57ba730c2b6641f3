"""Task caching: running the same experiment again reuses every job that already finished.

A key holds what determines a result and nothing else: the job's resolved config (its
`job_id`), the dataset's content hash, the upstream model's job, the evaluation settings
and the code version (a hash of the project's source). The grid's MLflow parent run and
the flow run change every time, so they stay out. Changing one grid value changes the
`job_id` of the jobs it touches only; the rest come from the cache.

Results are small references, stored as JSON (not pickle) under PRUNEGRID_HOME/results,
beside the models they point to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem

from infra.experiment import paths
from infra.experiment.provenance import code_version


def key(kind: str, *parts: object) -> str:
    """`kind-<hash>` of the parts and the code version (readable in the results folder)."""
    canonical = json.dumps([str(p) for p in (*parts, code_version())])
    return f"{kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def train_key(_context: Any, parameters: dict[str, Any]) -> str:
    """A training job: its config, its data, the teacher (or distilled student) it starts from."""
    upstream = [ref.job_id for name in ("teacher", "student") if (ref := parameters.get(name))]
    return key("train", parameters["job"].job_id, parameters["dataset"].content_hash, *upstream)


def evaluate_key(_context: Any, parameters: dict[str, Any]) -> str:
    """An evaluation: the model's run, the data and the evaluation settings."""
    spec = parameters["spec"].model_dump_json()
    return key("evaluate", parameters["model"].run_id, parameters["dataset"].content_hash, spec)


def distil_key(_context: Any, parameters: dict[str, Any]) -> str:
    """A task-agnostic distillation: its config and its text corpus."""
    return key("distil", parameters["job"].job_id, parameters["corpus"].content_hash)


def storage(home: str | Path) -> LocalFileSystem:
    """Where cached results live for a PRUNEGRID_HOME (a block saved on the Prefect server,
    as Prefect requires of result storage; one per home, overwritten in place)."""
    folder = paths.results_dir(Path(home).resolve())
    block = LocalFileSystem(basepath=str(folder))
    name = "prunegrid-results-" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    block.save(name, overwrite=True)
    return block


CACHED = {"persist_result": True, "result_serializer": "json"}
