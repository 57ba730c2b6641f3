"""The `benchmark-refresh` flow: every claims experiment through prune-grid, then the claims report.

    prunegrid claims                       # configs/claims/*.yaml, then README's claims section
    python -m flows.benchmark_refresh configs/claims/1-sdp-vs-gmp.yaml

or the Prefect deployment `benchmark-refresh/benchmark-refresh` (prefect.yaml; weekly, inactive
until turned on). Each experiment is an ordinary prune-grid run (a subflow): its jobs are cached,
so a refresh that stopped resumes where it stopped. The report (tasks/claims.py) is computed from
MLflow afterwards, logged to a run of the `benchmark-refresh` experiment and written to
bench/results/claims.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.cli import tracking_uri
from flows.prune_grid import USER_ERRORS, prune_grid
from infra.experiment import preflight
from infra.experiment.config import ConfigError, load_config
from infra.track.tracking import check_reachable
from infra.experiment.settings import Settings, apply_offline_env
from tasks.claims import claims_report

CLAIMS_DIR = "configs/claims"
REPORT = "bench/results/claims.md"


class RefreshFailed(RuntimeError):
    """Some experiments did not finish; the report holds what could be measured."""


def claim_configs(where: str) -> list[str]:
    """A folder's experiment YAMLs (sorted) or one file, each validated and holding claims."""
    path = Path(where)
    files = sorted(str(p) for p in path.glob("*.yaml")) if path.is_dir() else [where]
    if not files:
        raise ConfigError(f"no experiment YAML in {where} (expected {CLAIMS_DIR}/*.yaml)")
    for file in files:
        if not load_config(file).claims:  # a bad config stops here, before any work
            raise ConfigError(f"{file} states no claims: add a `claims:` list (infra/experiment/claims.py)")
    return files


@flow(name="benchmark-refresh")
def benchmark_refresh(configs: str = CLAIMS_DIR, report: str = REPORT, run_grids: bool = True) -> str:
    """Run each claims experiment (cached jobs are not run again), then report its claims."""
    files = claim_configs(configs)
    settings = Settings.from_env()
    apply_offline_env(settings.allow_hub)
    failed = []
    for file in files if run_grids else []:
        state = prune_grid(file, return_state=True)
        if not state.is_completed():
            failed.append(f"{file}: {state.message}")
    text = claims_report(files, tracking_uri(settings), report, failed)
    get_run_logger().info("Claims report (%s):\n%s", report, text)
    if failed:
        raise RefreshFailed(f"{len(failed)} experiment(s) did not finish; the report holds the rest:\n"
                            + "\n".join(failed))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.benchmark_refresh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="?", default=CLAIMS_DIR, help="a folder of experiment YAMLs, or one")
    parser.add_argument("--report", default=REPORT, help="where the report is written")
    parser.add_argument("--report-only", action="store_true", help="run no grid; measure what MLflow holds")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    apply_offline_env(settings.allow_hub)
    try:  # a user's mistake stops here, before Prefect, Ray or MLflow start
        for file in claim_configs(args.configs):
            preflight.check(load_config(file), None, settings.allow_hub)
        check_reachable(tracking_uri(settings))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = benchmark_refresh(args.configs, args.report, not args.report_only, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
