"""Who gets `champion`: the quality gate and the sparsity ranking (pure selection logic)."""

from __future__ import annotations

from infra.track.registry import CHAMPION, Candidate, budget_alias, choose, passes_gate


def cand(version: str, target: float, metric: float) -> Candidate:
    return Candidate(version, f"job{version}", target, target, metric)


TEACHER = cand("1", 0.0, 0.80)


def test_champion_is_the_sparsest_model_within_the_gate() -> None:
    models = [TEACHER, cand("2", 0.5, 0.80), cand("3", 0.7, 0.795), cand("4", 0.9, 0.70)]
    chosen = choose(models, teacher_metric=0.80, max_drop=0.01)
    assert chosen[CHAMPION].version == "3"
    assert chosen[budget_alias(0.5)].version == "2"
    assert budget_alias(0.9) not in chosen  # below the gate: never promoted


def test_a_model_below_the_gate_is_never_promoted() -> None:
    models = [TEACHER, cand("2", 0.9, 0.789)]
    chosen = choose(models, teacher_metric=0.80, max_drop=0.01)
    assert chosen[CHAMPION].version == "1"  # the dense teacher is the fallback
    assert all(c.version != "2" for c in chosen.values())
    assert not passes_gate(models[1], 0.80, 0.01)


def test_exactly_at_the_gate_passes() -> None:
    assert passes_gate(cand("2", 0.5, 0.79), 0.80, 0.01)


def test_best_metric_wins_within_a_budget_and_choice_is_deterministic() -> None:
    models = [TEACHER, cand("2", 0.7, 0.795), cand("3", 0.7, 0.799), cand("4", 0.7, 0.799)]
    first = choose(models, 0.80, 0.01)
    assert first[CHAMPION].version == "3"
    assert choose(list(reversed(models)), 0.80, 0.01) == first


def test_cross_lingual_tasks_are_gated_on_the_language_average_unless_told_otherwise() -> None:
    from infra.experiment.config import GateSpec, TaskSpec

    pawsx = TaskSpec(name="p", source="xglue", subset="pawsx", languages=("de",))
    english = TaskSpec(name="r", source="file", path="reviews.csv")
    assert pawsx.gate_metric(GateSpec()) == "dev_avg_accuracy"
    assert pawsx.gate_metric(GateSpec(languages="source")) == "dev_accuracy"
    assert pawsx.gate_metric(GateSpec(metric="avg_score")) == "dev_avg_score"
    assert english.gate_metric(GateSpec()) == "dev_accuracy"


def test_experiments_sharing_a_model_get_the_best_of_their_choices() -> None:
    from infra.track.registry import merge

    first = choose([TEACHER, cand("2", 0.5, 0.80), cand("3", 0.9, 0.80)], 0.80, 0.01)
    second = choose([cand("4", 0.0, 0.80), cand("5", 0.5, 0.795), cand("6", 0.9, 0.5)], 0.80, 0.01)
    merged = merge([second, first])
    assert {a: c.version for a, c in merged.items()} == {
        CHAMPION: "3", budget_alias(0.5): "2", budget_alias(0.9): "3"}
    assert merge([first, second]) == merged  # order-free
    assert merge([second]) == second  # one experiment alone: its own choice
