"""Step-time cost of each method and of bf16, as ratios measured in one run: writes
bench/results/steptime.json and steptime.md.

    python -m bench.steptime [--repeats 5] [--threads 1] [--config configs/demo.yaml]

One batch of the embedded default (configs/demo.yaml: MiniLM, the first 32 rotten_tomatoes
training sentences, padded to the longest: about [32, 48]) and one process. Each round times
one infra.train.loop.train_step of every runner (dense, GMP, SDP and SparseBERT in fp32; dense
and SDP under bf16 autocast) and one mask update (a full mask pruned to the mid-ramp sparsity:
a full top-k per matrix, the costly case). Masked methods step at their final sparsity, past
the ramp, so no update falls inside a timed step; SDP and SparseBERT run their frozen teacher
live each step (the grid's teacher cache can spare it). A ratio is the median over rounds of
that round's ratio, so a busy moment on a shared machine, which slows a whole round, cancels;
the first two rounds warm up and are dropped. bf16 falls back to fp32 where the CPU has no
native bf16 (infra.train.loop.resolve_precision); the results say which ran.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench import common
from infra import data
from infra.experiment import paths
from infra.experiment.settings import Settings
from infra.train import loop
from pruning.methods import METHOD_SPECS, PruningMethod, build_method
from pruning.methods.base import Batch

ROOT = Path(__file__).resolve().parents[1]
# (name, method, precision): what each round times, one train_step each.
RUNNERS = (("dense", "dense", "fp32"), ("gmp", "gmp", "fp32"), ("sdp", "sdp", "fp32"),
           ("sparsebert", "sparsebert", "fp32"), ("dense_bf16", "dense", "bf16"),
           ("sdp_bf16", "sdp", "bf16"))
# ratio name -> (numerator, denominator) of per-round step times
RATIOS = {"gmp_step_over_dense": ("gmp", "dense"), "sdp_step_over_dense": ("sdp", "dense"),
          "sparsebert_step_over_dense": ("sparsebert", "dense"),
          "dense_bf16_over_fp32": ("dense_bf16", "dense"), "sdp_bf16_over_fp32": ("sdp_bf16", "sdp")}
TARGETS = {"gmp_step_over_dense": "<= 1.05", "gmp_step_with_amortised_mask_updates_over_dense": "<= 1.05",
           "sdp_step_over_dense": "<= 1.4"}
WARM_UP_ROUNDS = 2


@dataclass
class Runner:
    """One timed training setup: a method around its own copy of the model, and its optimizer."""

    method: PruningMethod
    optimizer: torch.optim.Optimizer
    precision: str  # as resolved on this CPU


def make_runner(base: nn.Module, name: str, precision: str, *, sparsity: float, total: int,
                weight_decay: float) -> Runner:
    """`name` on a copy of `base` at its final `sparsity` (masks in place), AdamW at a tiny rate."""
    student = copy.deepcopy(base).train()
    teacher = copy.deepcopy(base).eval() if METHOD_SPECS[name].needs_teacher else None
    method = build_method(name, student, teacher=teacher, total_steps=total,
                          final_sparsity=0.0 if name == "dense" else sparsity, options={})
    if name != "dense":
        method.update_masks(method.schedule.end_step)  # time at the final sparsity
    optimizer = torch.optim.AdamW(loop.param_groups(method.module, weight_decay), lr=1e-6)
    return Runner(method, optimizer, loop.resolve_precision(precision, torch.device("cpu")))


def paired_ratio(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median over rounds of `top`'s time over `bottom`'s in the same round."""
    return statistics.median(t / b for t, b in zip(times[top], times[bottom]))


def time_rounds(runners: dict[str, Runner], batch: Batch, updater: PruningMethod, *, rounds: int,
                total: int, max_grad_norm: float, log) -> dict[str, list[float]]:
    """Seconds per round of each runner's step and of one mask update, warm-up rounds dropped."""
    mid = (updater.schedule.start_step + updater.schedule.end_step) // 2
    times: dict[str, list[float]] = {name: [] for name in [*runners, "mask_update"]}
    for r in range(rounds + WARM_UP_ROUNDS):
        for name, run in runners.items():
            step = r if run.method.target_sparsity() == 0 else total + r  # past the ramp: no update
            start = time.perf_counter()
            loop.train_step(run.method, run.method.module, batch, run.optimizer, None, step=step,
                            max_grad_norm=max_grad_norm, precision=run.precision)
            times[name].append(time.perf_counter() - start)
        updater.masks = {n: torch.ones_like(m) for n, m in updater.masks.items()}
        start = time.perf_counter()
        updater.update_masks(mid)
        times["mask_update"].append(time.perf_counter() - start)
        log(f"round {r + 1}/{rounds + WARM_UP_ROUNDS}")
    return {name: t[WARM_UP_ROUNDS:] for name, t in times.items()}


def run_step_time(setup: common.Setup, repeats: int, log, sparsity: float = 0.9) -> dict:
    """Per-round step times of every runner on one batch, and their paired ratios."""
    spec, total = setup.cfg.prune, 300
    base = common.pretrained_model(setup, seed=0)
    pad = getattr(base.config, "pad_token_id", 0) or 0
    batch = next(data.batches(data.read_split(setup.ref, "train"), spec.batch_size, shuffle=False,
                              seed=0, pad_token_id=pad, drop_last=True))
    runners = {name: make_runner(base, method, precision, sparsity=sparsity, total=total,
                                 weight_decay=spec.weight_decay) for name, method, precision in RUNNERS}
    updater = build_method("gmp", copy.deepcopy(base), total_steps=total, final_sparsity=sparsity, options={})
    times = time_rounds(runners, batch, updater, rounds=repeats, total=total,
                        max_grad_norm=spec.max_grad_norm, log=log)
    every = runners["gmp"].method.schedule.update_every
    ratios = {key: paired_ratio(times, top, bottom) for key, (top, bottom) in RATIOS.items()}
    amortised = statistics.median((g + u / every) / d for g, u, d in
                                  zip(times["gmp"], times["mask_update"], times["dense"]))
    ratios["gmp_step_with_amortised_mask_updates_over_dense"] = amortised
    return {
        "batch_shape": list(batch["input_ids"].shape), "threads": setup.threads, "repeats": repeats,
        "sparsity": sparsity, "update_every": every,
        "precision_ran": {name: run.precision for name, run in runners.items()},
        "cpu": {"machine": platform.machine(), "bf16_native": loop.bf16_supported(torch.device("cpu")),
                "capability": torch.backends.cpu.get_cpu_capability()},
        "median_ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
        "spread_ms": {name: [1000 * min(t), 1000 * max(t)] for name, t in times.items()},
        "ratios": ratios, "targets": TARGETS,
    }


def markdown(result: dict) -> str:
    """The ratios as a table, the absolute times beside them."""
    lines = ["# Step time: methods over a dense step, bf16 over fp32", "",
             "Measured in one run, interleaved: each ratio is the median over rounds of that round's",
             "ratio. The machine was shared with other work while it ran, so the absolute times below",
             "are noisy; the ratios, taken within a round, much less so.", "",
             "| ratio | median of per-round ratios | target |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {TARGETS.get(k, '-')} |" for k, v in result["ratios"].items()]
    ran = ", ".join(f"{k} {v}" for k, v in result["precision_ran"].items())
    lines += ["", f"batch {result['batch_shape']}, {result['threads']} thread(s), {result['repeats']} "
              f"rounds, masked methods at sparsity {result['sparsity']}; precision as run: {ran}; "
              f"CPU {result['cpu']['machine']} ({result['cpu']['capability']}, native bf16: "
              f"{result['cpu']['bf16_native']}).", "",
              "median ms: " + ", ".join(f"{k} {v:.0f}" for k, v in result["median_ms"].items())
              + f" (mask_update: one update, every {result['update_every']} steps)", "",
              f"`{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steptime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/demo.yaml")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after 2 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/steptime.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    log = common.stamped_log(started)

    # the config's own data: the batch is its first 32
    setup = common.prepare(args.config, paths.bench_dir(Settings.from_env().home), args.threads)
    result = run_step_time(setup, args.repeats, log, args.sparsity)
    result["command"] = "python -m bench.steptime " + " ".join(argv or [])
    result["data_hash"] = setup.ref.content_hash
    text = markdown(result)
    common.write_results(args.out, result, text, log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
