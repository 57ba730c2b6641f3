"""The experiment schema: one YAML file = one frozen pydantic model.

This module holds the training, grid, compute and evaluation specs and assembles the whole;
the data specs are in schema_data, the registry specs in schema_registry (all re-exported
here). Defaults live in those three modules and nowhere else. Unknown keys are errors, so
a typo stops the run before any work with a message that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from infra.train.loop import LRSchedule, Precision
from infra.experiment.claims import ClaimSpec, check_claims, grid_rows
from infra.experiment.schema_base import Fraction, Frozen, PositiveInt
from infra.experiment.schema_data import CorpusSource, ModelSpec, SplitSpec, TaskSpec
from infra.experiment.schema_registry import MODEL_NAME_FIELDS, GateSpec, RegistrySpec
from pruning.methods import MethodName, method_options

__all__ = [
    "ComputeSpec", "ConfigError", "CorpusSource", "DistilSpec", "DistilTrainSpec", "EvalSpec",
    "ExperimentConfig", "Fraction", "Frozen", "GateSpec", "GridSpec", "MODEL_NAME_FIELDS",
    "ModelSpec", "PositiveInt", "PruneSpec", "RegistrySpec", "SplitSpec", "TaskSpec", "TrainSpec",
    "load_config", "parse_config",
]


class ConfigError(ValueError):
    """The experiment file is missing, unreadable or invalid; the message names the field."""


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
    # One task-agnostic student per grid seed (True), or one, made with the grid's first seed,
    # that every seed's task stage starts from (False): the paper's protocol (a model is
    # compressed once, then fine-tuned per task and seed), at 1/len(seeds) of the stage's cost;
    # the spread over seeds is then the task stage's alone.
    per_seed: bool = Field(default=True, exclude_if=lambda v: v is True)


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
