"""Sparsity schedules: how much of each matrix is pruned at a given step.

The cubic schedule of Zhu and Gupta (2017) prunes fast while the network still
has redundant weights and slows down as it approaches the target, which is the
schedule every unstructured method in METHODS.md shares.
"""

from __future__ import annotations

from dataclasses import dataclass

# The one home of the shared schedule's defaults: the methods' signatures take them
# (GMP and SDP all three, SparseBERT the start, HomoDistil the end), and so do the
# config's method options.
# METHODS.md section 1: "cubic over the first 2/3 of training, then fixed-mask recovery".
START_FRACTION = 0.0  # the ramp starts at step 0: no dense warm-up
END_FRACTION = 2 / 3  # the last third trains under the final masks (recovery)
UPDATE_EVERY = 10  # optimizer steps between mask updates (ours; METHODS.md names none)


def cubic_sparsity(
    step: int, initial: float, final: float, start_step: int, end_step: int
) -> float:
    """Zhu and Gupta's cubic sparsity at `step`.

    s(t) = s_f + (s_0 - s_f) * (1 - (t - t_i) / (t_f - t_i))^3 for
    t_i <= t < t_f; s_0 before t_i; s_f from t_f on.
    """
    if end_step <= start_step:
        raise ValueError(f"end_step ({end_step}) must be greater than start_step ({start_step})")
    if step < start_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class CubicSchedule:
    """A cubic sparsity ramp from `start_step` to `end_step`, with mask updates
    every `update_every` steps and one last update at `end_step` exactly.

    Steps count optimizer steps already done (0-based), as passed to
    `PruningMethod.on_step_start`.
    """

    initial_sparsity: float
    final_sparsity: float
    start_step: int
    end_step: int
    update_every: int

    def __post_init__(self) -> None:
        for name in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        # Masks never regrow, so a falling schedule could not be followed.
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity ({self.initial_sparsity}) must not exceed "
                f"final_sparsity ({self.final_sparsity})"
            )
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {self.start_step}")
        if self.end_step <= self.start_step:
            raise ValueError(
                f"end_step ({self.end_step}) must be greater than start_step ({self.start_step})"
            )
        if self.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {self.update_every}")

    def sparsity_at(self, step: int) -> float:
        """Scheduled sparsity after `step` optimizer steps."""
        return cubic_sparsity(
            step, self.initial_sparsity, self.final_sparsity, self.start_step, self.end_step
        )

    def is_update_step(self, step: int) -> bool:
        """True at start_step + k * update_every (below end_step) and at end_step."""
        if step == self.end_step:
            return True  # so the final sparsity is reached even off the update grid
        if step < self.start_step or step > self.end_step:
            return False
        return (step - self.start_step) % self.update_every == 0

    @classmethod
    def over_run(
        cls,
        total_steps: int,
        final_sparsity: float,
        start_fraction: float = START_FRACTION,
        end_fraction: float = END_FRACTION,
        update_every: int = UPDATE_EVERY,
        initial_sparsity: float = 0.0,
    ) -> CubicSchedule:
        """A schedule over a run of `total_steps` optimizer steps, its ramp given as
        fractions of the run.

        The last step a training loop announces is `total_steps - 1`, so end_step
        is clamped to it (for runs of 2 steps or more): the final sparsity is in
        force for at least the last optimizer step, even with end_fraction = 1.
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= start_fraction < end_fraction <= 1.0:
            raise ValueError(
                f"need 0 <= start_fraction < end_fraction <= 1, got start_fraction="
                f"{start_fraction}, end_fraction={end_fraction}"
            )
        last_step = total_steps - 1
        start_step = min(round(start_fraction * total_steps), max(last_step - 1, 0))
        end_step = max(start_step + 1, min(round(end_fraction * total_steps), last_step))
        return cls(initial_sparsity, final_sparsity, start_step, end_step, update_every)
