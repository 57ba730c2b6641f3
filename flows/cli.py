"""`prunegrid`: the commands a user runs by hand (the Makefile's demo/ui/up/down/status/deploy).

    prunegrid run [CONFIG] [--verbose]   the prune-grid flow on one experiment YAML
    prunegrid results [EXPERIMENT]       the newest results table (of EXPERIMENT, else of any)
    prunegrid ui [EXPERIMENT]            start MLflow if needed and print the UI's address
    prunegrid up | down | status         the local stack (MLflow, Prefect server and worker)
    prunegrid deploy                     register prefect.yaml's deployments on the stack's Prefect
    prunegrid claims [CONFIGS]           the benchmark refresh (configs/claims), then README's claims

Servers: MLFLOW_TRACKING_URI when set, else the local stack's MLflow on loopback (started when
needed); a stack started by `prunegrid up` also lends its Prefect server (the flow runs show
there) and its Ray head, unless PREFECT_API_URL / RAY_ADDRESS name others.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.experiment.settings import Settings, apply_offline_env
from infra.stack import local_stack
from infra.stack.local_stack import PROJECT_ROOT, LocalStack, StackError
from infra.train.console import VERBOSE_ENV

PROG = "prunegrid"
STACK = "mlflow,prefect-server,prefect-worker"  # `prunegrid up`: what `make up` always started
# A stack service's variables (LocalStack.env: those with its prefix), applied as a group
# unless the user's environment names a server of its own.
_STACK_ENV = {"MLFLOW_TRACKING_URI": "MLFLOW_", "PREFECT_API_URL": "PREFECT_", "RAY_ADDRESS": "RAY_"}


def tracking_uri(settings: Settings) -> str:
    """MLFLOW_TRACKING_URI, else the local stack's loopback MLflow server, started if needed."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return LocalStack.from_env(settings).up(["mlflow"])["mlflow"].url


def parser() -> argparse.ArgumentParser:
    """The `prunegrid` command line: one subcommand per thing a user does by hand."""
    top = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the prune-grid flow on an experiment YAML")
    run.add_argument("config", nargs="?", default="configs/demo.yaml", help="experiment YAML")
    run.add_argument("-v", "--verbose", action="store_true",
                     help=f"show Ray's start-up lines and progress bars too (or {VERBOSE_ENV}=1)")
    for name, text in (("results", "print the newest results table"), ("ui", "print the MLflow UI's address")):
        command = commands.add_parser(name, help=text)
        command.add_argument("experiment", nargs="?", help="experiment name (default: the newest grid run's)")
    for name, text, default in (("up", "start the local stack", STACK), ("down", "stop the local stack", None)):
        command = commands.add_parser(name, help=text)
        command.add_argument("--services", default=default, help=f"comma-separated, from "
                             f"{','.join(local_stack.SERVICES)} (default: {default or 'all'})")
    commands.add_parser("status", help="which local servers run, and where")
    commands.add_parser("deploy", help="register prefect.yaml's deployments on the stack's Prefect server")
    claims = commands.add_parser("claims", help="run the claims experiments, write their report and the "
                                 "README's claims section")
    claims.add_argument("configs", nargs="?", default="configs/claims", help="a folder of experiment YAMLs, or one")
    claims.add_argument("--report-only", action="store_true",
                        help="measure the claims from MLflow without running any grid")
    claims.add_argument("--readme", default=str(PROJECT_ROOT / "README.md"),
                        help="README whose claims section is regenerated ('' to leave it)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    # Where `make` keeps Prefect's state; set before anything imports prefect.
    os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    apply_offline_env(settings.allow_hub)
    try:
        return _COMMANDS[args.command](args, settings)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # Ray workers and servers started from here inherit it
    use_stack(LocalStack.from_env(settings))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # else Prefect warns
    from flows import prune_grid  # prefect, ray and torch: only the command that needs them

    code = prune_grid.main([args.config])
    uri = os.environ.get("MLFLOW_TRACKING_URI") or _running_mlflow(settings)
    if code != 2 and uri:  # 2: stopped in preflight, before any grid run
        from infra.track import tracking
        print(f"\nMLflow UI, the grid run (results tables, trade-off figure): "
              f"{tracking.latest_grid_url(uri)}  (stop the servers with: {PROG} down)")
    return code


def use_stack(stack: LocalStack) -> dict[str, str]:
    """Point this process at the stack's running servers, each unless the environment names
    its own; returns what was set."""
    offered, applied = stack.env(), {}
    for key, prefix in _STACK_ENV.items():
        if key in offered and not os.environ.get(key):
            applied |= {name: value for name, value in offered.items() if name.startswith(prefix)}
    os.environ.update(applied)
    return applied


def _running_mlflow(settings: Settings) -> str | None:
    info = LocalStack.from_env(settings).status()["mlflow"]
    return info.url if info else None


def _results(args: argparse.Namespace, settings: Settings) -> int:
    from infra.track import grid_runs, tracking

    try:
        found = grid_runs.latest_results(tracking_uri(settings), args.experiment)
    except tracking.TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Results of experiment '{found.experiment}', grid run {found.run_name} ({found.status}):\n")
    print(found.markdown.rstrip("\n"))
    print(f"\nMLflow: {found.url}")
    return 0


def _ui(args: argparse.Namespace, settings: Settings) -> int:
    from infra.track import grid_runs, tracking

    uri = tracking_uri(settings)
    try:
        page = (tracking.runs_url(uri, grid_runs.experiment_id(uri, args.experiment))
                if args.experiment else tracking.latest_grid_url(uri))
    except tracking.TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"MLflow UI: {uri}")
    if page != uri:
        print(f"{'experiment ' + repr(args.experiment) if args.experiment else 'newest grid run'}: {page}")
    return 0


def _up(args: argparse.Namespace, settings: Settings) -> int:
    return local_stack.main(["up", "--services", args.services])


def _down(args: argparse.Namespace, settings: Settings) -> int:
    return local_stack.main(["down", *(["--services", args.services] if args.services else [])])


def _status(args: argparse.Namespace, settings: Settings) -> int:
    return local_stack.main(["status"])


def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    stack = LocalStack.from_env(settings)
    if not os.environ.get("PREFECT_API_URL") and stack.status()["prefect-server"] is None:
        raise StackError(f"deploy needs a Prefect server: start the stack with `{PROG} up` "
                         "(or set PREFECT_API_URL)")
    use_stack(stack)
    env = os.environ | {"PRUNEGRID_ROOT": str(PROJECT_ROOT)}  # prefect.yaml's pull step
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                          cwd=PROJECT_ROOT, env=env).returncode


def _claims(args: argparse.Namespace, settings: Settings) -> int:
    use_stack(LocalStack.from_env(settings))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    from flows import benchmark_refresh  # prefect, ray and torch: only the command that needs them
    from infra.evaluate.claims_report import splice

    code = benchmark_refresh.main([args.configs, *(["--report-only"] if args.report_only else [])])
    report = Path(benchmark_refresh.REPORT)
    if code != 2 and args.readme and report.is_file():
        readme = Path(args.readme)
        readme.write_text(splice(readme.read_text(), report.read_text()))
        print(f"{report} and the claims section of {readme} regenerated")
    return code


_COMMANDS = {"claims": _claims, "run": _run, "results": _results, "ui": _ui, "up": _up, "down": _down,
             "status": _status, "deploy": _deploy}


if __name__ == "__main__":
    sys.exit(main())
