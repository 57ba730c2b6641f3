"""Run the prune-grid CLI as a user would: a separate process, real servers on loopback."""

from __future__ import annotations

import codecs
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/configs/tiny.yaml"
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+|0\.0\.0\.0|::)$")
ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flow_env(home: Path, tracking_uri: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PRUNEGRID_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PYTHONUNBUFFERED": "1",
    })
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    return env


def write_config(tmp_path: Path, name: str, change: Callable[[dict], None]) -> Path:
    """The tiny config named `name`, edited in place by `change`, written under `tmp_path`."""
    data = yaml.safe_load(TINY.read_text())
    data["name"] = name
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_grid(config: Path, env: dict[str, str], *, timeout: float = 900,
             trace: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m flows.prune_grid CONFIG`, optionally under strace (network syscalls only)."""
    command = [sys.executable, "-m", "flows.prune_grid", str(config)]
    if trace is not None:
        strace = shutil.which("strace")
        assert strace, "strace is needed to check that a run stays on loopback (Debian package strace)"
        command = [strace, "-f", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg,sendmmsg",
                   "-s", "300", "-o", str(trace), *command]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def remote_addresses(trace: Path) -> set[str]:
    """Every IPv4/IPv6 address any traced process tried to connect to."""
    found = set()
    for match in ADDRESS.finditer(trace.read_text()):
        found.add(match.group(1) or match.group(2))
    return found


def off_loopback(addresses: set[str]) -> set[str]:
    return {a for a in addresses if not LOOPBACK.match(a)}


DNS_PORT = re.compile(r"^(\d+) connect\((\d+), \{sa_family=AF_INET6?, sin6?_port=htons\(53\)")
PAYLOAD = re.compile(r'^(\d+) (?:sendto|sendmsg|sendmmsg)\((\d+), .*?"((?:[^"\\]|\\.)*)"')


def dns_questions(trace: Path) -> list[str]:
    """The names asked of a DNS server (UDP/TCP port 53) by any traced process."""
    dns_sockets, names = set(), []
    for line in trace.read_text().splitlines():
        if match := DNS_PORT.match(line):
            dns_sockets.add((match.group(1), match.group(2)))
        elif (match := PAYLOAD.match(line)) and (match.group(1), match.group(2)) in dns_sockets:
            names.append(_qname(codecs.escape_decode(match.group(3).encode())[0]))
    return names


def _qname(packet: bytes) -> str:
    labels, i = [], 12  # the question starts after the 12-byte header
    while i < len(packet) and packet[i]:
        labels.append(packet[i + 1:i + 1 + packet[i]].decode("ascii", "replace"))
        i += 1 + packet[i]
    return ".".join(labels)


LOOPBACK_PTR = re.compile(r"^(\d+\.\d+\.\d+\.127\.in-addr\.arpa|(0\.){31}1\.0\.ip6\.arpa)$")


def non_loopback_questions(names: list[str]) -> set[str]:
    """DNS questions other than reverse lookups of loopback addresses."""
    return {n for n in names if not LOOPBACK_PTR.match(n)}


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every living process (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z":  # a zombie has exited; only its parent's wait is missing
            found[int(entry.name)] = (int(fields[1]), int(fields[3]), command)
    return found


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every living process below `pid`."""
    table, found, todo = processes(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, command) in table.items():
            if ppid == parent and child not in found:
                found[child] = command
                todo.append(child)
    return found


def running_job(mlflow, experiment: str, deadline: float):
    """A training job's run once it is RUNNING and has logged a training step."""
    while time.monotonic() < deadline:
        found = mlflow.get_experiment_by_name(experiment)
        runs = mlflow.search_runs([found.experiment_id], "attributes.status = 'RUNNING'") if found else []
        for run in runs:
            if run.data.tags.get("role") != "grid" and "train_loss" in run.data.metrics:
                return run
        time.sleep(0.5)
    raise AssertionError(f"no job of {experiment} started training in time")
