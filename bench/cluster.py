"""Grid parallel efficiency and checkpoint cost on the local Ray cluster (issue 5).

    python -m bench.cluster [--jobs 4] [--train-examples 640] [--checkpoint-every 10]

Runs `--jobs` GMP jobs of the embedded default (all-MiniLM-L6-v2 on rotten_tomatoes,
max_length 64, batch 32, one worker with one CPU each) as the flow does: as many at a time
as Ray's resources hold (`cluster.job_slots`), the next one as each finishes
(`cluster.run_window`, the flow's own scheduling).

- parallel efficiency = (sum of the jobs' wall times / slots) / the grid's wall time.
  1.0 means the cluster never idled and running jobs side by side cost nothing; the
  target is at least 0.9 (Ray Tune aims at under 20% overhead).
- checkpoint cost = time the training loop spent writing and persisting checkpoints
  (everything a restart needs, every `--checkpoint-every` steps) over the loop's time,
  per job, from the metrics each job reports (infra.train.ray_job). Target: under 5%.

Writes bench/results/cluster.json and cluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import ray

from infra import data
from infra.models import pretrained
from infra.train import cluster, ray_job
from infra.experiment.config import load_config
from infra.experiment.preflight import split_spec, task_source
from infra.experiment import paths
from infra.experiment.settings import Settings, apply_offline_env

RESULTS = Path(__file__).parent / "results"


def _prepare(work: Path, examples: int) -> tuple[data.DatasetRef, str, str]:
    cfg = load_config(Path(__file__).parents[1] / "configs/demo.yaml")
    spec = cfg.tasks[0].model_copy(update={"split": cfg.tasks[0].split.model_copy(
        update={"max_train_examples": examples})})
    model_dir = pretrained.resolve_model_dir(cfg.model.name)
    tokenizer = pretrained.load_tokenizer(model_dir)
    dataset = data.prepare(task_source(spec), split_spec(spec), tokenizer, 64, paths.data_dir(work))
    # GMP prunes a fine-tuned teacher; for timing the pretrained encoder with a new head will do.
    teacher = pretrained.load_classifier(model_dir, num_labels=dataset.num_labels, seed=0)
    teacher_dir = pretrained.save_model(teacher, tokenizer, work / "teacher")
    return dataset, model_dir, str(teacher_dir)


def _job(index: int, dataset: data.DatasetRef, model_dir: str, teacher: str,
         checkpoint_every: int) -> ray_job.JobArgs:
    return ray_job.JobArgs(
        job_id=f"bench{index}", method="gmp", sparsity=0.5, seed=index, options={"update_every": 4},
        data_path=dataset.path, pretrained=model_dir, init="pretrained", teacher_dir=teacher,
        epochs=1.0, batch_size=32, learning_rate=5e-5, weight_decay=0.01, warmup_fraction=0.06,
        max_grad_norm=1.0, checkpoint_every=checkpoint_every, log_every=1000)


def _timed(args: ray_job.JobArgs, work: Path) -> dict:
    began = time.perf_counter()
    out = ray_job.run_job(args, run_name=args.job_id, num_workers=1, cpus_per_worker=1,
                           use_gpu=False, max_failures=0, storage_path=work / "ray",
                           out_dir=paths.models_dir(work) / args.job_id)
    reported = json.loads(ray_job.timing_path(out).read_text())
    return {"job": args.job_id, "wall_s": time.perf_counter() - began, **reported}


def _grid(jobs: list[ray_job.JobArgs], slots: int, work: Path) -> tuple[list[dict], float]:
    """Every job's timings, run through the flow's window, and the grid's wall time."""
    began, done = time.perf_counter(), []

    def settle(_job: ray_job.JobArgs, future: Future) -> None:
        done.append(future.result())  # a failed job stops the bench

    with ThreadPoolExecutor(slots) as pool:
        # A short poll: the flow's 0.5 s would count as idle time against the cluster.
        cluster.run_window(jobs, slots=slots, start=lambda job: pool.submit(_timed, job, work),
                           is_done=Future.done, settle=settle, poll_s=0.05)
    return done, time.perf_counter() - began


def _markdown(summary: dict, jobs: list[dict]) -> str:
    lines = [f"# Ray cluster: parallel efficiency and checkpoint cost\n",
             f"`{summary['command']}` on {summary['machine']}\n",
             f"- jobs: {summary['jobs']}, slots (concurrent jobs): {summary['slots']}",
             f"- grid wall time: {summary['grid_wall_s']:.1f} s; sum of job times: "
             f"{summary['sum_job_s']:.1f} s",
             f"- **parallel efficiency: {summary['parallel_efficiency']:.3f}** (target >= 0.9)",
             f"- **checkpoint cost: {100 * summary['checkpoint_fraction']:.2f}% of loop time** "
             f"(checkpoint every {summary['checkpoint_every']} steps; target < 5%)\n",
             "| job | wall s | loop s | checkpoint s | steps |", "|---|---|---|---|---|"]
    lines += [f"| {j['job']} | {j['wall_s']:.1f} | {j['loop_s']:.1f} | {j['checkpoint_s']:.2f} | "
              f"{j['step']} |" for j in jobs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--train-examples", type=int, default=640, help="20 steps of batch 32")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster.json")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    apply_offline_env(settings.allow_hub)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        dataset, pretrained, teacher = _prepare(work, args.train_examples)
        started = cluster.connect(settings)
        try:
            slots = cluster.job_slots(1, 1, False)
            jobs = [_job(i, dataset, pretrained, teacher, args.checkpoint_every) for i in range(args.jobs)]
            results, wall = _grid(jobs, slots, work)
        finally:
            cluster.disconnect(started)
    total = sum(r["wall_s"] for r in results)
    summary = {
        "command": "python -m bench.cluster " + " ".join(argv or []), "jobs": args.jobs, "slots": slots,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, ray {ray.__version__}",
        "grid_wall_s": wall, "sum_job_s": total, "parallel_efficiency": total / slots / wall,
        "checkpoint_every": args.checkpoint_every,
        "checkpoint_fraction": sum(r["checkpoint_s"] for r in results) / sum(r["loop_s"] for r in results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "jobs": results}, indent=2))
    args.out.with_suffix(".md").write_text(_markdown(summary, results))
    print(_markdown(summary, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
