"""Two experiments that register into one model (a `model_name` without {experiment}): the
second takes `champion` only by beating the first, and never deletes an alias the first one's
models earned. Real MLflow server; the models are registered, not trained (registration and
promotion read metrics and tags only)."""

from __future__ import annotations

import pytest

from infra.experiment.config import RegistrySpec
from infra.experiment.jobs import EvalRecord, GridContext, register_and_promote
from infra.track import tracking
from infra.track.tracking import ModelRef, client

pytestmark = pytest.mark.integration
SPEC = RegistrySpec(model_name="shared-{task}")
MODEL = "shared-reviews"
METRIC = "dev_accuracy"


def _grid(uri: str, experiment: str, results: dict[float, float]) -> dict[str, str]:
    """One experiment's grid: sparsity -> dev accuracy (0.0: its teacher); registered and
    promoted as the flow does. Returns each sparsity's registered version."""
    experiment_id = tracking.ensure_experiment(uri, experiment)
    ctx = GridContext(experiment, uri, experiment_id, tracking.start_run(uri, experiment_id, "grid"),
                      "/unused", "/unused")
    records = []
    for sparsity, accuracy in results.items():
        job_id = f"{experiment}-s{round(sparsity * 100)}"
        run_id = tracking.start_run(uri, experiment_id, job_id, parent_run_id=ctx.parent_run_id)
        metrics = ((METRIC, accuracy), ("encoder_sparsity", sparsity))
        records.append(EvalRecord(job_id, job_id, "gmp" if sparsity else "dense", sparsity,
                                  ModelRef(job_id, run_id, "model", "/unused"), metrics))
    teacher, pruned = records[0], records[1:]
    promotion = register_and_promote("reviews", pruned, teacher, ctx, SPEC, (0.5, 0.9), METRIC)
    by_job = dict(promotion.versions)
    return {f"{r.target_sparsity:.1f}": by_job[r.job_id] for r in records}


def _aliases(uri: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client(uri).get_registered_model(MODEL).aliases.items()}


def test_a_second_experiment_takes_an_alias_only_by_beating_it(mlflow_server):
    uri = mlflow_server.url
    first = _grid(uri, "shared-a", {0.0: 0.80, 0.5: 0.80, 0.9: 0.80})  # passes at 90%
    assert _aliases(uri) == {"champion": first["0.9"], "champion-s50": first["0.5"],
                             "champion-s90": first["0.9"]}

    # A second experiment whose 90% model fails its gate: it adds nothing better, removes nothing.
    second = _grid(uri, "shared-b", {0.0: 0.80, 0.5: 0.79, 0.9: 0.50})
    assert _aliases(uri) == {"champion": first["0.9"], "champion-s50": first["0.5"],
                             "champion-s90": first["0.9"]}

    # Run again, it beats the first at 90%: now it holds champion and champion-s90.
    again = _grid(uri, "shared-b", {0.0: 0.80, 0.5: 0.79, 0.9: 0.81})
    assert _aliases(uri) == {"champion": again["0.9"], "champion-s50": first["0.5"],
                             "champion-s90": again["0.9"]}

    # The first experiment, rerun with nothing passing, withdraws its own models from the
    # aliases (a rerun replaces an experiment's picks) and takes nothing from the second.
    _grid(uri, "shared-a", {0.0: 0.80, 0.5: 0.60, 0.9: 0.60})
    assert _aliases(uri) == {"champion": again["0.9"], "champion-s50": again["0.5"],
                             "champion-s90": again["0.9"]}
    assert second["0.5"] != again["0.5"]  # the rerun's own s50 model, not the earlier one
