"""The seed-aware results table: one row per method, options and budget, compared with GMP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infra.data import DatasetRef
from infra.evaluate import evaluation, summary
from infra.evaluate.stats import paired_bootstrap
from tests.infra.seed_grid import GRID, REF, grid_records


@pytest.fixture(scope="module")
def frame():
    records, predictions, statistic = grid_records()
    return summary.seed_frame("rt", records, "dev_accuracy", {"champion": "5", "champion-s50": "2"},
                              {"t": "1", "g50-0": "2", "s90-1": "5"}, predictions, statistic, resamples=300)


def row(frame, method: str, target: float):
    return frame[(frame["method"] == method) & (frame["target"] == target)].iloc[0]


def test_one_row_per_method_options_and_budget_teacher_first(frame) -> None:
    assert list(zip(frame["method"], frame["target"])) == [
        ("teacher", 0.0), ("gmp", 0.5), ("sdp", 0.5), ("gmp", 0.9), ("sdp", 0.9)]
    assert row(frame, "gmp", 0.5)["options"] == "update_every=4" and row(frame, "sdp", 0.5)["options"] == ""
    assert row(frame, "gmp", 0.5)["series"] == "gmp (update_every=4)"


def test_seed_statistics_are_mean_std_and_count(frame) -> None:
    gmp = row(frame, "gmp", 0.5)
    assert gmp["seeds"] == 2 and gmp["metric"] == "accuracy"
    assert gmp["dev_mean"] == pytest.approx(0.89)
    assert gmp["dev_std"] == pytest.approx(np.std([0.90, 0.88], ddof=1))
    assert gmp["test_mean"] == pytest.approx(1 - 25 / 200)
    assert gmp["latency_ms_b32_mean"] == pytest.approx(91.0)
    assert gmp["nonzero_params_m_mean"] == pytest.approx(13.0)
    teacher = row(frame, "teacher", 0.0)
    assert teacher["seeds"] == 1 and math.isnan(teacher["dev_std"])


def test_each_row_is_compared_with_gmp_of_its_budget_on_the_same_examples(frame) -> None:
    records, predictions, statistic = grid_records()
    sdp = row(frame, "sdp", 0.9)
    expected = paired_bootstrap([predictions["s90-0"], predictions["s90-1"]],
                                [predictions["g90-0"], predictions["g90-1"]], statistic, resamples=300)
    # mean over seeds of per-seed paired differences: (30 vs 40 and 30 vs 42 mistakes of 200)
    assert sdp["delta_test"] == pytest.approx((10 + 12) / 2 / 200) == pytest.approx(expected.mean)
    assert (sdp["ci_low"], sdp["ci_high"]) == (expected.low, expected.high)
    assert sdp["ci_low"] > 0 and sdp["verdict"] == "better" and sdp["pairs"] == 2
    assert sdp["baseline"] == "gmp (update_every=4)"
    close = row(frame, "sdp", 0.5)  # 22/24 vs 24/26 mistakes: within noise
    assert close["ci_low"] < 0 < close["ci_high"] and close["verdict"] == "inconclusive"
    baseline = row(frame, "gmp", 0.5)
    assert baseline["verdict"] == "baseline" and math.isnan(baseline["delta_test"])
    assert row(frame, "teacher", 0.0)["verdict"] == ""


def test_aliases_land_on_the_rows_of_their_models(frame) -> None:
    assert row(frame, "sdp", 0.9)["aliases"] == "champion"
    assert row(frame, "gmp", 0.5)["aliases"] == "champion-s50" and row(frame, "teacher", 0.0)["aliases"] == ""


def test_a_grid_without_gmp_has_no_comparison() -> None:
    records, predictions, statistic = grid_records()
    frame = summary.seed_frame("rt", [r for r in records if r.method != "gmp"], "dev_accuracy", {}, {},
                               predictions, statistic)
    assert set(frame["verdict"]) == {""} and frame["delta_test"].isna().all()
    assert "Δ test vs gmp" not in summary.seed_markdown(frame).splitlines()[0]


def test_markdown_shows_mean_sd_interval_and_verdict(frame) -> None:
    lines = summary.seed_markdown(frame).splitlines()
    assert lines[0] == ("| task | method | options | target | seeds | metric | dev (mean ± sd) "
                        "| test (mean ± sd) | Δ test vs gmp | 95% CI | verdict | non-zero params (M) "
                        "| CPU ms b32 | zipped (MB) | aliases |")
    sdp90 = next(line for line in lines if line.startswith("| rt | sdp |  | 0.90 |"))
    assert "| 2 | accuracy | 0.900 ± 0.000 | 0.850 ± 0.000 | +0.055 | [+" in sdp90 and "| better |" in sdp90
    assert lines[2].startswith("| rt | teacher |  | 0.00 | 1 | accuracy | 0.910 | 0.920 |")
    assert any("paired differences" in line and "2000 resamples" in line for line in lines)


def test_parent_metrics_name_each_row_for_mlflow(frame) -> None:
    metrics = summary.parent_metrics(frame)
    assert metrics["rt/gmp_s50_dev_accuracy"] == pytest.approx(0.89)
    assert metrics["rt/sdp_s90_test_accuracy"] == pytest.approx(0.85)
    assert metrics["rt/teacher_s00_latency_ms_b32"] == 100.0 and "rt/sdp_s50_zipped_mb" in metrics
    assert len(metrics) == len(frame) * 5


def test_varying_options_name_the_row_and_constant_ones_do_not() -> None:
    assert summary.metric_key("gmp", (("update_every", 4),), set(), 0.5) == "gmp_s50"
    assert summary.metric_key("gmp", (("update_every", 4), ("x", "a b")), {"update_every", "x"}, 0.9) == \
        "gmp.update_every-4.x-a-b_s90"


def test_the_statistic_is_the_logged_test_metric() -> None:
    gold, pred = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 0])
    _, accuracy = summary.statistic_on_test(REF, "dev_accuracy")
    assert accuracy({"test": (pred, gold)}) == pytest.approx(0.6)
    langs = DatasetRef("x", "/n", "0" * 64, 2, (0, 1), (("train", 1), ("test", 5), ("test_de", 5)),
                       metrics=("accuracy",), score=("accuracy",),
                       languages=(("dev", "en"), ("test", "en"), ("dev_de", "de"), ("test_de", "de")))
    members, average = summary.statistic_on_test(langs, "dev_avg_score")
    assert members == ("test", "test_de")
    assert average({"test": (gold, gold), "test_de": (pred, gold)}) == pytest.approx((1.0 + 0.6) / 2)
    assert summary.on_test("dev_avg_accuracy") == "test_avg_accuracy"


def test_predictions_artifact_round_trips_in_example_order() -> None:
    # predict runs examples sorted by length; the artifact puts them back in example-id order
    p = evaluation.SplitPredictions(torch.tensor([2, 0, 1]), torch.tensor([1, 0, 1]), torch.tensor([1, 1, 0]),
                                    torch.tensor([0.9, 0.6, 0.7]))
    table = evaluation.predictions_table({"test": p, "dev": p})
    assert table.column_names == ["split", "example_id", "label", "prediction", "score"]
    assert table.num_rows == 6 and table["example_id"].to_pylist()[:3] == [0, 1, 2]
    pred, gold = summary.splits_from_table(table, ("test",))["test"]
    assert pred.tolist() == [0, 1, 1] and gold.tolist() == [1, 0, 1]
    assert table["score"].to_pylist()[:3] == pytest.approx([0.6, 0.7, 0.9])
    with pytest.raises(ValueError, match="test_de"):
        summary.splits_from_table(table, ("test_de",))


def test_grid_fixture_is_consistent() -> None:
    records, predictions, statistic = grid_records()
    for record in records:  # the logged test metric is what the predictions give
        assert statistic(predictions[record.job_id]) == pytest.approx(record.metric("test_accuracy"))
    assert len(records) == len(GRID)
