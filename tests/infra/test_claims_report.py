"""Claims: their spec is checked against the grid when the config loads, and the report's
numbers and verdicts are right on hand-made results."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from infra.evaluate.claims_report import ModelResult, TaskResults, assess, markdown, splice
from infra.experiment.claims import ClaimSpec
from infra.experiment.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
CLAIMS = sorted((ROOT / "configs/claims").glob("*.yaml"))
GOLD = np.arange(400) % 2


def _model(job: str, method: str, sparsity: float, seed: int, wrong: int, first: int = 0,
           **metrics: float) -> tuple:
    pred = GOLD.copy()
    pred[first:first + wrong] = 1 - pred[first:first + wrong]  # `wrong` test examples mistaken
    acc = 1 - wrong / len(GOLD)
    result = ModelResult(job, method, sparsity, seed, {}, f"run-{job}",
                         {"dev_accuracy": acc, "test_accuracy": acc, **metrics})
    return result, {"test": (pred, GOLD.copy())}


def _results(*models: tuple) -> TaskResults:
    return TaskResults("sst", "dev_accuracy", ("accuracy",), ("test",), 1000,
                       tuple(m for m, _ in models), {m.job_id: p for m, p in models})


def _claim(**fields) -> ClaimSpec:
    return ClaimSpec.model_validate({"name": "c", "candidate": {"method": "sdp", "sparsity": 0.9},
                                     "baseline": {"method": "gmp", "sparsity": 0.9}} | fields)


def test_a_clear_paired_win_holds_and_its_numbers_are_the_seed_means() -> None:
    results = _results(*(_model(f"s{i}", "sdp", 0.9, i, 40) for i in range(3)),
                       *(_model(f"g{i}", "gmp", 0.9, i, 140) for i in range(3)))
    r = assess(_claim(), results, resamples=300)
    assert r.metric == "test_accuracy" and r.candidate_values == (0.9,) * 3 and r.baseline_values == (0.65,) * 3
    assert r.difference == pytest.approx(0.25) and 0 < r.low < 0.25 < r.high
    assert r.verdict == "holds"
    # The same numbers the other way round: the claim does not hold.
    assert assess(_claim(candidate={"method": "gmp", "sparsity": 0.9},
                         baseline={"method": "sdp", "sparsity": 0.9}), results, resamples=300).verdict == "does not hold"


def test_a_difference_within_the_noise_is_inconclusive() -> None:
    results = _results(_model("s0", "sdp", 0.9, 0, 30), _model("g0", "gmp", 0.9, 0, 33, first=100))
    r = assess(_claim(), results, resamples=300)
    assert r.low < 0 < r.high and r.verdict == "inconclusive"


def test_a_margin_makes_it_a_non_inferiority_claim() -> None:
    # 1 point behind on 400 examples (different mistakes): not a win, but within a 10-point margin.
    results = _results(_model("s0", "sdp", 0.9, 0, 44), _model("g0", "gmp", 0.9, 0, 40, first=200))
    assert assess(_claim(), results, resamples=300).verdict in ("inconclusive", "does not hold")
    assert assess(_claim(margin=0.1), results, resamples=300).verdict == "holds"


def test_a_per_model_metric_is_paired_by_seed_with_a_t_interval() -> None:
    sdp = [_model(f"s{i}", "sdp", 0.9, i, 40, recovery_steps=v) for i, v in enumerate((2.0, 2.5, 3.0))]
    gmp = [_model(f"g{i}", "gmp", 0.9, i, 40, recovery_steps=v) for i, v in enumerate((4.0, 4.4, 5.2))]
    r = assess(_claim(metric="recovery_steps", expect="lower"), _results(*sdp, *gmp))
    diffs = [-2.0, -1.9, -2.2]
    half = 4.303 * np.std(diffs, ddof=1) / math.sqrt(3)  # t(0.975, 2 df)
    assert r.difference == pytest.approx(np.mean(diffs))
    assert (r.low, r.high) == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half))
    assert r.verdict == "holds"  # fewer steps, as claimed
    one = assess(_claim(metric="recovery_steps", expect="lower"), _results(sdp[0], gmp[0]))
    assert math.isnan(one.low) and one.verdict == "inconclusive"  # one seed: no interval, no verdict


def test_the_teacher_is_every_seeds_reference_and_a_missing_arm_is_named() -> None:
    results = _results(_model("t", "teacher", 0.0, 0, 20), *(_model(f"s{i}", "sdp", 0.9, i, 60) for i in range(2)))
    r = assess(_claim(baseline={"method": "teacher"}, margin=0.02), results, resamples=200)
    assert r.difference == pytest.approx(-0.1) and r.verdict == "does not hold"
    with pytest.raises(ValueError, match="no evaluated model for its baseline gmp @ 90%"):
        assess(_claim(), results)


def test_the_report_and_the_readme_section() -> None:
    results = _results(_model("s0", "sdp", 0.9, 0, 40), _model("g0", "gmp", 0.9, 0, 140))
    text = markdown("claims-x", "Budget: tiny.", [assess(_claim(name="SDP wins"), results, resamples=100)])
    assert "| SDP wins | sst | test_accuracy | sdp @ 90% | 0.900 (n=1) | gmp @ 90% | 0.650 (n=1) | +0.250 |" in text
    assert "**holds**" in text and "Budget: tiny." in text
    readme = "intro\n<!-- claims:begin -->\nold\n<!-- claims:end -->\nrest\n"
    assert splice(readme, text) == f"intro\n<!-- claims:begin -->\n{text.strip()}\n<!-- claims:end -->\nrest\n"
    with pytest.raises(ValueError, match="claims:begin"):
        splice("no markers", text)


def test_a_tiny_difference_shows_its_size_not_a_zero() -> None:
    """The weight SNRs of the first refresh (SDP vs GMP at 90%, 3 seeds): SDP's is higher in
    every seed, by about 7e-06. The report must show that size, not "+0.000 [+0.000, +0.000]"
    beside a verdict that holds."""
    sdp = [_model(f"s{i}", "sdp", 0.9, i, 40, weight_snr=v) for i, v in enumerate((0.966722, 0.966719, 0.966728))]
    gmp = [_model(f"g{i}", "gmp", 0.9, i, 40, weight_snr=v) for i, v in enumerate((0.966718, 0.966711, 0.966719))]
    r = assess(_claim(metric="weight_snr"), _results(*sdp, *gmp))
    assert r.verdict == "holds" and r.difference == pytest.approx(7.0e-06, abs=1e-7)
    row = next(line for line in markdown("x", "", [r]).splitlines() if line.startswith("| c |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "0.967 ± 4.6e-06 (n=3)"
    assert cells[7] == "+7.0e-06" and cells[8].startswith("[+") and "0.000" not in cells[8]


def _config(claims: list[dict]) -> dict:
    return {"name": "x", "tasks": [{"name": "t", "labels": [0, 1]}],
            "grid": {"methods": ["gmp", "sdp"], "sparsities": [0.5, 0.9],
                     "options": {"sdp": {"self_loss": ["cross_correlation", "kl_logits"]}}},
            "claims": claims}


@pytest.mark.parametrize("arm, problem", [
    ({"method": "sdp", "sparsity": 0.9}, "matches 2 grid rows"),  # which self_loss?
    ({"method": "sdp", "sparsity": 0.7, "options": {"self_loss": "kl_logits"}}, "matches no grid row"),
    ({"method": "homodistil", "sparsity": 0.5}, "matches no grid row"),
])
def test_an_arm_that_does_not_single_out_one_grid_row_is_refused_at_load(arm, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(_config([{"name": "c", "candidate": arm, "baseline": {"method": "gmp", "sparsity": 0.9}}]))
    ok = {"name": "c", "candidate": {"method": "sdp", "sparsity": 0.9, "options": {"self_loss": "kl_logits"}},
          "baseline": {"method": "teacher"}}
    assert parse_config(_config([ok])).claims[0].candidate.options == {"self_loss": "kl_logits"}


def test_a_config_without_claims_keeps_its_hash() -> None:
    cfg = parse_config(_config([]))
    assert "claims" not in cfg.model_dump(mode="json")  # every grid run's config_hash stays as it was


@pytest.mark.parametrize("path", CLAIMS, ids=lambda p: p.name)
def test_claims_configs_state_claims_and_share_one_budget(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.claims, f"{path.name} states no claims"
    first = yaml.safe_load(CLAIMS[0].read_text())
    data = yaml.safe_load(path.read_text())
    # Identical shared blocks: the teacher and shared grid rows train once across the refresh.
    for block in ("model", "tasks", "teacher", "prune", "compute", "evaluation"):
        assert data[block] == first[block], f"{path.name}: `{block}` differs from {CLAIMS[0].name}"
