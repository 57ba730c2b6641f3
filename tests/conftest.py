"""Test session environment, the tiny model every test shares, and real local servers on loopback.

The environment is set in `pytest_configure`, before any test module imports prefect,
mlflow or ray (they read some settings at import): offline switches, and every state
folder (PREFECT_HOME, PRUNEGRID_HOME, HF_HOME, RAY_TMPDIR) in a temp dir of this session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from torch import Tensor, nn
from transformers import BertConfig

from infra.experiment.settings import OFFLINE_ENV
from infra.stack.local_stack import LocalStack, ServiceInfo
from tests import tiny

# Servers the developer may have exported for `make demo`; tests must not write to them.
_OUTSIDE_SERVERS = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_API_KEY", "RAY_ADDRESS")
_session_dirs: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    base = Path(tempfile.mkdtemp(prefix="prunegrid-tests-"))
    # Ray puts unix sockets under RAY_TMPDIR; their paths must stay under ~107 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="pg-ray-", dir="/tmp"))
    _session_dirs.extend([base, ray_tmp])
    os.environ.update(OFFLINE_ENV)
    for key in _OUTSIDE_SERVERS:
        os.environ.pop(key, None)
    os.environ.update({
        "PRUNEGRID_HOME": str(base / "home"),
        "PREFECT_HOME": str(base / "prefect"),
        "HF_HOME": str(base / "hf"),
        "RAY_TMPDIR": str(ray_tmp),
    })
    # A Prefect worker asks for new flow runs every 10 s, a wait sized for long flows: the
    # tests' workers (they inherit this) ask every 2 s.
    os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", "2")


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _session_dirs:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tiny_config() -> Callable[..., BertConfig]:
    """tiny_bert_config(**overrides): the BertConfig of hidden 32, 2 layers (tests/tiny.py)."""
    return tiny.tiny_bert_config


@pytest.fixture
def tiny_encoder() -> Callable[..., nn.Module]:
    """make_tiny_encoder(seed=0, **config overrides): a BertModel of the tiny config."""
    return tiny.make_tiny_encoder


@pytest.fixture
def tiny_bert() -> Callable[..., nn.Module]:
    """make_tiny_bert(seed=0, **config overrides): a BertForSequenceClassification, 2 labels."""
    return tiny.make_tiny_bert


@pytest.fixture
def make_batch() -> Callable[..., dict[str, Tensor]]:
    """random_batch(generator, size=4, length=8): ids, masks [B, T] and labels [B]."""
    return tiny.random_batch


@pytest.fixture
def train_step() -> Callable[..., tuple[Tensor, dict[str, float]]]:
    """train_step(method, batch, optimizer, *, step, model=None, scheduler=None, max_grad_norm=inf):
    one step of the product's loop (infra.train.loop.train_step) as a test takes it (tests/tiny.py)."""
    return tiny.train_step


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One LocalStack for the session on free loopback ports; everything stops at the end."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"), mlflow_port=0, prefect_port=0,
                       ready_timeout_s=180.0)
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def mlflow_server(local_stack: LocalStack) -> ServiceInfo:
    """A running `mlflow server` (sqlite + local artifacts); its `url` is the tracking URI."""
    return local_stack.up(["mlflow"])["mlflow"]


@pytest.fixture(scope="session")
def prefect_server(local_stack: LocalStack) -> ServiceInfo:
    """A running `prefect server`; clients use `url + "/api"` as PREFECT_API_URL."""
    return local_stack.up(["prefect-server"])["prefect-server"]


@pytest.fixture(scope="session")
def prefect_worker(local_stack: LocalStack, mlflow_server: ServiceInfo,
                   prefect_server: ServiceInfo) -> Callable[..., ServiceInfo]:
    """Start (or reuse) a process worker polling `pool` on the session's Prefect server.

    Its flow runs log to `mlflow_server` (the worker gets the running stack's variables).
    One worker at a time: asking for another pool replaces the running worker.
    """

    def start(pool: str = "prunegrid-process") -> ServiceInfo:
        if local_stack.pool != pool:
            local_stack.down(["prefect-worker"])
            local_stack.pool = pool
        return local_stack.up(["prefect-worker"])["prefect-worker"]

    return start


@pytest.fixture
def stack_env(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point this test's clients at the session's running servers.

    Sets the variables for subprocesses and MLflow (which reads them on each call). Prefect
    reads its settings once at import, so its API URL is also set in its settings context.
    """
    env = local_stack.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "PREFECT_API_URL" not in env:
        yield env
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        yield env
