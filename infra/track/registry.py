"""MLflow model registry: register every model, promote under a quality gate.

Selection is a pure function of evaluation records (`choose`), so it is tested
without a server; `register` and `promote` only apply its answer, idempotently.
Aliases: `champion` is the passing model at the highest sparsity (best dev metric
among equals); `champion-sNN` is the best passing model of each sparsity budget.
A model below the gate is never promoted. The teacher (sparsity 0) is a candidate, so
a grid whose pruned models all fail still has a champion: the dense model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from infra.models import pretrained
from infra.track.tracking import ModelRef, client

CHAMPION = "champion"


@dataclass(frozen=True)
class Candidate:
    """What promotion needs to know about one registered model version."""

    version: str
    job_id: str
    target_sparsity: float
    encoder_sparsity: float
    dev_metric: float


def budget_alias(target_sparsity: float) -> str:
    return f"{CHAMPION}-s{round(target_sparsity * 100):02d}"


def passes_gate(candidate: Candidate, teacher_metric: float, max_drop: float) -> bool:
    # The small epsilon keeps "exactly max_drop below" on the passing side despite float noise.
    return candidate.dev_metric >= teacher_metric - max_drop - 1e-9


def choose(candidates: list[Candidate], teacher_metric: float, max_drop: float) -> dict[str, Candidate]:
    """Alias -> candidate for every alias that has a passing model. Pure and deterministic."""
    passing = [c for c in candidates if passes_gate(c, teacher_metric, max_drop)]
    chosen: dict[str, Candidate] = {}
    if not passing:
        return chosen

    def rank(c: Candidate) -> tuple:
        # Higher metric first, then higher measured sparsity, then the earlier job id for ties.
        return (-c.dev_metric, -c.encoder_sparsity, c.job_id)

    top_budget = max(round(c.target_sparsity, 4) for c in passing)
    chosen[CHAMPION] = min((c for c in passing if round(c.target_sparsity, 4) == top_budget), key=rank)
    for budget in sorted({round(c.target_sparsity, 4) for c in passing}):
        if budget > 0:
            chosen[budget_alias(budget)] = min(
                (c for c in passing if round(c.target_sparsity, 4) == budget), key=rank)
    return chosen


def register(uri: str, name: str, ref: ModelRef, tags: dict[str, str]) -> str:
    """Register `ref` under `name` (once per run: a second call returns the same version)."""
    mlflow = client(uri)
    try:
        mlflow.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises RestException / MlflowException for "not found"
        mlflow.create_registered_model(name, description="prunegrid: pruned encoders and their teacher")
    for existing in mlflow.search_model_versions(f"name = '{name}' and run_id = '{ref.run_id}'"):
        if existing.tags.get("job_id") == ref.job_id:
            return existing.version
    version = mlflow.create_model_version(name, source=_source(mlflow, ref), run_id=ref.run_id,
                                          tags={"job_id": ref.job_id, **tags})
    return version.version


def _source(mlflow, ref: ModelRef) -> str:
    # The version points at the run's logged artifacts (safetensors + tokenizer).
    run = mlflow.get_run(ref.run_id)
    return f"{run.info.artifact_uri.rstrip('/')}/{ref.artifact_path}"


def promote(uri: str, name: str, chosen: dict[str, Candidate], managed: list[str]) -> dict[str, str]:
    """Point each alias at its chosen version; drop managed aliases nobody earned. Idempotent."""
    mlflow = client(uri)
    current = dict(mlflow.get_registered_model(name).aliases)
    for alias, candidate in chosen.items():
        if current.get(alias) != candidate.version:
            mlflow.set_registered_model_alias(name, alias, candidate.version)
    for alias in managed:
        if alias not in chosen and alias in current:
            mlflow.delete_registered_model_alias(name, alias)
    return {alias: c.version for alias, c in chosen.items()}


def download(uri: str, name: str, alias: str, dst: Path) -> Path:
    """Fetch the version behind `name@alias` into `dst`; loadable with from_pretrained."""
    mlflow = client(uri)
    version = mlflow.get_model_version_by_alias(name, alias)
    dst.mkdir(parents=True, exist_ok=True)
    path = mlflow.download_artifacts(version.run_id, "model", str(dst))
    pretrained.load_saved(path)  # fail here, naming the path, if what came down is not a model
    return Path(path)
