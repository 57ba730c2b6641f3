"""The claims report: each claim of an experiment (infra/experiment/claims.py) measured on what
its grid run logged, with its spread over seeds, a paired interval and a verdict.

Input: per task, the grid's evaluated models as the grid run logged them (`records_json`, an
artifact of the grid's parent run) and, for the gate metric, every model's per-example test
predictions. A claim on the gate metric is compared on the same test examples (the paired
bootstrap of stats.py, seed pairs averaged); a claim on another per-model metric (separability,
weight SNR) is compared seed by seed, with a t interval over the per-seed differences.
Verdict: holds (the interval excludes 0 on the claimed side), does not hold (it excludes 0 on
the other side), inconclusive (it contains 0, or one seed gives no interval).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from infra.evaluate.stats import BOOTSTRAP_SEED, RESAMPLES, Splits, paired_bootstrap
from infra.evaluate.summary import on_test, test_statistic
from infra.experiment.claims import TEACHER, ClaimArm, ClaimSpec

if TYPE_CHECKING:
    from infra.data import DatasetRef
    from infra.experiment.jobs import EvalRecord

# Two-sided 95% quantiles of Student's t by degrees of freedom (seed pairs - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


@dataclass(frozen=True)
class ModelResult:
    """One evaluated model of a grid, as its grid run logged it."""

    job_id: str
    method: str  # "teacher" for the grid's fine-tuned teacher
    sparsity: float
    seed: int
    options: dict[str, object]
    run_id: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class TaskResults:
    """A task's evaluated models, and how its gate metric is computed on test predictions."""

    task: str
    gate_metric: str  # the dev metric promotion reads
    score: tuple[str, ...]
    members: tuple[str, ...]  # the test split(s) the gate metric's test counterpart averages
    train_examples: int
    models: tuple[ModelResult, ...]
    predictions: Mapping[str, Splits] = field(default_factory=dict)  # job_id -> test predictions

    @classmethod
    def from_json(cls, text: str) -> "TaskResults":
        d = json.loads(text)
        models = tuple(ModelResult(**m) for m in d.pop("models"))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}, models=models)

    def rows(self, arm: ClaimArm) -> list[ModelResult]:
        """The arm's models, one per seed, in seed order."""
        return sorted((m for m in self.models if arm.matches(m.method, m.sparsity, m.options)),
                      key=lambda m: m.seed)


def records_json(task: str, teacher: EvalRecord, records: Sequence[EvalRecord], dataset: DatasetRef,
                 gate_metric: str, members: tuple[str, ...]) -> str:
    """What the grid run logs per task for the claims report (read back by TaskResults.from_json)."""
    models = [{"job_id": r.job_id, "method": TEACHER if r is teacher else r.method,
               "sparsity": r.target_sparsity, "seed": r.seed, "options": dict(r.options),
               "run_id": r.model.run_id, "metrics": dict(r.metrics)} for r in [teacher, *records]]
    return json.dumps({"task": task, "gate_metric": gate_metric, "score": list(dataset.score),
                       "members": list(members), "train_examples": dict(dataset.sizes).get("train", 0),
                       "models": models}, indent=1, default=str)


@dataclass(frozen=True)
class ClaimResult:
    """One claim measured on one task."""

    claim: str
    task: str
    candidate: str
    baseline: str
    metric: str
    candidate_values: tuple[float, ...]  # per seed
    baseline_values: tuple[float, ...]
    difference: float  # candidate - baseline, mean over seed pairs
    low: float
    high: float
    interval: str  # how the interval was computed
    verdict: str


def _paired(candidates: list[ModelResult], baselines: list[ModelResult]
            ) -> list[tuple[ModelResult, ModelResult]]:
    """Seed pairs; a single baseline model (the teacher) is every candidate seed's reference."""
    if len(baselines) == 1:
        return [(c, baselines[0]) for c in candidates]
    by_seed = {b.seed: b for b in baselines}
    return [(c, by_seed[c.seed]) for c in candidates if c.seed in by_seed]


def _t_interval(differences: list[float]) -> tuple[float, float]:
    if len(differences) < 2:
        return math.nan, math.nan
    df = len(differences) - 1
    t = _T95.get(df) or _T95[max(k for k in _T95 if k <= df)]
    half = t * statistics.stdev(differences) / math.sqrt(len(differences))
    mean = statistics.fmean(differences)
    return mean - half, mean + half


def _verdict(claim: ClaimSpec, low: float, high: float) -> str:
    """holds: the whole interval is on the claimed side of the threshold (0, or -margin for a
    non-inferiority claim); does not hold: the whole interval is on the other side."""
    if math.isnan(low):
        return "inconclusive"
    sign = 1.0 if claim.expect == "higher" else -1.0
    low, high = sorted((sign * low, sign * high))  # as if "higher" were claimed
    if low > -claim.margin:
        return "holds"
    if high < -claim.margin:
        return "does not hold"
    return "inconclusive"


def assess(claim: ClaimSpec, results: TaskResults, resamples: int = RESAMPLES,
           seed: int = BOOTSTRAP_SEED) -> ClaimResult:
    """Measure `claim` on one task's results; ValueError when an arm has no evaluated model."""
    candidates, baselines = results.rows(claim.candidate), results.rows(claim.baseline)
    for side, found in (("candidate", candidates), ("baseline", baselines)):
        if not found:
            arm = getattr(claim, side)
            raise ValueError(f"claim '{claim.name}': no evaluated model for its {side} "
                             f"{arm.describe()} on task {results.task} (did that grid job fail?)")
    pairs = _paired(candidates, baselines)
    if claim.metric is None:
        metric = on_test(results.gate_metric)
        statistic = test_statistic(results.gate_metric, results.score, results.members)
        diff = paired_bootstrap([results.predictions[c.job_id] for c, _ in pairs],
                                [results.predictions[b.job_id] for _, b in pairs], statistic, resamples, seed)
        difference, low, high = diff.mean, diff.low, diff.high
        interval = f"paired bootstrap over test examples ({resamples} resamples)"
    else:
        metric = claim.metric
        missing = [m.job_id for m in candidates + baselines if metric not in m.metrics]
        if missing:
            raise ValueError(f"claim '{claim.name}': metric {metric!r} not reported by model(s) {missing}")
        differences = [c.metrics[metric] - b.metrics[metric] for c, b in pairs]
        difference = statistics.fmean(differences)
        low, high = _t_interval(differences)
        interval = f"t interval over {len(differences)} seed pair(s)"
    return ClaimResult(claim.name, results.task, claim.candidate.describe(), claim.baseline.describe(),
                       metric, tuple(c.metrics[metric] for c in candidates),
                       tuple(b.metrics[metric] for b in baselines), difference, low, high, interval,
                       _verdict(claim, low, high))


def _num(x: float, sign: str = "") -> str:
    """Three decimals; a nonzero value they would show as 0.000 gets two significant digits,
    so a difference of 7e-06 reads as that, not as a zero that "holds"."""
    if x != 0 and abs(x) < 5e-4:
        return f"{x:{sign}.1e}"
    return f"{x:{sign}.3f}"


def _spread(values: tuple[float, ...]) -> str:
    if len(values) < 2:
        return f"{_num(values[0])} (n=1)"
    return f"{_num(statistics.fmean(values))} ± {_num(statistics.stdev(values))} (n={len(values)})"


def markdown(title: str, budget: str, results: Sequence[ClaimResult]) -> str:
    """One experiment's claims as a markdown section: the budget, then one row per claim."""
    lines = [f"### {title}", "", budget, "",
             "| claim | task | metric | candidate | mean ± sd (seeds) | baseline | mean ± sd (seeds) "
             "| Δ | 95% CI | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ci = "" if math.isnan(r.low) else f"[{_num(r.low, '+')}, {_num(r.high, '+')}]"
        lines.append(f"| {r.claim} | {r.task} | {r.metric} | {r.candidate} | {_spread(r.candidate_values)} "
                     f"| {r.baseline} | {_spread(r.baseline_values)} | {_num(r.difference, '+')} | {ci} "
                     f"| **{r.verdict}** |")
    kinds = sorted({r.interval for r in results})
    return "\n".join(lines) + ("\n\n95% CI: " + "; ".join(kinds) + "." if kinds else "") + "\n"


def assess_all(claims: Sequence[ClaimSpec], tasks: Sequence[TaskResults],
               on_error: Callable[[str], None] | None = None) -> list[ClaimResult]:
    """Every claim on every task; a claim that cannot be measured is reported to `on_error`
    (or raised) and left out."""
    out = []
    for task in tasks:
        for claim in claims:
            try:
                out.append(assess(claim, task))
            except ValueError as error:
                if on_error is None:
                    raise
                on_error(str(error))
    return out


BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"  # the README's generated section


def splice(readme: str, report: str) -> str:
    """`readme` with the text between its claims markers replaced by `report`."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"the README needs one {BEGIN} ... {END} section for the claims report")
    head, rest = readme.split(BEGIN)
    return head + BEGIN + "\n" + report.strip("\n") + "\n" + END + rest.split(END, 1)[1]
