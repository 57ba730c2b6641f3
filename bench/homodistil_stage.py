"""HomoDistil's task-agnostic stage on the embedded default (configs/homodistil.yaml: all-MiniLM-L6-v2,
the task's texts plus packaged IMDB reviews), timed (issue 14): writes
bench/results/homodistil_stage_time.json and .md.

    python -m bench.homodistil_stage --steps 24

The stage at a parameter budget (default 50% kept) for the same steps and batches, with the student
cut at every width update (slice_in_run, the default) and masked throughout (as before issue 14);
steps interleaved (one of each in turn), so a busy moment on a shared machine slows both; dropout off
in both, so the two final students can be compared (max |difference| of their outputs on one more
batch).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from bench import common
from infra.data import corpus
from infra import data
from infra.experiment import paths
from infra.experiment.settings import Settings
from infra.models import pretrained
from infra.train import loop
from pruning.methods import build_distiller

ROOT = Path(__file__).resolve().parents[1]


def distiller(setup: common.Setup, budget: float, steps: int, **options: object):
    """Stage a as the flow builds it (the config's homodistil options), dropout off."""
    student, teacher = (pretrained.load_encoder(setup.pretrained, seed=0, mlm_head=True) for _ in range(2))
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    grid = {k: v[0] for k, v in setup.cfg.grid.options.get("homodistil", {}).items()}
    method = build_distiller("homodistil", student, teacher=teacher, total_steps=steps,
                             final_sparsity=budget, options=grid | options)
    spec = setup.cfg.distil.train
    optimizer = loop.make_optimizer(method.module, learning_rate=spec.learning_rate,
                                    weight_decay=spec.weight_decay)
    scheduler = loop.make_scheduler(optimizer, total_steps=steps, warmup_fraction=spec.warmup_fraction,
                                    schedule=spec.lr_schedule, min_lr_fraction=spec.min_lr_fraction)
    return method, optimizer, scheduler, spec.max_grad_norm


def step(run, batch: dict[str, Tensor], index: int) -> tuple[float, float]:
    """One product step of `run` (method, optimizer, scheduler, max_grad_norm): wall seconds and this
    thread's CPU seconds (all of the step's compute with one torch thread)."""
    method, optimizer, scheduler, max_grad_norm = run
    start, cpu = time.perf_counter(), time.thread_time()
    loop.train_step(method, method.module, batch, optimizer, scheduler, step=index, max_grad_norm=max_grad_norm)
    return time.perf_counter() - start, time.thread_time() - cpu


def stage_time(setup: common.Setup, batches: list[dict[str, Tensor]], steps: int, budget: float, log) -> dict:
    runs = {"sliced": distiller(setup, budget, steps),
            "masked": distiller(setup, budget, steps, slice_in_run=False)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for i in range(steps):
        for name, run in runs.items():
            times[name].append(step(run, batches[i], i))
        log(f"stage-time step {i + 1}/{steps}: " + ", ".join(
            f"{name} {sum(w for w, _ in t):.1f}s wall {sum(c for _, c in t):.1f}s cpu" for name, t in times.items()))
    wall = {name: sum(w for w, _ in t) for name, t in times.items()}
    cpu = {name: sum(c for _, c in t) for name, t in times.items()}
    last = {name: statistics.median(c for _, c in t[2 * steps // 3:]) for name, t in times.items()}
    sliced, masked = runs["sliced"][0], runs["masked"][0]
    with torch.no_grad():
        a, b = (m.export().eval()(**_inputs(batches[steps])).last_hidden_state for m in (sliced, masked))
    return {"steps": steps, "budget_kept": 1 - budget, "target": str(sliced.target),
            "seconds": wall, "cpu_seconds": cpu, "ratio_sliced_over_masked": wall["sliced"] / wall["masked"],
            "cpu_ratio_sliced_over_masked": cpu["sliced"] / cpu["masked"],
            "cpu_step_ratio_at_target": last["sliced"] / last["masked"],
            "per_step_cpu_s": {name: [round(c, 3) for _, c in t] for name, t in times.items()},
            "masks_equal": sliced.mask_checksum() == masked.mask_checksum(),
            "export_max_abs_diff": float((a - b).abs().max()), "export_max_abs": float(b.abs().max()),
            "target_ratio": 0.75}


def _inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def markdown(results: dict) -> str:
    lines = [f"# HomoDistil's task-agnostic stage (issue 14), {results['model']}", "",
             f"Command: `{results['command']}` (torch threads: {results['threads']}; batches of "
             f"{results['batch_size']} x up to {results['max_length']} tokens; dropout off).", ""]
    s = results["stage_time"]
    lines += ["## Stage time, student cut in the run vs masked throughout", "",
              f"{s['steps']} steps at {s['budget_kept']:.0%} of the parameters kept (target {s['target']}), "
              "on a machine shared with other work: the steps are interleaved so both runs share its "
              "noise, and CPU time (one thread) is the steadier measure.",
              "", "| | sliced | masked | ratio |", "|---|---|---|---|",
              f"| CPU seconds (the step's thread) | {s['cpu_seconds']['sliced']:.1f} | "
              f"{s['cpu_seconds']['masked']:.1f} | **{s['cpu_ratio_sliced_over_masked']:.3f}** |",
              f"| wall seconds | {s['seconds']['sliced']:.1f} | {s['seconds']['masked']:.1f} | "
              f"{s['ratio_sliced_over_masked']:.3f} |", "",
              f"Target ratio <= {s['target_ratio']}. A step at the target widths: "
              f"{s['cpu_step_ratio_at_target']:.3f} of a masked step (median CPU time, last third). "
              f"Same masks: {s['masks_equal']}; the exported students differ by at most "
              f"{s['export_max_abs_diff']:.2e} (outputs up to {s['export_max_abs']:.1f}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.homodistil_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=48, help="optimizer steps per run")
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of the parameters removed")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/homodistil.yaml")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the step's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/homodistil_stage_time.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    log = common.stamped_log(started)

    work = paths.bench_dir(Settings.from_env().home, "homodistil")
    setup = common.prepare(args.config, work, args.threads, max_train=512, max_eval=64)
    spec = setup.cfg.distil.train
    text = common.prepare_corpus(setup, (args.steps + 1) * spec.batch_size)  # one more to compare the exports
    table = corpus.read_corpus(text.path)
    pad = pretrained.load_tokenizer(setup.pretrained).pad_token_id or 0
    batches = list(data.batches(table, spec.batch_size, shuffle=True, seed=0, pad_token_id=pad, drop_last=True))
    if len(batches) < args.steps + 1:
        raise SystemExit(f"the corpus gives {len(batches)} batches; lower --steps")
    results = {"model": setup.cfg.model.name, "threads": args.threads, "batch_size": spec.batch_size,
               "max_length": setup.cfg.model.max_length,
               "command": "python -m bench.homodistil_stage " + " ".join(argv or [])}
    results["stage_time"] = stage_time(setup, batches, args.steps, args.budget, log)
    results["wall_s"] = time.perf_counter() - started
    common.write_results(args.out, results, markdown(results), log)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
