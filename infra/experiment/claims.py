"""A claim an experiment is run to test: one grid row against another, in the config's `claims:`.

    claims:
      - name: SDP beats GMP at 90% encoder sparsity
        candidate: {method: sdp, sparsity: 0.9}
        baseline: {method: gmp, sparsity: 0.9}

The claims report (infra/evaluate/claims_report.py) compares the two rows seed by seed: on the
gate metric's test counterpart by default (a paired bootstrap over the same test examples), or
on a per-model metric (`metric: separability_silhouette`, paired over seeds). Each arm must name
exactly one row of the grid, checked when the config loads, before any work.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

TEACHER = "teacher"  # an arm's method: the grid's fine-tuned teacher (one row, every seed's reference)


class ClaimArm(BaseModel):
    """One grid row: a method, its budget and the options that single it out (a subset of the row's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    options: dict[str, object] = Field(default_factory=dict)

    def matches(self, method: str, sparsity: float, options: Mapping[str, object]) -> bool:
        """Whether a grid row (method, budget, all its options) is this arm's."""
        return (method == self.method and round(sparsity, 4) == round(self.sparsity, 4)
                and all(k in options and options[k] == v for k, v in self.options.items()))

    def describe(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return self.method if self.method == TEACHER else f"{self.method} @ {self.sparsity:.0%}{opts}"


class ClaimSpec(BaseModel):
    """A claim: `candidate` scores higher (or lower, `expect`) than `baseline` on `metric`, or,
    with a `margin`, no more than `margin` lower (higher)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: Annotated[str, Field(min_length=1)]
    candidate: ClaimArm
    baseline: ClaimArm
    # None: the gate metric on test, paired over the same test examples; else a metric every
    # evaluated model reports (evaluation.py), e.g. separability_silhouette or weight_snr.
    metric: str | None = None
    expect: Literal["higher", "lower"] = "higher"
    # 0: the candidate must beat the baseline. > 0: it must not fall behind by more than this
    # (non-inferiority, in metric units: 0.01 = 1 point of accuracy).
    margin: Annotated[float, Field(ge=0.0)] = 0.0


def grid_rows(methods: tuple[str, ...], sparsities: tuple[float, ...],
              options: Mapping[str, Mapping[str, tuple[object, ...]]]) -> list[tuple[str, float, dict]]:
    """Every (method, budget, options) row of a grid, and the teacher's row."""
    rows: list[tuple[str, float, dict]] = [(TEACHER, 0.0, {})]
    for method in methods:
        names = sorted(options.get(method, {}))
        combos = itertools.product(*(options[method][n] for n in names)) if names else [()]
        rows += [(method, s, dict(zip(names, combo))) for combo in combos for s in sparsities]
    return rows


def check_claims(claims: tuple[ClaimSpec, ...], rows: list[tuple[str, float, dict]]) -> None:
    """ValueError naming the claim and arm that does not single out exactly one grid row."""
    names = [c.name for c in claims]
    if len(set(names)) != len(names):
        raise ValueError(f"claim names repeat: {names}")
    for claim in claims:
        for side in ("candidate", "baseline"):
            arm: ClaimArm = getattr(claim, side)
            found = [r for r in rows if arm.matches(*r)]
            if len(found) != 1:
                what = "no grid row" if not found else f"{len(found)} grid rows ({_options_of(found)})"
                raise ValueError(f"claim '{claim.name}': {side} {arm.describe()} matches {what}; "
                                 "name a method, sparsity and options of the grid that single out one row")


def _options_of(rows: list[tuple[str, float, dict]]) -> str:
    return "; ".join(", ".join(f"{k}={v}" for k, v in opts.items()) or "no options" for _, _, opts in rows)
