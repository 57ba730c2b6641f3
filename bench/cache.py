"""Cheaper steps (issue 14): frozen-teacher outputs read from a cache, and length-bucketed batches,
measured on the embedded default (configs/demo.yaml: MiniLM, 2,000 training sentences, length 64).

    python -m bench.cache [--repeats 8] [--steps 12] [--threads 1]

1. Cache: the frozen teacher's outputs of SDP (logits, [CLS] representation) and SparseBERT
   (hidden states, attention scores, logits) over the train split, built by
   infra.train.teacher_cache as a job builds them (float16 per-token outputs, the default): size,
   build time, and the loss on one batch with the cache against the live teacher.
2. Step time over a dense step on bench/steptime.py's batch (the split's first 32 examples,
   unshuffled): GMP (what the masks alone cost), SDP and SparseBERT with the live teacher and
   with the cache (reading the batch's outputs counts in the step), each step through
   infra.train.loop.train_step, all methods interleaved within a round; the ratio is the median
   of per-round ratios (a busy moment on a shared machine slows a whole round alike).
3. Length buckets: padded tokens of epoch 0 (seed 0) with and without, and the wall time of the
   first `steps` dense steps of each, interleaved; real (unpadded) tokens per second.
Writes bench/results/cache.json and cache.md. The SparseBERT cache (about 1.9 GB) is removed at
the end unless --keep.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from bench import common
from infra import data
from infra.experiment import paths
from infra.experiment.settings import Settings
from infra.train import loop, teacher_cache
from pruning.methods import build_method

ROOT = Path(__file__).resolve().parents[1]
SPARSITY = 0.9  # the step is timed at the final sparsity, as bench/steptime.py does
TOTAL = 300  # the methods' schedule length; steps past it update no masks
TARGETS = {"sdp_cached_over_dense": 1.05, "gmp_over_dense": 1.05}


def build_runners(setup: common.Setup, root: Path, log) -> tuple[dict, dict]:
    """name -> (method, optimizer, cache or None) for dense, gmp (the masks' own cost), sdp and
    sparsebert (live and cached), and per cached method what its cache holds."""
    base = common.pretrained_model(setup, seed=0)
    table = data.read_split(setup.ref, "train")
    runners, caches = {}, {}
    for name, method_name, cached in (("dense", "dense", False), ("gmp", "gmp", False), ("sdp", "sdp", False),
                                      ("sdp_cached", "sdp", True), ("sparsebert", "sparsebert", False),
                                      ("sparsebert_cached", "sparsebert", True)):
        teacher = copy.deepcopy(base).eval() if method_name in ("sdp", "sparsebert") else None
        method = build_method(method_name, copy.deepcopy(base).train(), teacher=teacher, total_steps=TOTAL,
                              final_sparsity=0.0 if method_name == "dense" else SPARSITY, options={})
        if method_name != "dense":  # at the final sparsity; past the schedule, as timed
            method.update_masks(method.schedule.end_step)
        cache = None
        if cached:
            began = time.perf_counter()
            cache = teacher_cache.ensure(method, table, root=root, data_hash=setup.ref.content_hash,
                                         teacher="bench-cache-base-seed0", pad_token_id=0,
                                         cap_bytes=4096 * teacher_cache.MEBIBYTE, log=log)
            meta = cache.meta
            caches[method_name] = {"examples": meta["rows"], "length": meta["length"],
                                   "mib": round(meta["rows"] * meta["bytes_per_example"] / 2**20, 1),
                                   "mib_per_example": meta["bytes_per_example"] / 2**20,
                                   "dtypes": meta["dtypes"], "shapes": meta["shapes"],
                                   "build_s": meta["build_s"], "ensure_s": time.perf_counter() - began}
        optimizer = torch.optim.AdamW(loop.param_groups(method.module, 0.01), lr=1e-6)
        runners[name] = (method, optimizer, cache)
    return runners, caches


def same_loss(runners: dict, batch: dict) -> dict:
    """The loss with the cache against the live teacher's on `batch`, per cached method (the
    student in eval mode: no dropout between the two)."""
    out = {}
    for name in ("sdp", "sparsebert"):
        method, _, _ = runners[name]
        cache = runners[name + "_cached"][2]
        live = {k: v for k, v in batch.items() if k != "example_ids"}
        method.student.eval()
        with torch.no_grad():
            want = float(method.loss(method.student, live)[0])
            got = float(method.loss(method.student, cache.attach(batch, method))[0])
        method.student.train()
        out[name] = {"live": want, "cached": got, "relative_difference": abs(got - want) / abs(want)}
    return out


def time_steps(runners: dict, batch: dict, repeats: int, log) -> dict:
    """Per-round step times of every runner on `batch`; ratios over dense."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats + 2):  # the first two rounds warm up the allocator and the page cache
        for name, (method, optimizer, cache) in runners.items():
            step = TOTAL + r if name != "dense" else r
            start = time.perf_counter()
            ready = cache.attach(batch, method) if cache else {k: v for k, v in batch.items()
                                                               if k != "example_ids"}
            loop.train_step(method, method.student, ready, optimizer, None, step=step, max_grad_norm=1.0)
            times[name].append(time.perf_counter() - start)
        log(f"step-time round {r + 1}/{repeats + 2}")
    times = {name: t[2:] for name, t in times.items()}
    ratios = {f"{name}_over_dense": statistics.median(t / d for t, d in zip(times[name], times["dense"]))
              for name in times if name != "dense"}
    return {"median_ms": {n: 1000 * statistics.median(t) for n, t in times.items()},
            "ratios": ratios, "rounds": repeats, "batch_shape": list(batch["input_ids"].shape)}


def time_buckets(setup: common.Setup, steps: int, log) -> dict:
    """Padded tokens per epoch and real tokens per second of dense steps, bucketed vs not."""
    table = data.read_split(setup.ref, "train")
    batch_size = setup.cfg.prune.batch_size
    epochs = {b: list(data.batches(table, batch_size, shuffle=True, seed=0, epoch=0, drop_last=True,
                                   length_buckets=b)) for b in (False, True)}
    base = common.pretrained_model(setup, seed=0)
    methods = {b: build_method("dense", copy.deepcopy(base).train(), total_steps=TOTAL, final_sparsity=0.0)
               for b in (False, True)}
    optimizers = {b: torch.optim.AdamW(loop.param_groups(m.module, 0.01), lr=1e-6)
                  for b, m in methods.items()}
    seconds = {False: 0.0, True: 0.0}
    for i in range(steps + 1):  # step 0 warms up
        for b in (False, True):
            start = time.perf_counter()
            loop.train_step(methods[b], methods[b].student, epochs[b][i], optimizers[b], None, step=i,
                            max_grad_norm=1.0)
            seconds[b] += (time.perf_counter() - start) if i else 0.0
        log(f"bucket step {i + 1}/{steps + 1}")
    out = {}
    for b, batches in epochs.items():
        timed = batches[1 : steps + 1]
        real = sum(int(x["attention_mask"].sum()) for x in timed)
        out["bucketed" if b else "plain"] = {
            "padded_tokens_per_epoch": sum(x["input_ids"].numel() for x in batches),
            "real_tokens_per_epoch": sum(int(x["attention_mask"].sum()) for x in batches),
            "mean_batch_length": statistics.fmean(x["input_ids"].shape[1] for x in batches),
            "timed_steps": steps, "timed_s": seconds[b], "real_tokens_per_s": real / seconds[b],
            "padded_tokens_per_s": sum(x["input_ids"].numel() for x in timed) / seconds[b]}
    out["padded_tokens_ratio"] = (out["bucketed"]["padded_tokens_per_epoch"]
                                  / out["plain"]["padded_tokens_per_epoch"])
    out["real_tokens_per_s_gain"] = out["bucketed"]["real_tokens_per_s"] / out["plain"]["real_tokens_per_s"]
    return out


def markdown(r: dict) -> str:
    steps, buckets = r["step_time"], r["buckets"]
    lines = ["# Cheaper steps (issue 14): teacher-output cache and length buckets", "",
             f"Command: `{r['command']}`; {r['threads']} thread(s); load average {r['load_before']} before, "
             f"{r['load_after']} after, on a 2-core machine shared with other work (ratios are per "
             "round, so a busy moment slows a round alike, but the numbers are noisy).", "",
             "## Step time over a dense step (median of per-round ratios)", "",
             "| runner | ratio | median ms | target |", "|---|---|---|---|",
             f"| dense | 1.000 | {steps['median_ms']['dense']:.0f} | |"]
    for name, ratio in steps["ratios"].items():
        runner = name.removesuffix("_over_dense")
        lines.append(f"| {runner} | {ratio:.3f} | {steps['median_ms'][runner]:.0f} | "
                     f"{'<= %.2f' % TARGETS[name] if name in TARGETS else ''} |")
    lines += ["", f"Batch {steps['batch_shape']} (the split's first 32 examples), {steps['rounds']} rounds, "
              f"masks at {SPARSITY:.0%}.", "", "## The caches", "",
              "| method | examples | longest | MiB | MiB per example | build s | loss live | loss cached "
              "| rel. diff |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, c in r["caches"].items():
        s = r["same_loss"][name]
        lines.append(f"| {name} | {c['examples']} | {c['length']} | {c['mib']} | "
                     f"{c['mib_per_example']:.4f} | {c['build_s']} | {s['live']:.6f} | {s['cached']:.6f} | "
                     f"{s['relative_difference']:.1e} |")
    lines += ["", "SparseBERT stores hidden states [L+1, T, H] and attention scores [L, h, T, T] per "
              "example at the longest length, float16; logits and SDP's representations float32.", "",
              "## Length buckets (dense steps, epoch 0, seed 0)", "",
              "| batches | padded tokens / epoch | mean batch length | real tokens / s |",
              "|---|---|---|---|"]
    for name in ("plain", "bucketed"):
        b = buckets[name]
        lines.append(f"| {name} | {b['padded_tokens_per_epoch']} | {b['mean_batch_length']:.1f} | "
                     f"{b['real_tokens_per_s']:.0f} |")
    lines += ["", f"Padded tokens: {buckets['padded_tokens_ratio']:.3f} of unbucketed; real tokens per "
              f"second x{buckets['real_tokens_per_s_gain']:.2f} (first {buckets['plain']['timed_steps']} "
              f"steps of each order, interleaved; {buckets['plain']['real_tokens_per_epoch']} real tokens "
              "per epoch).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/demo.yaml")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the caches in the bench scratch")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cache.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = paths.bench_dir(Settings.from_env().home, "cache")
    started = time.perf_counter()

    log = common.stamped_log(started)

    results = {"command": "python -m bench.cache " + " ".join(argv or []), "threads": args.threads,
               "load_before": [round(x, 1) for x in os.getloadavg()]}
    setup = common.prepare(args.config, work, args.threads)
    root = paths.teacher_outputs_dir(work)
    runners, results["caches"] = build_runners(setup, root, log)
    batch = next(data.batches(data.read_split(setup.ref, "train"), setup.cfg.prune.batch_size, shuffle=False,
                              seed=0, drop_last=True, example_ids=True))
    results["same_loss"] = same_loss(runners, batch)
    results["step_time"] = time_steps(runners, batch, args.repeats, log)
    results["buckets"] = time_buckets(setup, args.steps, log)
    results["load_after"] = [round(x, 1) for x in os.getloadavg()]
    results["wall_s"] = round(time.perf_counter() - started, 1)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    common.write_results(args.out, results, markdown(results), log)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
