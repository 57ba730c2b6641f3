"""The job-slot window the flow and bench/cluster.py schedule grid jobs with, and the Ray
bootstrap file a local Ray and the stack's Ray head share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.stack.services import prepare_ray
from infra.train.cluster import ensure_bootstrap_file, run_window


@dataclass
class Clock:
    """Jobs that take a number of polls to finish; records how many ran at once."""

    durations: dict[str, int]
    running: dict[str, int] = field(default_factory=dict)  # job -> polls left
    peak: int = 0
    started: list[str] = field(default_factory=list)

    def start(self, job: str) -> str:
        self.started.append(job)
        self.running[job] = self.durations[job]
        self.peak = max(self.peak, len(self.running))
        return job

    def is_done(self, job: str) -> bool:
        self.running[job] -= 1
        if self.running[job] > 0:
            return False
        del self.running[job]
        return True


def test_the_window_never_runs_more_than_its_slots_and_settles_every_job_once() -> None:
    clock = Clock({"a": 3, "b": 1, "c": 1, "d": 2, "e": 1})
    settled: list[str] = []
    run_window(list(clock.durations), slots=2, start=clock.start, is_done=clock.is_done,
               settle=lambda job, handle: settled.append(job), poll_s=0)
    assert clock.peak == 2
    assert clock.started == ["a", "b", "c", "d", "e"]  # in order, the next as a slot frees
    assert sorted(settled) == ["a", "b", "c", "d", "e"]
    assert settled[:2] == ["b", "c"]  # short jobs finish while "a" still runs


def test_a_job_settled_with_a_new_handle_keeps_its_slot_and_runs_again() -> None:
    clock = Clock({"a": 1, "b": 1})
    settled: list[str] = []

    def settle(job: str, handle: str) -> str | None:
        settled.append(job)
        if job == "a" and settled.count("a") == 1:
            return clock.start(job)  # a retry: same job, new handle
        return None

    run_window(["a", "b"], slots=1, start=clock.start, is_done=clock.is_done, settle=settle, poll_s=0)
    assert clock.started == ["a", "a", "b"] and settled == ["a", "a", "b"]
    assert clock.peak == 1


def test_unhashable_jobs_and_no_jobs_are_fine() -> None:
    seen: list[dict] = []
    run_window([{"id": 1}, {"id": 1}], slots=4, start=lambda job: job, is_done=lambda h: True,
               settle=lambda job, h: seen.append(job), poll_s=0)
    assert seen == [{"id": 1}, {"id": 1}]
    run_window([], slots=1, start=lambda job: job, is_done=lambda h: True, settle=lambda j, h: None)



def test_one_bootstrap_file_for_a_local_ray_and_the_stacks_ray_head(tmp_path: Path) -> None:
    path = ensure_bootstrap_file(tmp_path)  # what cluster.connect writes in ~ for a local Ray
    assert yaml.safe_load(path.read_text()) == {"provider": {"type": "local"}}
    path.write_text("provider:\n  type: aws\n")
    assert ensure_bootstrap_file(tmp_path).read_text() == "provider:\n  type: aws\n"  # a user's own stays

    head_home = Path(prepare_ray(tmp_path / "stack")["HOME"])  # the stack's Ray head has its own home
    written = (head_home / path.name).read_text()
    (tmp_path / "other").mkdir()
    assert written == ensure_bootstrap_file(tmp_path / "other").read_text()
    assert yaml.safe_load(written) == {"provider": {"type": "local"}}
