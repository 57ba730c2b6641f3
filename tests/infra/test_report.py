"""The results table the demo prints: one row per model, the aliases on the promoted rows."""

from __future__ import annotations

from infra.experiment.jobs import EvalRecord
from infra.evaluate.report import results_frame, to_markdown
from infra.track.tracking import ModelRef


def record(job: str, method: str, target: float, metrics: dict[str, float]) -> EvalRecord:
    return EvalRecord(job, f"{method}-{target}", method, target, ModelRef(job, "run", "model", "/x"),
                      tuple(sorted(metrics.items())))


def test_table_shows_measured_numbers_and_aliases() -> None:
    common = {"encoder_sparsity": 0.0, "dev_accuracy": 0.8, "test_accuracy": 0.79,
              "model_nonzero_params": 22.7e6, "size_mb": 90.9, "size_compressed_mb": 84.0,
              "latency_ms_b1": 12.0, "latency_ms_b32": 300.0}
    rows = [record("t", "dense", 0.0, common),
            record("p", "gmp", 0.5, common | {"encoder_sparsity": 0.5, "dev_accuracy": 0.795})]
    table = to_markdown(results_frame("rt", rows, {"champion": "2"}, {"t": "1", "p": "2"}))
    lines = table.splitlines()
    assert lines[0].startswith("| task | method | target | encoder sparsity | dev acc | test acc |")
    assert "dev score" not in lines[0]  # no task here logs a combined score: no empty column
    assert lines[2].startswith("| rt | teacher | 0.000 |") and lines[2].endswith("|  |")
    assert "| rt | gmp | 0.500 | 0.500 | 0.795 |" in lines[3] and lines[3].endswith("| champion |")
    assert "CPU ms b1 | CPU ms b32" in lines[0]


def test_cross_lingual_rows_show_the_language_average_promotion_reads() -> None:
    metrics = {"encoder_sparsity": 0.0, "dev_accuracy": 0.5, "test_accuracy": 0.5, "dev_de_accuracy": 0.75,
               "dev_avg_accuracy": 0.625, "test_avg_accuracy": 0.55, "model_nonzero_params": 1e6}
    lines = to_markdown(results_frame("pawsx", [record("t", "dense", 0.0, metrics)], {})).splitlines()
    assert "| dev acc | test acc | dev avg acc | test avg acc |" in lines[0]
    assert "| 0.500 | 0.500 | 0.625 | 0.550 |" in lines[2]
