"""The results table the demo prints and the grid's parent run keeps (results.md / .csv):
one row per evaluated model. The seed-aware table over grid rows is summary.py's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # jobs.py imports the tables it fills: a runtime import would be circular
    from infra.experiment.jobs import EvalRecord

COLUMNS = {
    "task": "task",
    "method": "method",
    "target_sparsity": "target",
    "encoder_sparsity": "encoder sparsity",
    "dev_accuracy": "dev acc",
    "test_accuracy": "test acc",
    # Cross-lingual tasks: the mean over languages (English included), what promotion reads.
    "dev_avg_accuracy": "dev avg acc",
    "test_avg_accuracy": "test avg acc",
    "dev_score": "dev score",
    "test_score": "test score",
    "model_nonzero_params": "non-zero params (M)",
    "size_mb": "size (MB)",
    "size_compressed_mb": "zipped (MB)",
    "aliases": "aliases",
}


def results_frame(task: str, records: list[EvalRecord], aliases: dict[str, str],
                  versions: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per evaluated model; `aliases` maps alias -> registered version."""
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for record in records:
        m = dict(record.metrics)
        version = (versions or {}).get(record.job_id, "")
        rows.append({
            "task": task, "method": "teacher" if record.method == "dense" else record.method,
            "target_sparsity": record.target_sparsity, "encoder_sparsity": m.get("encoder_sparsity"),
            "dev_accuracy": m.get("dev_accuracy"), "test_accuracy": m.get("test_accuracy"),
            "dev_avg_accuracy": m.get("dev_avg_accuracy"), "test_avg_accuracy": m.get("test_avg_accuracy"),
            # The task's official combined metric (GLUE score, Pearson/Spearman for STS-B).
            "dev_score": m.get("dev_score"), "test_score": m.get("test_score"),
            "model_nonzero_params": m.get("model_nonzero_params", 0) / 1e6,
            "size_mb": m.get("size_mb"), "size_compressed_mb": m.get("size_compressed_mb"),
            **{k: v for k, v in m.items() if k.startswith("latency_ms_b")},
            "aliases": ",".join(sorted(by_version.get(version, []))),
            "job_id": record.job_id,
        })
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-style table (no extra dependency: pandas' to_markdown needs tabulate)."""
    latency = sorted((c for c in frame.columns if c.startswith("latency_ms_b")),
                     key=lambda c: int(c.rsplit("b", 1)[1]))
    names = COLUMNS | {c: f"CPU ms b{c.rsplit('b', 1)[1]}" for c in latency}
    shown_cols = [c for c in COLUMNS if c in frame.columns and frame[c].notna().any()]
    order = [c for c in shown_cols if c != "aliases"] + latency + ["aliases"]
    shown = frame[order].rename(columns=names)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    lines = [header, rule]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def cell(value: object) -> str:
    """One table cell: floats to 3 decimals (1 from 100 up), None empty."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)
