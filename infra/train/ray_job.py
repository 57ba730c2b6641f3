"""Training jobs on Ray Train: the one module that imports `ray.train`.

`run_job` is the driver side (one TorchTrainer per attempt at a job); `train_loop` is what each
worker runs: the job built by infra.train.job, trained by infra.train.loop's plain PyTorch
steps around a `PruningMethod`, plus resuming, logging and checkpoints; the few Ray calls are
marked `# ray:`. Every method, now and later, plugs in through `build_method` without
changes here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray.train  # ray: the Train API (report, checkpoints, context)
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch.optim.lr_scheduler import LRScheduler

from infra import data
from infra.models import pretrained
from infra.track.steps import StepLogger
from infra.train import checkpoints, cluster, console, failures, loop, stopping
from infra.train.job import JobArgs, TrainingError, build_job, cache_teacher_outputs
from infra.train.teacher_cache import TeacherCache
from pruning.methods import PruningMethod


# ---------------------------------------------------------------- worker side


def timing_path(out_dir: Path) -> Path:
    """Where run_job leaves the job's last reported metrics (steps, loop and checkpoint time)."""
    return out_dir.with_name(out_dir.name + ".train.json")


def recovery_path(out_dir: Path) -> Path:
    """Where run_job leaves a job's recovery curve: beside its model folder, not inside it."""
    return out_dir.with_name(out_dir.name + ".recovery.json")


# Step metrics the tracking server had not taken when a checkpoint was written (it was away):
# a restarted attempt sends them again, so a worker lost during a server outage loses none.
UNSENT_METRICS = "unsent_metrics.json"


def _save_recovery(folder: Path, method: PruningMethod) -> None:
    # Masked methods record the task loss around each mask update (pruning.analysis).
    if method.recovery is not None:
        (folder / "recovery.json").write_text(json.dumps(method.recovery.to_dict(), indent=2))


def _mask_checksums(method: PruningMethod, world: int) -> list[int]:
    """Every rank's mask checksum (all-gathered), so a DDP divergence is caught, not trained on."""
    checksum = method.mask_checksum()
    if checksum is None:
        return []
    mine = torch.tensor([checksum], dtype=torch.int64)
    if world == 1:
        return [int(mine)]
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine)  # the process group Ray Train set up (gloo/nccl)
    return [int(t) for t in gathered]


@dataclass
class _Worker:
    """What `_report` needs from the worker, so checkpoints always hold all of it."""

    args: JobArgs
    rank: int
    world: int
    per_epoch: int
    total_steps: int
    method: PruningMethod  # its `module` is what the optimizer trains (student, plus projections)
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    tokenizer_source: str
    logger: StepLogger | None = None  # rank 0's step metrics (None on the other ranks)
    first_step: int = 0  # the step this attempt started at: > 0 after a restart from a checkpoint
    started: float = field(default_factory=time.perf_counter)
    checkpoint_s: float = 0.0  # time spent writing and persisting checkpoints so far


def _resume(worker: _Worker) -> int:
    checkpoint = ray.train.get_checkpoint()  # ray: the last checkpoint after a restart
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        where = checkpoints.load(Path(folder), module=worker.method.module, method=worker.method,
                                 optimizer=worker.optimizer, scheduler=worker.scheduler,
                                 batches_per_epoch=worker.per_epoch, world_size=worker.world)
        if worker.logger and (unsent := Path(folder) / UNSENT_METRICS).is_file():
            worker.logger.requeue(json.loads(unsent.read_text()))
    if worker.rank == 0:
        print(f"[{worker.args.job_id}] resumed from step {where.step} (epoch {where.epoch}, "
              f"batch {where.batch})", flush=True)
    return where.step


def train_loop(config: dict) -> None:
    """Per-worker training loop (runs inside a Ray Train worker)."""
    config = dict(config)
    cluster.take_secrets(config.pop("secrets", None))  # the driver's credentials, off the job's config
    args = JobArgs(**config)
    if not console.is_verbose():  # Ray Train logs "Reporting training result" through the root logger
        logging.getLogger().setLevel(logging.WARNING)
    os.environ.update(args.extra_env)
    torch.set_num_threads(args.threads_per_worker)
    context = ray.train.get_context()  # ray: rank and world size of this worker
    rank, world = context.get_world_rank(), context.get_world_size()

    train_table, method, per_epoch, source = build_job(args, world)
    total_steps = loop.total_steps(args.epochs, per_epoch)
    # A method may train more than the student (HomoDistil's hidden-state projections):
    # DDP wraps and the optimizer steps that whole module, so every rank keeps it in sync.
    model = ray.train.torch.prepare_model(method.module)  # ray: device placement + DDP when world > 1
    optimizer = loop.make_optimizer(method.module, learning_rate=args.learning_rate,
                                    weight_decay=args.weight_decay)
    scheduler = loop.make_scheduler(optimizer, total_steps=total_steps, warmup_fraction=args.warmup_fraction,
                                    schedule=args.lr_schedule, min_lr_fraction=args.min_lr_fraction)
    logger = StepLogger(args.tracking_uri, args.mlflow_run_id) if rank == 0 else None
    worker = _Worker(args, rank, world, per_epoch, total_steps, method, optimizer, scheduler, source,
                     logger)

    first_step = worker.first_step = _resume(worker)
    if logger and 0 < first_step < total_steps:  # the run's record that (and where) it resumed
        logger.log(first_step, {"resumed_from_step": first_step})
    device = next(method.student.parameters()).device
    precision = loop.resolve_precision(args.precision, device)  # fp32 where bf16 is not native
    pad_id = getattr(method.student.config, "pad_token_id", 0) or 0
    # Every rank decides alike (same arguments, same checkpoint), so the barrier inside matches.
    cache = _teacher_outputs(args, method, train_table, rank, world) if first_step < total_steps else None
    started = time.perf_counter()

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        return data.batches(train_table, args.batch_size, shuffle=True, seed=args.seed, epoch=epoch,
                            rank=rank, world_size=world, pad_token_id=pad_id, drop_last=True,
                            length_buckets=args.length_buckets, example_ids=cache is not None)

    def after_step(step: int, loss: torch.Tensor, logs: dict[str, float]) -> None:
        if logger and (step % args.log_every == 0 or step == total_steps):
            rate = (step - first_step) / (time.perf_counter() - started)
            logger.log(step, {"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0], **logs})
            name = console.job_name(args.method, args.sparsity, args.stage)
            print(console.job_line(name, args.job_id, step, total_steps, loss.item(), rate), flush=True)
        if logger and step == total_steps:
            # Every step metric on the server (a bounded wait if it is away) before the final
            # checkpoint ends the job: a rerun restores that checkpoint and logs nothing again.
            logger.close()
        if step % args.checkpoint_every == 0 or step == total_steps:
            _report(worker, step, loss.item(), final=step == total_steps)

    stream = ({k: v.to(device) for k, v in batch.items()}
              for batch in loop.stream_epochs(epoch_batches, start=first_step, batches_per_epoch=per_epoch))
    if cache is not None:  # the frozen teacher's outputs read by example, not computed each step
        stream = (cache.attach(batch, method) for batch in stream)
    done = loop.fit(method, model, stream, steps=total_steps, optimizer=optimizer, scheduler=scheduler,
                    max_grad_norm=args.max_grad_norm, start=first_step, on_step=after_step,
                    job=args.job_id, precision=precision)
    if done == first_step:
        # Restored from a finished run (a rerun of the same job): hand back its final model.
        if logger:
            logger.close()  # points an earlier attempt left unsent in that checkpoint
        _report(worker, done, float("nan"), final=True)


def _teacher_outputs(args: JobArgs, method: PruningMethod, table, rank: int, world: int
                     ) -> TeacherCache | None:
    """Rank 0 builds (or finds) the job's frozen-teacher outputs first; the other ranks then
    open the same folder (and build their own only where that folder is not shared)."""
    def log(text: str) -> None:
        print(f"[{args.job_id}] {text}", flush=True)

    cache = cache_teacher_outputs(args, method, table, log) if rank == 0 else None
    if world > 1:
        torch.distributed.barrier()  # the process group Ray Train set up (gloo/nccl)
    return cache if rank == 0 else cache_teacher_outputs(args, method, table, lambda _: None)


def _report(worker: _Worker, step: int, loss: float, *, final: bool) -> None:
    began = time.perf_counter()
    # Checkpoint cost so far against the loop's time so far (bench/cluster.py reads these).
    metrics = {"step": step, "train_loss": loss, "total_steps": worker.total_steps,
               "first_step": worker.first_step, "checkpoint_s": worker.checkpoint_s,
               "loop_s": began - worker.started}
    sums = _mask_checksums(worker.method, worker.world)
    if len(set(sums)) > 1:  # every rank sees the same list, so every rank stops here
        raise TrainingError(f"job {worker.args.job_id}: masks differ across ranks at step {step} "
                            f"(checksums {sums}); the method's mask selection is not rank-consistent")
    if worker.rank != 0:
        ray.train.report(metrics)  # ray: every rank reports; only rank 0 carries the checkpoint
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        where = checkpoints.position(step, worker.per_epoch, worker.world, sums)
        checkpoints.save(folder, module=worker.method.module, method_state=worker.method.state_dict(),
                         optimizer=worker.optimizer, scheduler=worker.scheduler, where=where)
        if worker.logger and (unsent := worker.logger.pending()):
            (folder / UNSENT_METRICS).write_text(json.dumps(unsent))
        if final:  # the method's final model: the student, or its sliced export
            pretrained.save_model(worker.method.export(),
                                  pretrained.load_tokenizer(worker.tokenizer_source), folder / "model")
            _save_recovery(folder, worker.method)  # recovery.json next to model/
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))  # ray: persist
    worker.checkpoint_s += time.perf_counter() - began


# ---------------------------------------------------------------- driver side


def run_job(args: JobArgs, *, run_name: str, num_workers: int, cpus_per_worker: int, use_gpu: bool,
            max_failures: int, storage_path: Path, out_dir: Path) -> Path:
    """Run one job as a TorchTrainer; copy its final model to `out_dir`; return that folder.

    Workers that died get up to `max_failures` restarts from the last checkpoint; a failure that
    would repeat (infra.train.failures), the last one, or any while the driver stops, raises
    TrainingError naming the job and the cause.
    """
    for attempt in range(max_failures + 1):
        if stopping.requested():  # Ctrl-C, a cancelled flow run: start nothing (Ray would start anew)
            raise TrainingError(f"job {args.job_id}: stopped with its driver")
        # A restart is a new trainer of the same name: Ray Train resumes it from its storage.
        result, cause, again = _fit(_trainer(args, run_name, num_workers, cpus_per_worker, use_gpu,
                                             max_failures, storage_path))
        if result is not None:
            break
        stopped = stopping.requested()  # its checkpoints stay: a rerun resumes it
        if stopped or not again or attempt == max_failures:
            raise TrainingError(f"job {args.job_id} ({args.method}, sparsity {args.sparsity}) "
                                + ("stopped with its driver" if stopped else f"failed: {cause}"))
        print(f"[{args.job_id}] restart {attempt + 1}/{max_failures} from the last checkpoint: {cause}",
              flush=True)
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


def _trainer(args: JobArgs, run_name: str, num_workers: int, cpus_per_worker: int, use_gpu: bool,
             max_failures: int, storage_path: Path) -> TorchTrainer:
    return TorchTrainer(  # ray: one data-parallel worker group per job
        train_loop_per_worker=train_loop,
        # Secrets as an object ref: the dashboard shows a run's train_loop_config.
        train_loop_config=asdict(args) | {"secrets": cluster.share_secrets()},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(
            # Unique to the job's config and data: a rerun resumes its own checkpoints only.
            name=run_name,
            storage_path=str(storage_path),
            # No restart inside Ray: Ray Train restarts after any worker error, a NaN loss too
            # (run_job decides). Failures to start the worker group get a few, so a job that can
            # never start ends with its cause instead of retrying forever (Ray's default).
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=max_failures + 2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's own lines (worker group start, process group, "Checkpoint successfully
            # created", "Reporting training result") only on a verbose console.
            logging_config=LoggingConfig(log_level=console.ray_log_level(console.is_verbose())),
        ),
    )


def _fit(trainer: TorchTrainer) -> tuple[Result | None, str, bool]:
    """One attempt: its result, or None, the failure's root cause and whether a restart may mend it.

    Only text leaves here, nothing chained: a traceback that reaches the trainer holds its
    controller's actor handle, and Ray keeps an actor alive while a handle exists (a failed job
    must leave nothing running).
    """
    # fit() in the main thread installs a SIGINT handler whose closure holds the controller's
    # handle too: put the previous handler back so the controller exits with its job.
    main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main else None
    try:
        with stopping.fitting():  # stopping.stop_jobs waits for this fit before it leaves Ray
            return trainer.fit(), "", False
    except Exception as error:  # ray: WorkerGroupError / ControllerError
        return None, failures.root_cause(error), failures.restartable(error)
    finally:
        if main:
            signal.signal(signal.SIGINT, sigint)
