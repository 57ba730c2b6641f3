"""MLflow model registry: register every model, promote under a quality gate.

Selection is a pure function of evaluation records (`choose`), so it is tested
without a server; `register` and `promote` only apply its answer, idempotently.
Aliases: `champion` is the passing model at the highest sparsity (best dev metric
among equals); `champion-sNN` is the best passing model of each sparsity budget.
A model below the gate is never promoted. The teacher (sparsity 0) is a candidate, so
a grid whose pruned models all fail still has a champion: the dense model.

Several experiments may register into one model (a name without {experiment}). Each grid
records its own choice on the registered model (a tag per experiment, replaced when the
experiment runs again); the aliases go to the best of all experiments' choices, so a second
experiment takes an alias only by beating the holder, and never deletes one it did not earn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path


from infra.models import pretrained
from infra.track.tracking import ModelRef, client

CHAMPION = "champion"
CHOICE_TAG = "prunegrid.choice."  # + experiment: that experiment's last choice, alias -> Candidate


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


def merge(choices: Iterable[dict[str, Candidate]]) -> dict[str, Candidate]:
    """Alias -> candidate across several grids' choices (each passed its own grid's gate):
    `choose`'s ranking over every version some grid chose. Pure and deterministic."""
    union = {c.version: c for chosen in choices for c in chosen.values()}
    return choose(list(union.values()), teacher_metric=-math.inf, max_drop=0.0)


def promote(uri: str, name: str, chosen: dict[str, Candidate], managed: list[str], *,
            scope: str) -> dict[str, str]:
    """Record `chosen` as experiment `scope`'s choice, then point each alias at the best of
    every experiment's choice (`merge`); drop aliases nobody earned. Idempotent.

    `managed`: the aliases this grid decides (champion and its budgets); any other
    `champion-sNN` alias another experiment's choice no longer holds goes too.
    """
    mlflow = client(uri)
    model = mlflow.get_registered_model(name)
    mine = json.dumps({alias: asdict(c) for alias, c in sorted(chosen.items())}, sort_keys=True)
    if model.tags.get(CHOICE_TAG + scope) != mine:
        mlflow.set_registered_model_tag(name, CHOICE_TAG + scope, mine)
    others = [{alias: Candidate(**c) for alias, c in json.loads(text).items()}
              for key, text in model.tags.items() if key.startswith(CHOICE_TAG) and key != CHOICE_TAG + scope]
    wanted = merge([chosen, *others])
    current = dict(model.aliases)
    for alias, candidate in wanted.items():
        if str(current.get(alias)) != candidate.version:
            mlflow.set_registered_model_alias(name, alias, candidate.version)
    ours = {*managed, *(a for a in current if a == CHAMPION or a.startswith(f"{CHAMPION}-s"))}
    for alias in ours - set(wanted):
        if alias in current:
            mlflow.delete_registered_model_alias(name, alias)
    return {alias: c.version for alias, c in wanted.items()}


def download(uri: str, name: str, alias: str, dst: Path) -> Path:
    """Fetch the version behind `name@alias` into `dst`; loadable with from_pretrained."""
    mlflow = client(uri)
    version = mlflow.get_model_version_by_alias(name, alias)
    dst.mkdir(parents=True, exist_ok=True)
    path = mlflow.download_artifacts(version.run_id, "model", str(dst))
    pretrained.load_saved(path)  # fail here, naming the path, if what came down is not a model
    return Path(path)
