"""The seed-aware results table: one row per method, options and budget of a task.

Each row holds the gate metric (registry.gate.metric) on dev and test as mean, standard
deviation and number of seeds; the costs the trade-off figure plots; and, against the GMP row
of the same budget, the paired test difference on the same examples with a bootstrap interval
and a verdict. The rows are built from evaluation records and the per-example predictions
evaluation logged (evaluation.predictions_table).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from infra.data import DatasetRef
from infra.evaluate import metrics
from infra.evaluate.report import cell
from infra.evaluate.stats import BOOTSTRAP_SEED, RESAMPLES, Splits, Statistic, paired_bootstrap, seed_stats

if TYPE_CHECKING:  # jobs.py builds this table from its records: a runtime import would be circular
    from infra.experiment.jobs import EvalRecord

BASELINE = "gmp"  # what every other method of a budget is compared with
TEACHER = "teacher"
Key = tuple[str, str, float]  # (method, options text, budget)


def on_test(gate_metric: str) -> str:
    """The test counterpart of the dev metric promotion reads: dev_accuracy -> test_accuracy."""
    return "test_" + gate_metric.removeprefix("dev_")


def statistic_on_test(ref: DatasetRef, gate_metric: str) -> tuple[tuple[str, ...], Statistic]:
    """The splits on_test(gate_metric) is computed on, and how, as evaluation.task_metrics
    computes it: one split ("test"), or the mean over a cross-lingual task's test languages."""
    members: tuple[str, ...] = ("test",)
    if gate_metric.removeprefix("dev_").startswith("avg_"):
        members = tuple(s for s, _ in ref.languages if s.split("_")[0] == "test")
    return members, test_statistic(gate_metric, ref.score, members)


def test_statistic(gate_metric: str, score: tuple[str, ...], members: tuple[str, ...]) -> Statistic:
    """on_test(gate_metric) of a model's predictions on `members` (their mean); `score`: the
    metrics a task's `score` averages (DatasetRef.score)."""
    name = gate_metric.removeprefix("dev_").removeprefix("avg_")

    def one(pred: np.ndarray, gold: np.ndarray) -> float:
        if name == "score":
            return metrics.compute(pred, gold, score, score)["score"]
        return metrics.METRICS[name](pred, gold)

    def statistic(splits: Splits) -> float:
        return sum(one(*splits[s]) for s in members) / len(members)

    return statistic


def splits_from_table(table: pa.Table, members: tuple[str, ...]) -> Splits:
    """(prediction, label) arrays of `members`, in example-id order, from a predictions table."""
    out = {}
    for split in members:
        rows = table.filter(pc.equal(table["split"], split)).sort_by("example_id")
        if rows.num_rows == 0:
            raise ValueError(f"the predictions hold no rows of split {split!r}")
        out[split] = (rows["prediction"].to_numpy(), rows["label"].to_numpy())
    return out


def options_text(options: tuple[tuple[str, object], ...]) -> str:
    return ", ".join(f"{key}={value}" for key, value in options)


def _group(records: list[EvalRecord]) -> dict[Key, list[EvalRecord]]:
    groups: dict[Key, list[EvalRecord]] = {}
    for r in records:
        method = TEACHER if r.method == "dense" else r.method
        groups.setdefault((method, options_text(r.options), round(r.target_sparsity, 4)), []).append(r)
    first = {key: i for i, key in enumerate(groups)}
    # The teacher first, then budget by budget in grid order: each budget's rows side by side.
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0] != TEACHER, kv[0][2], first[kv[0]])))


def _varying(records: list[EvalRecord]) -> dict[str, set[str]]:
    """Per method, the option names whose value differs between its grid points."""
    values: dict[tuple[str, str], set[str]] = {}
    for r in records:
        for name, value in r.options:
            values.setdefault((r.method, name), set()).add(str(value))
    out: dict[str, set[str]] = {}
    for (method, name), seen in values.items():
        if len(seen) > 1:
            out.setdefault(method, set()).add(name)
    return out


def metric_key(method: str, options: tuple[tuple[str, object], ...], varying: set[str], budget: float) -> str:
    """A grid row's name in MLflow metric keys: gmp_s50, or gmp.update_every-2_s50 when the grid
    varies that option (MLflow allows letters, digits, _ - . / and spaces only)."""
    parts = [method, *(f"{k}-{v}" for k, v in options if k in varying)]
    return re.sub(r"[^\w.\-]", "-", ".".join(parts) + f"_s{round(budget * 100):02d}")


def latency_column(records: list[EvalRecord]) -> str | None:
    """The CPU latency the figure plots: batch 32 when measured, else the largest batch measured."""
    batches = {int(k.removeprefix("latency_ms_b")) for r in records for k, _ in r.metrics
               if k.startswith("latency_ms_b")}
    return f"latency_ms_b{32 if 32 in batches else max(batches)}" if batches else None


def costs_of(records: list[EvalRecord]) -> dict[str, tuple[str, float]]:
    """Table column -> (record metric, scale) of each cost the figure plots."""
    costs = {"nonzero_params_m": ("model_nonzero_params", 1e-6)}
    if latency := latency_column(records):
        costs[latency] = (latency, 1.0)
    return costs | {"zipped_mb": ("size_compressed_mb", 1.0)}


def _stats(prefix: str, values: list[float]) -> dict[str, float]:
    s = seed_stats(values)
    return {f"{prefix}_mean": s.mean, f"{prefix}_std": s.std}


def _value(record: EvalRecord, name: str) -> float:
    return dict(record.metrics).get(name, math.nan)  # NaN: not measured for this model


def _row(task: str, key: Key, members: list[EvalRecord], gate_metric: str,
         costs: dict[str, tuple[str, float]], varying: set[str],
         aliases_of: Mapping[str, list[str]]) -> dict[str, object]:
    method, options, budget = key
    row: dict[str, object] = {
        "task": task, "method": method, "options": options, "target": budget,
        "series": f"{method} ({options})" if options else method,
        "key": metric_key(method, members[0].options, varying, budget),
        "seeds": len(members), "metric": gate_metric.removeprefix("dev_"),
        **_stats("dev", [_value(r, gate_metric) for r in members]),
        **_stats("test", [_value(r, on_test(gate_metric)) for r in members]),
    }
    for column, (name, scale) in costs.items():
        row |= _stats(column, [_value(r, name) * scale for r in members])
    names = sorted({a for r in members for a in aliases_of.get(r.job_id, [])})
    return row | {"aliases": ",".join(names), "job_ids": ",".join(r.job_id for r in members)}


def _paired(key: Key, groups: dict[Key, list[EvalRecord]], predictions: Mapping[str, Splits],
            statistic: Statistic | None, resamples: int, seed: int) -> dict[str, object]:
    """This row against the GMP row of its budget (the first GMP options when several)."""
    empty = {"baseline": "", "delta_test": math.nan, "ci_low": math.nan, "ci_high": math.nan,
             "pairs": 0, "verdict": ""}
    base = next((k for k in groups if k[0] == BASELINE and k[2] == key[2]), None)
    if base is None or key[0] == TEACHER:
        return empty
    name = f"{base[0]} ({base[1]})" if base[1] else base[0]
    if base == key:
        rivals = any(k[2] == key[2] and k != key for k in groups)
        return empty | {"verdict": "baseline" if rivals else ""}
    mine, theirs = ({r.seed: r for r in groups[k]} for k in (key, base))
    seeds = sorted(s for s in set(mine) & set(theirs)
                   if mine[s].job_id in predictions and theirs[s].job_id in predictions)
    if not seeds or statistic is None:
        return empty | {"baseline": name}
    diff = paired_bootstrap([predictions[mine[s].job_id] for s in seeds],
                            [predictions[theirs[s].job_id] for s in seeds], statistic, resamples, seed)
    return {"baseline": name, "delta_test": diff.mean, "ci_low": diff.low, "ci_high": diff.high,
            "pairs": diff.pairs, "verdict": diff.verdict}


def seed_frame(task: str, records: list[EvalRecord], gate_metric: str, aliases: Mapping[str, str],
               versions: Mapping[str, str], predictions: Mapping[str, Splits] | None = None,
               statistic: Statistic | None = None, resamples: int = RESAMPLES,
               seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """One row per method, options and budget (the teacher first). `aliases`: alias -> version;
    `versions`: job_id -> version; `predictions`: job_id -> its test predictions (statistic's splits)."""
    aliases_of: dict[str, list[str]] = {}
    by_version = {version: job for job, version in versions.items()}
    for alias, version in aliases.items():
        if version in by_version:
            aliases_of.setdefault(by_version[version], []).append(alias)
    groups, varying, costs = _group(records), _varying(records), costs_of(records)
    rows = [_row(task, key, members, gate_metric, costs, varying.get(members[0].method, set()), aliases_of)
            | _paired(key, groups, predictions or {}, statistic, resamples, seed)
            for key, members in groups.items()]
    return pd.DataFrame(rows)


NOTES = (
    "dev, test: the gate metric, mean ± sample standard deviation over seeds (`seeds` of them). "
    "Δ test vs gmp: this row's test metric minus that of the GMP row of the same budget, the mean "
    "over seeds (paired by seed) of per-seed paired differences on the same test examples. "
    "95% CI: percentile bootstrap over test examples ({resamples} resamples, seed {seed}), one draw "
    "shared by every seed and model; better / worse: the interval excludes 0; inconclusive: it "
    "contains 0. The interval covers the choice of test examples; the seed spread covers training noise."
)
HEADERS = {"task": "task", "method": "method", "options": "options", "target": "target",
           "seeds": "seeds", "metric": "metric", "dev": "dev (mean ± sd)", "test": "test (mean ± sd)",
           "delta": "Δ test vs gmp", "ci": "95% CI", "verdict": "verdict",
           "nonzero_params_m": "non-zero params (M)", "zipped_mb": "zipped (MB)", "aliases": "aliases"}


def _spread(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _cells(row: pd.Series, latency: list[str]) -> dict[str, str]:
    ci = "" if math.isnan(row["ci_low"]) else f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
    out = {"task": row["task"], "method": row["method"], "options": row["options"],
           "target": f"{row['target']:.2f}", "seeds": str(row["seeds"]), "metric": row["metric"],
           "dev": _spread(row["dev_mean"], row["dev_std"]),
           "test": _spread(row["test_mean"], row["test_std"]),
           "delta": "" if math.isnan(row["delta_test"]) else f"{row['delta_test']:+.3f}", "ci": ci,
           "verdict": row["verdict"], "nonzero_params_m": _number(row["nonzero_params_m_mean"])}
    out |= {c: _number(row.get(f"{c}_mean", math.nan)) for c in latency}
    return out | {"zipped_mb": _number(row["zipped_mb_mean"]), "aliases": row["aliases"]}


def _number(value: float) -> str:
    return "" if math.isnan(value) else cell(float(value))


def seed_markdown(frame: pd.DataFrame, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> str:
    """The seed table as GitHub markdown (empty columns left out), with a note on what it shows."""
    latency = sorted({c.removesuffix("_mean") for c in frame.columns
                      if c.startswith("latency_ms_b") and c.endswith("_mean")})
    rows = [_cells(row, latency) for _, row in frame.iterrows()]
    names = HEADERS | {c: f"CPU ms b{c.removeprefix('latency_ms_b')}" for c in latency}
    order = [*(c for c in HEADERS if c not in ("zipped_mb", "aliases")), *latency, "zipped_mb", "aliases"]
    shown = [c for c in order if any(r.get(c) for r in rows)]
    lines = ["| " + " | ".join(names[c] for c in shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(r.get(c, "") or "" for c in shown) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + NOTES.format(resamples=resamples, seed=seed) + "\n"


def parent_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Per grid row, its means as metrics of the grid's parent run, named
    `<task>/<row key>_<dev|test>_<metric>` and `<task>/<row key>_<cost>`, so MLflow's own chart
    view compares the grid (e.g. `rotten_tomatoes/gmp_s50_test_accuracy`)."""
    costs = [c.removesuffix("_mean") for c in frame.columns
             if c.endswith("_mean") and c not in ("dev_mean", "test_mean")]
    out: dict[str, float] = {}
    for _, row in frame.iterrows():
        prefix = f"{row['task']}/{row['key']}"
        values = {f"dev_{row['metric']}": row["dev_mean"], f"test_{row['metric']}": row["test_mean"],
                  **{c: row[f"{c}_mean"] for c in costs}}
        out |= {f"{prefix}_{name}": float(v) for name, v in values.items() if not math.isnan(v)}
    return out
