"""MLflow tracking: experiments, one parent run per grid, one nested run per job.

Everything goes through an explicit `MlflowClient` for a given tracking URI, so no
global tracking state is set at import time or shared between threads.
"""

from __future__ import annotations

import base64
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

# A parent run's tag on its children; MLflow's UI nests runs by it.
PARENT_TAG = "mlflow.parentRunId"
# The tag that tells a grid's parent run from its job runs (teacher, pruned, distilled).
ROLE_TAG, GRID_ROLE = "role", "grid"
# The experiment's kind: MLflow 3's UI opens a "machine learning" experiment on its runs, not on
# the GenAI overview (the UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
KIND_TAG, KIND_MACHINE_LEARNING = "mlflow.experimentKind", "custom_model_development"
# The UI's own switch between its GenAI and machine-learning views, read from the URL.
WORKFLOW = "workflowType=machine_learning"


class TrackingError(RuntimeError):
    """The MLflow server cannot be reached or refused a request; names the URI."""


@dataclass(frozen=True)
class ModelRef:
    """A trained model: its job, MLflow run, artifact path and local copy."""

    job_id: str
    run_id: str
    artifact_path: str
    local_dir: str

    @property
    def uri(self) -> str:
        return f"runs:/{self.run_id}/{self.artifact_path}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, instead of MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as reply:
            if reply.status != 200:
                raise TrackingError(f"MLflow server {uri} answered /health with HTTP {reply.status}")
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(
            f"MLflow server {uri} is unreachable ({error}); start one with `make up` "
            "or point MLFLOW_TRACKING_URI at a running server"
        ) from None
    _check_credentials(uri, timeout)


def _check_credentials(uri: str, timeout: float) -> None:
    """A server with auth on answers /health to anyone: one small read tells if we may in.

    Sends what MLflow's client sends: MLFLOW_TRACKING_USERNAME/PASSWORD (basic auth) or
    MLFLOW_TRACKING_TOKEN (bearer). Only a refusal is reported; anything else is MLflow's.
    """
    headers = {}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    probe = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            who = f"user {user!r}" if user and password else "requests without credentials"
            raise TrackingError(
                f"MLflow server {uri} refused {who} (HTTP {error.code}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an MLflow user's "
                "credentials") from None
    except (urllib.error.URLError, OSError):
        return  # /health answered a moment ago; let MLflow's own retries deal with a blip


def client(uri: str) -> MlflowClient:
    # Bounded retries: an unreachable server should fail in seconds, not minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created on first use, of the machine-learning kind (unless a user
    chose another kind in the UI)."""
    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        return mlflow.create_experiment(name, tags={KIND_TAG: KIND_MACHINE_LEARNING})
    if found.lifecycle_stage == "deleted":
        mlflow.restore_experiment(found.experiment_id)
    if KIND_TAG not in found.tags:
        mlflow.set_experiment_tag(found.experiment_id, KIND_TAG, KIND_MACHINE_LEARNING)
    return found.experiment_id


def runs_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI page of a run (or of the experiment's runs list), in the machine-learning view."""
    run = f"/{run_id}" if run_id else ""
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs{run}?{WORKFLOW}"


def artifact_url(uri: str, experiment_id: str, run_id: str, artifact_file: str) -> str:
    """The UI page showing one artifact of a run (an image is shown in place)."""
    path = urllib.parse.quote(artifact_file)
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path}?{WORKFLOW}"


def raw_artifact_url(uri: str, run_id: str, artifact_file: str) -> str:
    """The file itself, as the server sends it (what a markdown image can point to)."""
    query = urllib.parse.urlencode({"path": artifact_file, "run_uuid": run_id})
    return f"{uri.rstrip('/')}/get-artifact?{query}"


def start_run(uri: str, experiment_id: str, name: str, *, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> str:
    """Create a run (nested under `parent_run_id` when given); returns its id."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client(uri).create_run(experiment_id, run_name=name, tags=all_tags)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, object]) -> None:
    # MLflow caps a param value at 6000 characters; our values are short.
    entries = [Param(key, str(value)[:6000]) for key, value in sorted(params.items())]
    for start in range(0, len(entries), 100):
        client(uri).log_batch(run_id, params=entries[start:start + 100])


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    entries = [Metric(key, float(value), now, step) for key, value in sorted(metrics.items())]
    client(uri).log_batch(run_id, metrics=entries)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    mlflow = client(uri)
    for key, value in tags.items():
        mlflow.set_tag(run_id, key, value)


def log_dir(uri: str, run_id: str, local_dir: Path, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def log_file(uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_path)


def log_figure(uri: str, run_id: str, figure: object, artifact_file: str) -> None:
    """A matplotlib figure as an image artifact (the run page shows it in place)."""
    client(uri).log_figure(run_id, figure, artifact_file)


def download_artifact(uri: str, run_id: str, artifact_path: str, dst: Path) -> Path:
    """One artifact of a run, copied under `dst`; its local path."""
    return Path(client(uri).download_artifacts(run_id, artifact_path, str(dst)))


def end_run(uri: str, run_id: str, ok: bool, error: str | None = None, *, killed: bool = False) -> None:
    """FINISHED when `ok`; else KILLED when `killed` (stopped with its driver), else FAILED."""
    mlflow = client(uri)
    if error:
        mlflow.set_tag(run_id, "error", error[:5000])
    status = RunStatus.FINISHED if ok else RunStatus.KILLED if killed else RunStatus.FAILED
    mlflow.set_terminated(run_id, RunStatus.to_string(status))


def close_interrupted_runs(uri: str, experiment_id: str, tag: str, value: str) -> list[str]:
    """End as KILLED the runs tagged `tag=value` still RUNNING (their driver died); their ids.

    Called before a job (tag job_id) or a grid (tag config_hash) starts: a job runs under one
    driver at a time (its Ray run folder is its own), so a RUNNING run of the same job or
    grid at that point was interrupted, not concurrent.
    """
    mlflow = client(uri)
    stale = mlflow.search_runs([experiment_id], f"tags.{tag} = '{value}' and attributes.status = 'RUNNING'")
    for run in stale:
        mlflow.set_tag(run.info.run_id, "error", "interrupted: its driver stopped; the job was run again")
        mlflow.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return [run.info.run_id for run in stale]


def kill_running(uri: str, experiment_id: str, grid_run_id: str, why: str) -> list[str]:
    """End as KILLED the grid run `grid_run_id` and its job runs while still RUNNING (their driver
    is stopping); their ids."""
    mlflow = client(uri)
    running = mlflow.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{grid_run_id}' and "
                                 "attributes.status = 'RUNNING'")
    ids = [run.info.run_id for run in running]
    if mlflow.get_run(grid_run_id).info.status == "RUNNING":
        ids.append(grid_run_id)
    for run_id in ids:
        end_run(uri, run_id, ok=False, error=why, killed=True)
    return ids


def latest_grid_url(uri: str) -> str:
    """The UI page of the newest grid run on the server, in any experiment (the server's
    address when it holds none)."""
    mlflow = client(uri)
    ids = [e.experiment_id for e in mlflow.search_experiments()]
    runs = mlflow.search_runs(ids, f"tags.{ROLE_TAG} = '{GRID_ROLE}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    return runs_url(uri, runs[0].info.experiment_id, runs[0].info.run_id) if runs else uri
