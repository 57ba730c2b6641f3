"""Frozen-teacher outputs a method's loss reads: what they are, and how a batch carries them.

A frozen teacher in eval mode gives the same outputs for the same example every epoch
(METHODS.md, "What the first measurements taught"), so the training job may compute them
once and pass them to the loss with each batch instead of running the teacher every step.
A method that can take them declares a `TeacherOutputs` spec (PruningMethod.
teacher_outputs_spec) and computes them with `PruningMethod.teacher_outputs`; the job puts
them in the batch under "teacher.<name>" keys, each [B, ...] like the live outputs, and the
method's loss takes them out with `split` and reads them instead of running its teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

PREFIX = "teacher."  # batch keys of precomputed teacher outputs


@dataclass(frozen=True)
class TeacherOutputs:
    """What a method reads of its frozen teacher, per example.

    key: names the computation (method and what it reads, e.g. "sdp/cls"); outputs of
        different keys are never mixed up.
    token_axes: (name, axes) per output: the axes of ONE example's tensor (batch axis
        removed) that run over the batch's padded length T, e.g. ("hidden", (1,)) for hidden
        states [L+1, T, H], ("scores", (2, 3)) for attention scores [L, h, T, T], ("logits",
        ()) for logits [C]. A stored output is cut to each batch's T along these axes; the
        values at padded positions depend on the example and the position only (padded keys
        are masked), so they are the same in any batch.
    """

    key: str
    token_axes: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.token_axes)


def split(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """`batch` without its teacher outputs (what the model and the task loss take), and the
    teacher outputs it carries by name ({} when the teacher must run live)."""
    inputs = {k: v for k, v in batch.items() if not k.startswith(PREFIX)}
    cached = {k[len(PREFIX):]: v for k, v in batch.items() if k.startswith(PREFIX)}
    return inputs, cached


def attach(batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """`batch` with `outputs` (name -> [B, ...]) under "teacher.<name>" keys."""
    return batch | {PREFIX + name: value for name, value in outputs.items()}
