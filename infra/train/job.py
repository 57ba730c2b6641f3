"""One training job: its plain arguments (sent to every Ray worker) and what a worker builds
from them (the train table and the method around its student). No Ray here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from infra import data
from infra.data import corpus
from infra.models import pretrained
from infra.train import loop, teacher_cache
from pruning.methods import METHOD_SPECS, PruningMethod, build_distiller, build_method


class TrainingError(RuntimeError):
    """A training job failed for good (retries exhausted); names the job and the cause."""


@dataclass(frozen=True)
class JobArgs:
    """Plain arguments of one job, built from the config by tasks/, sent to every worker."""

    job_id: str
    method: str
    sparsity: float
    seed: int
    options: dict[str, object]
    data_path: str  # prepared dataset directory (infra.data)
    pretrained: str  # resolved pretrained model directory
    init: str  # "pretrained" or "random"
    teacher_dir: str | None  # the fine-tuned teacher (None for the teacher job itself)
    epochs: float
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_fraction: float
    max_grad_norm: float
    checkpoint_every: int
    log_every: int
    mlflow_run_id: str | None = None
    lr_schedule: str = "linear"  # infra.train.loop.LR_SCHEDULES
    min_lr_fraction: float = 0.0
    precision: str = "fp32"  # infra.train.loop.PRECISIONS, resolved against the worker's device
    tracking_uri: str | None = None
    stage: str = "task"  # "distil": a two-stage method's task-agnostic stage on a text corpus
    student_dir: str | None = None  # the distilled student a "distilled" method starts from
    threads_per_worker: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    # The config's TrainSpec.length_buckets (tasks/ pass it); False keeps a direct caller's batches.
    length_buckets: bool = False
    # Where frozen-teacher outputs are cached, the cap and storage type (ComputeSpec); None:
    # the teacher runs every step.
    teacher_cache_dir: str | None = None
    teacher_cache_mb: int = 0
    teacher_cache_dtype: str = "float16"


def _student_source(args: JobArgs) -> tuple[str, str]:
    starts_from = METHOD_SPECS[args.method].starts_from
    if starts_from in ("teacher", "distilled"):
        source = args.teacher_dir if starts_from == "teacher" else args.student_dir
        if source is None:
            raise TrainingError(f"method '{args.method}' starts from the {starts_from} model, "
                                "but none was given")
        return source, "pretrained"
    return args.pretrained, args.init


def build_job(args: JobArgs, world: int) -> tuple[pa.Table, PruningMethod, int, str]:
    """What a worker of `world` trains: the train table, the method (with its student),
    batches per epoch (per rank), and the folder whose tokenizer the final model is saved with."""
    distil = args.stage == "distil"  # task-agnostic: unlabelled corpus, bare encoders
    ref = None if distil else data.load_ref(args.data_path)
    table = corpus.read_corpus(args.data_path) if ref is None else data.read_split(ref, "train")
    per_epoch = data.num_batches(table, args.batch_size, world_size=world, drop_last=True)
    if per_epoch == 0:
        raise TrainingError(f"job {args.job_id}: the train split has {table.num_rows} examples, "
                            f"fewer than one batch of {args.batch_size} x {world} workers")
    total = loop.total_steps(args.epochs, per_epoch)
    if ref is None:
        # With the masked-LM head where the checkpoint has one (HomoDistil's prediction loss).
        student = pretrained.load_encoder(args.pretrained, init=args.init, seed=args.seed, mlm_head=True)
        teacher = pretrained.load_encoder(args.pretrained, init=args.init, seed=args.seed, mlm_head=True)
        method = build_distiller(args.method, student, teacher=teacher, total_steps=total,
                                 final_sparsity=args.sparsity, options=args.options)
        return table, method, per_epoch, args.pretrained
    source, init = _student_source(args)
    student = pretrained.load_classifier(source, num_labels=ref.num_labels, init=init, seed=args.seed,
                                         label_names=ref.label_names)
    teacher = pretrained.load_saved(args.teacher_dir) if METHOD_SPECS[args.method].needs_teacher else None
    method = build_method(args.method, student, teacher=teacher, total_steps=total,
                          final_sparsity=args.sparsity, options=args.options)
    return table, method, per_epoch, source


def cache_teacher_outputs(args: JobArgs, method: PruningMethod, table: pa.Table, log=print
                          ) -> teacher_cache.TeacherCache | None:
    """The cache of `method`'s frozen-teacher outputs on the job's train split, built when
    missing (infra.train.teacher_cache); None when caching is off or the method reads none."""
    if (args.teacher_cache_dir is None or args.teacher_cache_mb <= 0 or args.teacher_dir is None
            or args.stage != "task" or method.teacher_outputs_spec() is None):
        return None
    return teacher_cache.ensure(
        method, table, root=Path(args.teacher_cache_dir), data_hash=data.load_ref(args.data_path).content_hash,
        teacher=pretrained.fingerprint(args.teacher_dir), pad_token_id=pad_token_id(method),
        cap_bytes=args.teacher_cache_mb * teacher_cache.MEBIBYTE, dtype=args.teacher_cache_dtype, log=log)


def pad_token_id(method: PruningMethod) -> int:
    """The padding id of the student's vocabulary (0 where its config names none)."""
    return getattr(method.student.config, "pad_token_id", 0) or 0
