"""What every part of the experiment schema shares: frozen models that reject unknown keys,
and the number types the specs use (infra.experiment.config assembles them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
