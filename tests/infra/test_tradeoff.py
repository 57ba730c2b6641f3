"""The trade-off figure's data: points, Pareto front, teacher, gate and champions (never pixels)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from infra.evaluate import summary, tradeoff
from infra.evaluate.tradeoff import Point, pareto_front
from tests.infra.seed_grid import grid_records

ROOT_CMD = [sys.executable, "-c"]


def point(name: str, cost: float, metric: float) -> Point:
    return Point(name, 0.0, cost, math.nan, metric, math.nan)


def test_pareto_front_keeps_the_non_dominated_and_ties() -> None:
    a, b, c = point("a", 1, 0.70), point("b", 2, 0.80), point("c", 3, 0.90)
    dominated = [point("d", 2, 0.75),  # b: same cost, better metric
                 point("e", 3, 0.80),  # b: lower cost, same metric
                 point("f", 4, 0.60)]  # everything
    tie = point("b-again", 2, 0.80)  # equal to b: neither dominates the other
    front = pareto_front([c, *dominated, a, b, tie])
    assert front == (a, b, tie, c)  # by increasing cost
    assert pareto_front([]) == ()
    assert pareto_front([a]) == (a,)


@pytest.fixture
def table() -> pd.DataFrame:
    records, predictions, statistic = grid_records()
    return summary.seed_frame("rt", records, "dev_accuracy", {"champion": "5", "champion-s50": "2"},
                              {"g50-0": "2", "s90-1": "5"}, predictions, statistic, resamples=200)


def test_points_and_front_are_the_tables_numbers(table: pd.DataFrame) -> None:
    data = tradeoff.figure_data(table, max_drop=0.01)
    assert data.task == "rt" and data.metric == "accuracy"
    costs = ["nonzero_params_m", "latency_ms_b32", "zipped_mb"]
    assert [(p.split, p.cost) for p in data.panels] == [(s, c) for s in ("dev", "test") for c in costs]
    for panel in data.panels:
        assert len(panel.points) == len(table)
        for p, (_, row) in zip(panel.points, table.iterrows()):
            assert (p.series, p.target) == (row["series"], row["target"])
            assert p.cost == row[f"{panel.cost}_mean"] and p.metric == row[f"{panel.split}_mean"]
            assert p.metric_std == row[f"{panel.split}_std"] or math.isnan(row[f"{panel.split}_std"])
        assert panel.front == pareto_front(panel.points) and set(panel.front) <= set(panel.points)
        teacher = table.loc[table["method"] == "teacher", f"{panel.split}_mean"].item()
        assert panel.teacher == teacher and panel.gate == pytest.approx(teacher - 0.01)


def test_front_excludes_a_dominated_row(table: pd.DataFrame) -> None:
    data = tradeoff.figure_data(table, max_drop=0.01)
    test_params = data.panels[3]
    assert test_params.split == "test" and test_params.cost == "nonzero_params_m"
    # gmp at 90% costs what sdp at 90% costs and scores lower on test: dominated
    on_front = {(p.series, p.target) for p in test_params.front}
    assert ("gmp (update_every=4)", 0.9) not in on_front and ("sdp", 0.9) in on_front
    assert ("teacher", 0.0) in on_front  # the most accurate point is never dominated


def test_champions_are_marked_on_their_rows(table: pd.DataFrame) -> None:
    panel = tradeoff.figure_data(table, max_drop=0.01).panels[0]
    marks = {alias: (p.series, p.target) for alias, p in panel.champions}
    assert marks == {"champion": ("sdp", 0.9), "champion-s50": ("gmp (update_every=4)", 0.5)}
    assert panel.champions[0][0] == "champion"


def test_draw_gives_one_panel_per_split_and_cost(table: pd.DataFrame) -> None:
    figure = tradeoff.draw(tradeoff.figure_data(table, max_drop=0.01))
    axes = figure.get_axes()
    assert len(axes) == 6 and axes[0].get_ylabel() == "dev accuracy"
    assert axes[4].get_xlabel() == "CPU latency at batch 32 (ms)"
    assert "matplotlib.pyplot" not in sys.modules  # the Agg canvas, no global pyplot state


def test_importing_the_module_does_not_import_matplotlib() -> None:
    script = "import sys, infra.evaluate.tradeoff, infra.evaluate.summary; print('matplotlib' in sys.modules)"
    out = subprocess.run([*ROOT_CMD, script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_nan_costs_leave_the_point_out() -> None:
    frame = pd.DataFrame([{"task": "t", "method": "teacher", "series": "teacher", "target": 0.0,
                           "metric": "accuracy", "aliases": "", "dev_mean": 0.9, "dev_std": np.nan,
                           "test_mean": 0.9, "test_std": np.nan, "zipped_mb_mean": np.nan,
                           "zipped_mb_std": np.nan}])
    data = tradeoff.figure_data(frame, 0.01)
    assert [p.cost for p in data.panels] == ["zipped_mb", "zipped_mb"] and data.panels[0].points == ()
