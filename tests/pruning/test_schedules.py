from __future__ import annotations

import pytest

from pruning.schedules import CubicSchedule, cubic_sparsity


def test_cubic_endpoints_and_midpoint():
    assert cubic_sparsity(0, 0.1, 0.9, 10, 20) == 0.1
    assert cubic_sparsity(10, 0.1, 0.9, 10, 20) == pytest.approx(0.1)
    assert cubic_sparsity(15, 0.0, 0.8, 10, 20) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert cubic_sparsity(20, 0.1, 0.9, 10, 20) == 0.9
    assert cubic_sparsity(99, 0.1, 0.9, 10, 20) == 0.9


def test_monotone_non_decreasing_and_final_at_end_step():
    schedule = CubicSchedule(0.0, 0.95, start_step=5, end_step=57, update_every=4)
    values = [schedule.sparsity_at(t) for t in range(80)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[0] == 0.0 and values[57] == 0.95 and values[56] < 0.95


def test_update_steps():
    schedule = CubicSchedule(0.0, 0.5, start_step=3, end_step=20, update_every=5)
    updates = [t for t in range(40) if schedule.is_update_step(t)]
    assert updates == [3, 8, 13, 18, 20]


def test_over_run_fractions_and_clamps():
    schedule = CubicSchedule.over_run(300, 0.9)
    assert (schedule.start_step, schedule.end_step, schedule.update_every) == (0, 200, 10)
    # A ramp over the whole run still reaches the target at the last announced step.
    whole = CubicSchedule.over_run(100, 0.9, end_fraction=1.0)
    assert whole.end_step == 99 and whole.sparsity_at(99) == 0.9
    short = CubicSchedule.over_run(2, 0.5, start_fraction=0.9, end_fraction=1.0)
    assert short.start_step == 0 and short.end_step == 1


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"initial_sparsity": -0.1}, "initial_sparsity"),
        ({"final_sparsity": 1.0}, "final_sparsity"),
        ({"initial_sparsity": 0.6}, "initial_sparsity"),
        ({"start_step": -1}, "start_step"),
        ({"end_step": 3}, "end_step"),
        ({"update_every": 0}, "update_every"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, bad):
    args = {
        "initial_sparsity": 0.0, "final_sparsity": 0.5, "start_step": 3, "end_step": 10,
        "update_every": 2,
    }
    with pytest.raises(ValueError, match=bad):
        CubicSchedule(**(args | kwargs))


def test_over_run_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        CubicSchedule.over_run(0, 0.5)
    with pytest.raises(ValueError, match="end_fraction"):
        CubicSchedule.over_run(10, 0.5, start_fraction=0.5, end_fraction=0.5)
