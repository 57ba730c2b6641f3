"""Settings from the environment: where state lives, which servers to use, offline switches.

Nothing here runs at import time; callers ask for `Settings.from_env()` when they start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The switches that keep the Hugging Face libraries off the hub; PRUNEGRID_ALLOW_HUB=1 lifts them.
HUB_SWITCHES: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")

# Every process the pipeline starts (Ray workers, servers) inherits these, so no
# component phones home or tries a model hub. MLflow wants "true", not "1".
OFFLINE_ENV: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    # With usage stats off, the dashboard of a `ray start` cluster still posts a "disabled"
    # notice to usage-stats.ray.io; pointing it at a closed loopback port keeps it home.
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    **dict.fromkeys(HUB_SWITCHES, "1"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Defaults for a busy 2-core machine: Prefect's ephemeral API gets 20 s to start otherwise.
PREFECT_ENV: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


@dataclass(frozen=True)
class Settings:
    """Where the pipeline keeps its state and which external services it talks to."""

    home: Path  # PRUNEGRID_HOME: data, checkpoints, models, local servers (layout: paths.py)
    mlflow_tracking_uri: str | None  # MLFLOW_TRACKING_URI; None: a local server is needed
    ray_address: str | None  # RAY_ADDRESS; None: start a local Ray on this machine
    allow_hub: bool  # PRUNEGRID_ALLOW_HUB=1 lets `datasets` reach the Hugging Face hub

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("PRUNEGRID_HOME") or Path.cwd() / ".prunegrid").resolve()
        return cls(
            home=home,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            ray_address=env.get("RAY_ADDRESS") or None,
            allow_hub=env.get("PRUNEGRID_ALLOW_HUB", "0") == "1",
        )


def offline_env(allow_hub: bool) -> dict[str, str]:
    """OFFLINE_ENV, less the hub switches when the hub is allowed."""
    return {key: value for key, value in OFFLINE_ENV.items() if not (allow_hub and key in HUB_SWITCHES)}


def apply_offline_env(allow_hub: bool = False) -> None:
    """Set the offline switches in this process so children inherit them.

    Values already set by the user win, except the hub switches when the hub is not allowed.
    """
    for key, value in PREFECT_ENV.items():
        os.environ.setdefault(key, value)
    for key, value in offline_env(allow_hub).items():
        os.environ.setdefault(key, value)
