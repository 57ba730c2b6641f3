"""The experiment schema's registry part: the registered-model name template and the quality
gate promotion applies (infra.track.registry). Defaults live here and nowhere else."""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import Field, field_validator

from infra.experiment.schema_base import Frozen

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
