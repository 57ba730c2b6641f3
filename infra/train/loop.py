"""The one training step and the one fit loop, plain PyTorch (no Ray).

The Ray Train worker (infra.train.ray_job) and the benchmarks (bench/) both train through
here, so a recipe fix reaches both. A step, in this order:

    method.on_step_start(step)              # mask updates when the schedule says so
    loss, logs = method.loss(model, batch)  # model: method.module, possibly DDP-wrapped; under
                                            # bf16 autocast when precision is "bf16"
    (a NaN or infinite loss raises NonFiniteLossError, naming the job)
    loss.backward()
    method.mask_gradients()                 # what the step throws away counts in no norm, no moment
    clip the gradient norm of method.module
    optimizer.step(); scheduler.step()
    method.on_step_end(step)                # gradients still there: scores read them
    optimizer.zero_grad(set_to_none=True)
    method.reshape(optimizer)               # a method that slices its module (and the state) does it here
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from pruning.methods import PruningMethod
from pruning.methods.base import Batch

# on_step(steps done so far, the step's loss [], its logs): after every optimizer step.
StepHook = Callable[[int, Tensor, dict[str, float]], None]
# After the warm-up: decay to the floor over the run (linear, half a cosine), or stay at the peak.
LRSchedule = Literal["linear", "cosine", "constant"]
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
# "bf16": forward and loss under torch.autocast(bfloat16); weights, gradients, optimizer state
# and checkpoints stay float32.
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised at once so the job stops instead of training on."""


def total_steps(epochs: float, batches_per_epoch: int) -> int:
    """Optimizer steps of `epochs` (may be fractional) passes of `batches_per_epoch`; at least 1."""
    return max(1, math.ceil(epochs * batches_per_epoch))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups of `module`'s trainable parameters: matrices decayed, biases and
    LayerNorm weights not (the standard BERT recipe)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: nn.Module, *, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over `param_groups(module, weight_decay)`."""
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=learning_rate)


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str = "linear",
                  min_lr_fraction: float = 0.0) -> float:
    """The learning rate of optimizer step `step` (0-based steps done) as a share of the peak.

    Linear warm-up from 0 over `warmup_steps`, then `schedule` ("linear" or "cosine" decay from 1
    at the warm-up's end to 0 at `total_steps`, or "constant"), never below `min_lr_fraction`
    after the warm-up. "linear" with floor 0 is transformers' get_linear_schedule_with_warmup,
    to the bit.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if not 0.0 <= min_lr_fraction <= 1.0:
        raise ValueError(f"min_lr_fraction must be in [0, 1], got {min_lr_fraction}")
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if schedule == "constant":
        return 1.0
    span = float(max(1, total_steps - warmup_steps))
    if schedule == "linear":
        decay = max(0.0, float(total_steps - step) / span)
    else:
        decay = max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span))))
    return min_lr_fraction + (1.0 - min_lr_fraction) * decay


def lr_mass_after(step: int, *, total_steps: int, warmup_steps: int, schedule: str = "linear",
                  min_lr_fraction: float = 0.0) -> float:
    """The share of the run's learning-rate mass (the sum of `lr_multiplier` over its steps)
    that falls on steps `step`, ..., `total_steps - 1`: for `step` = the last mask update, what
    the recovery phase gets to learn with."""
    rates = [lr_multiplier(s, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule,
                           min_lr_fraction=min_lr_fraction) for s in range(total_steps)]
    total = math.fsum(rates)
    return math.fsum(rates[max(0, step):]) / total if total > 0 else 0.0


def make_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_fraction: float,
                   schedule: str = "linear", min_lr_fraction: float = 0.0) -> LRScheduler:
    """The rate of each step as `lr_multiplier` of the optimizer's peak rate; the warm-up is
    `warmup_fraction` of `total_steps` (SparseBERT's recipe: "constant", no warm-up)."""
    lr_multiplier(0, total_steps=total_steps, warmup_steps=0, schedule=schedule,
                  min_lr_fraction=min_lr_fraction)  # a bad schedule fails here, not at step 1
    # A partial, not a closure: LambdaLR checkpoints it as {} (JSON-able), as it did transformers'.
    return LambdaLR(optimizer, partial(lr_multiplier, total_steps=total_steps,
                                       warmup_steps=int(warmup_fraction * total_steps),
                                       schedule=schedule, min_lr_fraction=min_lr_fraction))


def _cpu_flag(name: str) -> bool:
    check = getattr(torch.cpu, name, None)  # torch's own CPU probes; absent in some builds
    return bool(check()) if callable(check) else False


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 natively: CUDA when torch says so; an x86 CPU with
    AVX512-BF16 or AMX (without them oneDNN emulates bf16, no faster than fp32); another CPU
    when oneDNN has bf16 kernels for it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return _cpu_flag("_is_avx512_bf16_supported") or _cpu_flag("_is_amx_tile_supported")
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision to train with on `device`: `precision`, or "fp32" (with one log line) when
    bf16 was asked for and the device has no bf16 arithmetic."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        log.warning("precision bf16: %s has no native bf16 arithmetic, training in fp32", device.type)
        return "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What the forward pass and the loss run under: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(method: PruningMethod, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               scheduler: LRScheduler | None, *, step: int, max_grad_norm: float, job: str = "",
               precision: str = "fp32") -> tuple[Tensor, dict[str, float]]:
    """One optimizer step `step` (0-based, steps done so far) of `method` on `batch`.

    `model` is `method.module` or its DDP wrapper (calling the wrapper keeps the gradient
    sync); `scheduler` None keeps the rate fixed (step-time benchmarks); `precision` "bf16"
    runs the forward pass and the loss under bf16 autocast (resolve it first: it is not
    checked against the device here). Returns the loss [] and the method's logs. Raises
    NonFiniteLossError, naming `job` when given.
    """
    method.on_step_start(step)
    with autocast(precision, next(method.module.parameters()).device):
        loss, logs = method.loss(model, batch)
    if not torch.isfinite(loss):
        where = f"job {job}: " if job else ""
        raise NonFiniteLossError(f"{where}loss is {loss.item()} at step {step} (method {method.name}); "
                                 "lower the learning rate or check the data")
    loss.backward()
    # Pruned entries' gradients go before clipping: at 90% sparsity most of the norm sits there.
    method.mask_gradients()
    torch.nn.utils.clip_grad_norm_(method.module.parameters(), max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    # Gradients are still there: sensitivity scores (HomoDistil, PLATON) read them here.
    method.on_step_end(step)
    optimizer.zero_grad(set_to_none=True)
    # HomoDistil cuts pruned groups out of its student here (its AdamW state with them).
    method.reshape(optimizer)
    return loss, logs


def stream_epochs(epoch_batches: Callable[[int], Iterable[Batch]], *, start: int, batches_per_epoch: int
                  ) -> Iterator[Batch]:
    """Batches for optimizer steps `start`, `start + 1`, ... without end: epoch e is
    `epoch_batches(e)`; a start mid-epoch skips the batches that epoch already trained on."""
    if batches_per_epoch < 1:
        raise ValueError(f"an epoch needs at least one batch, got batches_per_epoch={batches_per_epoch}")
    epoch, skip = divmod(start, batches_per_epoch)
    while True:
        for index, batch in enumerate(epoch_batches(epoch)):
            if index >= skip:  # resume at the exact batch a checkpoint stopped before
                yield batch
        epoch, skip = epoch + 1, 0


def fit(method: PruningMethod, model: nn.Module, batch_stream: Iterable[Batch], *, steps: int,
        optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, max_grad_norm: float,
        start: int = 0, on_step: StepHook | None = None, job: str = "", precision: str = "fp32") -> int:
    """Train from step `start` until `steps` steps are done (or the stream ends); returns the
    steps done. `model` is `method.module` or its DDP wrapper; `on_step` runs after each step;
    `precision` as train_step's (resolve_precision first)."""
    step = start
    if step >= steps:
        return step
    model.train()
    for batch in batch_stream:
        loss, logs = train_step(method, model, batch, optimizer, scheduler, step=step,
                                max_grad_norm=max_grad_norm, job=job, precision=precision)
        step += 1
        if on_step is not None:
            on_step(step, loss, logs)
        if step >= steps:
            break
    return step
