"""Training jobs on Ray Train: the one module that imports `ray.train`.

`run_job` is the driver side (one TorchTrainer per job); `train_loop` is what each
worker runs. The loop is plain PyTorch around a `PruningMethod`; the few Ray calls are
marked `# ray:`. Every method, now and later, plugs in through `build_method` without
changes here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray.train  # ray: the Train API (report, checkpoints, context)
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn
from transformers import get_linear_schedule_with_warmup

from infra.train import checkpoints
from infra.data import corpus
from infra import data
from infra.models import pretrained
from infra.track import tracking
from pruning.methods import METHOD_SPECS, build_distiller, build_method


class TrainingError(RuntimeError):
    """A training job failed for good (retries exhausted); names the job and the cause."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised on the worker so the job stops at once."""


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
    tracking_uri: str | None = None
    stage: str = "task"  # "distil": a two-stage method's task-agnostic stage on a text corpus
    student_dir: str | None = None  # the distilled student a "distilled" method starts from
    threads_per_worker: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- worker side


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Biases and LayerNorm weights are not decayed (standard BERT recipe).
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def timing_path(out_dir: Path) -> Path:
    """Where run_job leaves the job's last reported metrics (steps, loop and checkpoint time)."""
    return out_dir.with_name(out_dir.name + ".train.json")


def recovery_path(out_dir: Path) -> Path:
    """Where run_job leaves a job's recovery curve: beside its model folder, not inside it."""
    return out_dir.with_name(out_dir.name + ".recovery.json")


def _save_recovery(folder: Path, method) -> None:
    # Masked methods record the task loss around each mask update (pruning.analysis).
    recovery = getattr(method, "recovery", None)
    if recovery is not None:
        (folder / "recovery.json").write_text(json.dumps(recovery.to_dict(), indent=2))


def _student_source(args: JobArgs) -> tuple[str, str]:
    starts_from = METHOD_SPECS[args.method].starts_from
    if starts_from in ("teacher", "distilled"):
        source = args.teacher_dir if starts_from == "teacher" else args.student_dir
        if source is None:
            raise TrainingError(f"method '{args.method}' starts from the {starts_from} model, "
                                "but none was given")
        return source, "pretrained"
    return args.pretrained, args.init


def _build(args: JobArgs, world: int) -> tuple[object, object, int, str]:
    """The train table, the method (with its student), batches per epoch, tokenizer source."""
    if args.stage == "distil":  # task-agnostic: unlabelled corpus, bare encoders
        table = corpus.read_corpus(args.data_path)
        per_epoch = data.num_batches(table, args.batch_size, world_size=world, drop_last=True)
        total = max(1, math.ceil(args.epochs * max(per_epoch, 1)))
        student = pretrained.load_encoder(args.pretrained, init=args.init, seed=args.seed)
        teacher = pretrained.load_encoder(args.pretrained, init=args.init, seed=args.seed)
        method = build_distiller(args.method, student, teacher=teacher, total_steps=total,
                                 final_sparsity=args.sparsity, options=args.options)
        return table, method, per_epoch, args.pretrained
    ref = data.load_ref(args.data_path)
    table = data.read_split(ref, "train")
    per_epoch = data.num_batches(table, args.batch_size, world_size=world, drop_last=True)
    source, init = _student_source(args)
    student = pretrained.load_classifier(source, num_labels=ref.num_labels, init=init, seed=args.seed)
    teacher = pretrained.load_saved(args.teacher_dir) if METHOD_SPECS[args.method].needs_teacher else None
    total = max(1, math.ceil(args.epochs * max(per_epoch, 1)))
    method = build_method(args.method, student, teacher=teacher, total_steps=total,
                          final_sparsity=args.sparsity, options=args.options)
    return table, method, per_epoch, source


def _mask_checksums(method, world: int) -> list[int]:
    """Every rank's mask checksum (all-gathered), so a DDP divergence is caught, not trained on."""
    checksum = getattr(method, "mask_checksum", None)
    if checksum is None:
        return []
    mine = torch.tensor([checksum()], dtype=torch.int64)
    if world == 1:
        return [int(mine)]
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine)  # the process group Ray Train set up (gloo/nccl)
    return [int(t) for t in gathered]


@dataclass
class _Loop:
    """What `_report` needs from the loop, so checkpoints always hold all of it."""

    args: JobArgs
    rank: int
    world: int
    per_epoch: int
    total_steps: int
    module: nn.Module  # what the optimizer trains (the student, plus a method's projections)
    method: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    tokenizer_source: str
    started: float = field(default_factory=time.perf_counter)
    checkpoint_s: float = 0.0  # time spent writing and persisting checkpoints so far


def _resume(loop: _Loop) -> int:
    checkpoint = ray.train.get_checkpoint()  # ray: the last checkpoint after a restart
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        where = checkpoints.load(Path(folder), module=loop.module, method=loop.method,
                                 optimizer=loop.optimizer, scheduler=loop.scheduler,
                                 batches_per_epoch=loop.per_epoch, world_size=loop.world)
    if loop.rank == 0:
        print(f"[{loop.args.job_id}] resumed from step {where.step} (epoch {where.epoch}, "
              f"batch {where.batch})", flush=True)
    return where.step


def train_loop(config: dict) -> None:
    """Per-worker training loop (runs inside a Ray Train worker)."""
    args = JobArgs(**config)
    os.environ.update(args.extra_env)
    torch.set_num_threads(args.threads_per_worker)
    context = ray.train.get_context()  # ray: rank and world size of this worker
    rank, world = context.get_world_rank(), context.get_world_size()

    train_table, method, per_epoch, source = _build(args, world)
    if per_epoch == 0:
        raise TrainingError(f"job {args.job_id}: the train split has {train_table.num_rows} examples, "
                            f"fewer than one batch of {args.batch_size} x {world} workers")
    total_steps = max(1, math.ceil(args.epochs * per_epoch))
    student = method.student
    # A method may train more than the student (HomoDistil's hidden-state projections):
    # DDP wraps and the optimizer steps that whole module, so every rank keeps it in sync.
    module = getattr(method, "module", student)
    model = ray.train.torch.prepare_model(module)  # ray: device placement + DDP when world > 1
    optimizer = torch.optim.AdamW(_param_groups(module, args.weight_decay), lr=args.learning_rate)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(args.warmup_fraction * total_steps), total_steps)
    loop = _Loop(args, rank, world, per_epoch, total_steps, module, method, optimizer, scheduler,
                 source)

    step = _resume(loop)
    logger = tracking.StepLogger(args.tracking_uri, args.mlflow_run_id) if rank == 0 else None
    device = next(student.parameters()).device
    pad_id = getattr(student.config, "pad_token_id", 0) or 0
    started, first_step = time.perf_counter(), step
    reported_final = False

    while step < total_steps:
        epoch, skip = divmod(step, per_epoch)
        stream = data.batches(train_table, args.batch_size, shuffle=True, seed=args.seed, epoch=epoch,
                              rank=rank, world_size=world, pad_token_id=pad_id, drop_last=True)
        model.train()
        for index, batch in enumerate(stream):
            if index < skip:
                continue  # resume mid-epoch at the exact batch the checkpoint stopped before
            if step >= total_steps:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            method.on_step_start(step)
            loss, logs = method.loss(model, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"job {args.job_id}: loss is {loss.item()} at step {step} (method {args.method}); "
                    "lower the learning rate or check the data")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            # Gradients are still there: sensitivity scores (HomoDistil, PLATON) read them here.
            method.on_step_end(step)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if logger and (step % args.log_every == 0 or step == total_steps):
                rate = (step - first_step) / (time.perf_counter() - started)
                logger.log(step, {"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0], **logs})
                print(f"[{args.job_id} {args.method} s={args.sparsity:.2f}] step {step}/{total_steps} "
                      f"loss {loss.item():.4f} ({rate:.2f} steps/s)", flush=True)
            if step % args.checkpoint_every == 0 or step == total_steps:
                reported_final = step == total_steps
                _report(loop, step, loss.item(), final=reported_final)
    if not reported_final:
        # Restored from a finished run (a rerun of the same job): hand back its final model.
        _report(loop, step, float("nan"), final=True)


def _report(loop: _Loop, step: int, loss: float, *, final: bool) -> None:
    began = time.perf_counter()
    # Checkpoint cost so far against the loop's time so far (bench/cluster.py reads these).
    metrics = {"step": step, "train_loss": loss, "total_steps": loop.total_steps,
               "checkpoint_s": loop.checkpoint_s, "loop_s": began - loop.started}
    sums = _mask_checksums(loop.method, loop.world)
    if len(set(sums)) > 1:  # every rank sees the same list, so every rank stops here
        raise TrainingError(f"job {loop.args.job_id}: masks differ across ranks at step {step} "
                            f"(checksums {sums}); the method's mask selection is not rank-consistent")
    if loop.rank != 0:
        ray.train.report(metrics)  # ray: every rank reports; only rank 0 carries the checkpoint
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        where = checkpoints.position(step, loop.per_epoch, loop.world, sums)
        checkpoints.save(folder, module=loop.module, method_state=loop.method.state_dict(),
                         optimizer=loop.optimizer, scheduler=loop.scheduler, where=where)
        if final:
            export = getattr(loop.method, "export", None)  # a method that slices its student
            final_model = export() if export is not None else loop.method.student
            pretrained.save_model(final_model, pretrained.load_tokenizer(loop.tokenizer_source), folder / "model")
            _save_recovery(folder, loop.method)  # recovery.json next to model/
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))  # ray: persist
    loop.checkpoint_s += time.perf_counter() - began


# ---------------------------------------------------------------- driver side


def run_job(args: JobArgs, *, run_name: str, num_workers: int, cpus_per_worker: int, use_gpu: bool,
            max_failures: int, storage_path: Path, out_dir: Path) -> Path:
    """Run one job as a TorchTrainer; copy its final model to `out_dir`; return that folder."""
    trainer = TorchTrainer(  # ray: one data-parallel worker group per job
        train_loop_per_worker=train_loop,
        train_loop_config=asdict(args),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(
            # Unique to the job's config and data: a rerun resumes its own checkpoints only.
            name=run_name,
            storage_path=str(storage_path),
            # Worker errors get `max_failures` restarts from the last checkpoint; failures to
            # start the worker group get a few too, so a job that can never start ends with
            # its cause instead of retrying forever (Ray's default).
            failure_config=FailureConfig(max_failures=max_failures,
                                         controller_failure_limit=max_failures + 2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    failure = None
    # fit() in the main thread installs a SIGINT handler whose closure holds the Ray Train
    # controller's handle, and Ray keeps an actor alive while a handle exists: put the
    # previous handler back so the controller exits with its job.
    main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main else None
    try:
        result = trainer.fit()
    except Exception as error:  # ray: WorkerGroupError / ControllerError when retries run out
        failure = (f"job {args.job_id} ({args.method}, sparsity {args.sparsity}) failed: "
                   f"{_root_cause(error)}")
    finally:
        if main:
            signal.signal(signal.SIGINT, sigint)
    if failure is not None:
        # Raised outside the except block and without the Ray error chained: a traceback that
        # reaches the trainer holds its controller's actor handle, and Ray keeps an actor
        # alive while a handle exists (a failed job must leave nothing running).
        del trainer
        raise TrainingError(failure)
    if result.checkpoint is None:
        raise TrainingError(f"job {args.job_id} finished without a checkpoint")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    timing_path(out_dir).write_text(json.dumps(result.metrics or {}, indent=2))
    with result.checkpoint.as_directory() as folder:
        source = Path(folder) / "model"
        if not source.is_dir():
            raise TrainingError(f"job {args.job_id}: the last checkpoint holds no final model")
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
        curve, target = Path(folder) / "recovery.json", recovery_path(out_dir)
        if curve.is_file():
            shutil.copyfile(curve, target.with_name(target.name + ".tmp"))
            os.replace(target.with_name(target.name + ".tmp"), target)
        else:
            target.unlink(missing_ok=True)
    return out_dir


def _root_cause(error: BaseException) -> str:
    """The innermost error message, so a NaN loss reads as such and not as 'worker died'."""
    seen = error
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else type(seen).__name__
