"""MLflow's basic-auth app: its config file and the pipeline's user, over plain REST.

The production MLflow server runs `mlflow server --app-name basic-auth` (docker/compose.yaml).
In MLflow 3.17 the app reads an INI file named by MLFLOW_AUTH_CONFIG_PATH (default: the
`basic_auth.ini` inside the mlflow package); its admin user is created on the first start
against an empty user store, from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD
(these win over `admin_username` / `admin_password` in the file). There is no default admin
password: without one the server refuses to start. The pipeline itself is an ordinary user,
created by the admin, whose credentials reach MLflow's client as MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD.

    python -m infra.stack.mlflow_auth ensure-user    # compose's mlflow-users job; reads:
        MLFLOW_TRACKING_URI, MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD,
        MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (the user to create)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

USERS = "/api/2.0/mlflow/users"
MIN_PASSWORD = 12  # MLflow 3.17 rejects shorter passwords


class AuthError(RuntimeError):
    """The auth server refused or could not be reached; names the URI and the fix."""


def write_config(path: Path, *, database_uri: str, admin_username: str | None = None,
                 admin_password: str | None = None, default_permission: str = "READ") -> Path:
    """Write a basic-auth INI file readable by its owner only; returns its path.

    Leave the admin fields out to take them from MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD instead.
    """
    lines = ["[mlflow]", f"default_permission = {default_permission}",
             f"database_uri = {database_uri}",
             "authorization_function = mlflow.server.auth:authenticate_request_basic_auth"]
    if admin_username:
        lines.append(f"admin_username = {admin_username}")
    if admin_password:
        lines.append(f"admin_password = {admin_password}")
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def request(uri: str, path: str, *, body: dict | None = None, headers: dict[str, str] | None = None,
            timeout: float = 10.0) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a JSON POST when `body` is given."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{uri.rstrip('/')}{path}", data=data,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.status, _json(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, _json(error.read())
    except (urllib.error.URLError, OSError) as error:
        raise AuthError(f"MLflow server {uri} is unreachable ({error})") from None


def ensure_user(uri: str, username: str, password: str, *, admin_username: str,
                admin_password: str) -> bool:
    """Create `username` as the admin unless it exists; True when this call created it.

    An existing user keeps its password: rotate it with MLflow's update-password API.
    """
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"the password for MLflow user {username!r} is shorter than "
                        f"{MIN_PASSWORD} characters, which MLflow refuses")
    admin = basic_auth(admin_username, admin_password)
    query = urllib.parse.urlencode({"username": username})
    status, _ = request(uri, f"{USERS}/get?{query}", headers=admin)
    if status == 200:
        return False
    if status in (401, 403):
        raise AuthError(f"MLflow server {uri} refused the admin user {admin_username!r} "
                        f"(HTTP {status}); check MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD")
    status, reply = request(uri, f"{USERS}/create", body={"username": username, "password": password},
                            headers=admin)
    if status != 200:
        raise AuthError(f"MLflow server {uri} did not create user {username!r} (HTTP {status}: "
                        f"{reply.get('message', reply)})")
    return True


def _json(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"message": raw.decode(errors="replace")[:500]}
    return value if isinstance(value, dict) else {"value": value}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack.mlflow_auth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("ensure-user",))
    parser.parse_args(argv)
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
             "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    if missing := [name for name in names if not os.environ.get(name)]:
        print(f"error: set {', '.join(missing)}", file=sys.stderr)
        return 1
    env = {name: os.environ[name] for name in names}
    try:
        created = ensure_user(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_USERNAME"],
                              env["MLFLOW_TRACKING_PASSWORD"],
                              admin_username=env["MLFLOW_AUTH_ADMIN_USERNAME"],
                              admin_password=env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    except AuthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    state = "created" if created else "already exists"
    print(f"MLflow user {env['MLFLOW_TRACKING_USERNAME']!r} {state} on {env['MLFLOW_TRACKING_URI']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
