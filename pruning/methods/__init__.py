"""The registry of pruning methods: names the config may use, and one builder.

Each method's constructor takes the student, then keyword-only arguments. The
builder passes `teacher`, `total_steps` and `final_sparsity` to those that take
them; every other keyword-only argument is a method option, settable from the
config's `options` mapping, with its default in the constructor signature. A
constructor that takes `**kwargs` passes them to its base class, whose keyword-only
arguments are options too (every masked method's schedule, declared once in MaskedMethod).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Literal

from torch import nn

from pruning.methods.base import MaskedMethod, PruningMethod
from pruning.methods.dense import Dense
from pruning.methods.gmp import GradualMagnitude
from pruning.methods.homodistil import CompactFinetune, HomotopicDistiller
from pruning.methods.layerdrop import LayerDropped
from pruning.methods.sdp import SelfDistilled
from pruning.methods.sparsebert import SparseBert

MethodName = Literal["dense", "gmp", "sdp", "sparsebert", "homodistil", "layerdrop"]
METHOD_NAMES: tuple[MethodName, ...] = ("dense", "gmp", "sdp", "sparsebert", "homodistil", "layerdrop")

_CONSTRUCTORS: dict[str, Callable[..., PruningMethod]] = {
    "dense": Dense,
    "gmp": GradualMagnitude,
    "sdp": SelfDistilled,
    "sparsebert": SparseBert,
    "homodistil": CompactFinetune,
    "layerdrop": LayerDropped,
}
_COMMON = ("teacher", "total_steps", "final_sparsity")
# Methods with a task-agnostic first stage: its constructor, run once per (budget, seed,
# stage options) before the task stage. Its options live in the same `options` mapping.
_DISTILLERS: dict[str, Callable[..., PruningMethod]] = {"homodistil": HomotopicDistiller}


@dataclass(frozen=True)
class MethodSpec:
    """What the training loop must prepare for a method before building it."""

    starts_from: Literal["pretrained", "teacher", "distilled"]  # the student's initial weights
    needs_teacher: bool  # whether a (frozen) teacher model is passed in


# dense: the teacher itself, fine-tuned from the pretrained weights.
# gmp: prunes the fine-tuned teacher, no distillation (METHODS.md baselines).
# sdp: prunes the fine-tuned teacher, distilling from its frozen copy (section 1; with
#   teacher_mode="shared" the loaded copy goes unused).
# sparsebert: prunes the pre-trained model, distilling the fine-tuned teacher (section 3).
# homodistil: the student is the compact model from the task-agnostic stage (section 2,
#   HomotopicDistiller's export), fine-tuned on the task while distilling the teacher.
# layerdrop: the pretrained model with encoder layers dropped to about the grid point's
#   non-zero count, fine-tuned while distilling the teacher's logits (the dense control).
METHOD_SPECS: dict[str, MethodSpec] = {
    "dense": MethodSpec(starts_from="pretrained", needs_teacher=False),
    "gmp": MethodSpec(starts_from="teacher", needs_teacher=False),
    "sdp": MethodSpec(starts_from="teacher", needs_teacher=True),
    "sparsebert": MethodSpec(starts_from="pretrained", needs_teacher=True),
    "homodistil": MethodSpec(starts_from="distilled", needs_teacher=True),
    "layerdrop": MethodSpec(starts_from="pretrained", needs_teacher=True),
}

__all__ = [
    "METHOD_NAMES",
    "METHOD_SPECS",
    "MethodSpec",
    "MaskedMethod",
    "MethodName",
    "PruningMethod",
    "build_distiller",
    "build_method",
    "distiller_options",
    "has_distiller",
    "method_options",
]


def _keyword_params(name: str, table: Mapping[str, Callable] = _CONSTRUCTORS
                    ) -> dict[str, inspect.Parameter]:
    if name not in _CONSTRUCTORS:
        valid = ", ".join(METHOD_NAMES)
        raise ValueError(f"unknown pruning method {name!r}; valid methods: {valid}")
    constructor = table[name]
    found: dict[str, inspect.Parameter] = {}
    # A class's own __init__ first; one that takes **kwargs passes them to its base class,
    # whose keyword-only arguments are then options too (MaskedMethod's schedule).
    inits = [vars(c)["__init__"] for c in constructor.__mro__ if "__init__" in vars(c)] \
        if isinstance(constructor, type) else [constructor]
    for init in inits:
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                found.setdefault(p.name, p)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return found


def _own_options(name: str, table: Mapping[str, Callable]) -> dict[str, object]:
    return {k: p.default for k, p in _keyword_params(name, table).items() if k not in _COMMON}


def method_options(name: str) -> dict[str, object]:
    """Options of method `name` (both stages of a two-stage method) -> default
    (inspect.Parameter.empty where required)."""
    first = _own_options(name, _DISTILLERS) if name in _DISTILLERS else {}
    return first | _own_options(name, _CONSTRUCTORS)


def distiller_options(name: str) -> dict[str, object]:
    """Options of the task-agnostic stage of method `name`; {} for one-stage methods."""
    return _own_options(name, _DISTILLERS) if name in _DISTILLERS else {}


def has_distiller(name: str) -> bool:
    """Whether method `name` runs a task-agnostic stage before the task stage."""
    return name in _DISTILLERS


def build_distiller(name: str, student: nn.Module, *, teacher: nn.Module, total_steps: int,
                    final_sparsity: float, options: Mapping[str, object] | None = None
                    ) -> PruningMethod:
    """The task-agnostic stage of method `name`; options of the task stage are ignored."""
    if name not in _DISTILLERS:
        raise ValueError(f"method {name!r} has no task-agnostic stage")
    mine = {k: v for k, v in (options or {}).items() if k in distiller_options(name)}
    return _DISTILLERS[name](student, teacher=teacher, total_steps=total_steps,
                             final_sparsity=final_sparsity, **mine)


def build_method(
    name: str,
    student: nn.Module,
    *,
    teacher: nn.Module | None = None,
    total_steps: int,
    final_sparsity: float,
    options: Mapping[str, object] | None = None,
) -> PruningMethod:
    """Build method `name` around `student` with `options` as keyword arguments.

    Methods that need no teacher ignore it; a method that cannot prune (dense)
    refuses a non-zero `final_sparsity` so a grid job is never mislabelled.
    """
    accepted = _keyword_params(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(method_options(name)))
    if unknown:
        valid = ", ".join(sorted(method_options(name))) or "none"
        raise ValueError(f"unknown option(s) {unknown} for method {name!r}; valid options: {valid}")
    # The first stage's options were used by build_distiller; this stage takes its own.
    options = {k: v for k, v in options.items() if k in accepted}
    common = {"teacher": teacher, "total_steps": total_steps, "final_sparsity": final_sparsity}
    if "final_sparsity" not in accepted and final_sparsity != 0:
        raise ValueError(
            f"method {name!r} does not prune; final_sparsity must be 0, got {final_sparsity}"
        )
    if "teacher" in accepted and teacher is None:
        raise ValueError(f"method {name!r} needs a teacher model")
    kwargs = {k: v for k, v in common.items() if k in accepted}
    return _CONSTRUCTORS[name](student, **kwargs, **options)
