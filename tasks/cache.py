"""Task caching: running the same experiment again reuses every job that already finished.

A key holds what determines a result and nothing else, and the code and library versions.
A training job's key is its run key (jobs.run_key: its `job_id`, the data's content hash,
the MLflow runs of the models it starts from, the pretrained weights' fingerprint), the
same key that names its model and checkpoint folders: a result is never cached under one
name and trained under another. An evaluation's key is the model's run, the data and the
evaluation settings. The grid's MLflow parent run and the flow run change every time, so
they stay out. Changing one grid value changes the keys of the jobs it touches and of
whatever starts from them only; the rest come from the cache.

Results are small references, stored as JSON (not pickle) under PRUNEGRID_HOME/results,
beside the models they point to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem

from infra.experiment import jobs, paths
from infra.experiment.provenance import code_version, library_versions


def key(kind: str, *parts: object) -> str:
    """`kind-<hash>` of the parts, the code and the library versions (readable in the results folder)."""
    canonical = json.dumps([str(p) for p in (*parts, code_version(), library_versions())])
    return f"{kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def train_key(_context: Any, parameters: dict[str, Any]) -> str:
    """A training job: its run key (config, data, the teacher or student it starts from, ...)."""
    run = jobs.run_key(parameters["job"], parameters["dataset"], parameters.get("teacher"),
                       parameters["ctx"], parameters.get("student"))
    return key("train", run)


def evaluate_key(_context: Any, parameters: dict[str, Any]) -> str:
    """An evaluation: the model's run, the data and the evaluation settings."""
    spec = parameters["spec"].model_dump_json()
    return key("evaluate", parameters["model"].run_id, parameters["dataset"].content_hash, spec)


def distil_key(_context: Any, parameters: dict[str, Any]) -> str:
    """A task-agnostic distillation: its run key (config, text corpus, pretrained weights, ...)."""
    return key("distil", jobs.run_key(parameters["job"], parameters["corpus"], None, parameters["ctx"]))


def storage(home: str | Path) -> LocalFileSystem:
    """Where cached results live for a PRUNEGRID_HOME (a block saved on the Prefect server,
    as Prefect requires of result storage; one per home, overwritten in place)."""
    folder = paths.results_dir(Path(home).resolve())
    block = LocalFileSystem(basepath=str(folder))
    name = "prunegrid-results-" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    block.save(name, overwrite=True)
    return block


CACHED = {"persist_result": True, "result_serializer": "json"}
