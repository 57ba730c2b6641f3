"""Does bf16 training cost accuracy? And what does the pruning LR schedule do to recovery?
Writes bench/results/precision.json and precision.md.

    python -m bench.precision [--seeds 0] [--schedules] [--threads 2]

Part 1 (always): the teacher's fine-tuning of configs/demo.yaml (the packaged MiniLM on 2,000
rotten_tomatoes sentences, 1 epoch, batch 32, lr 5e-5 linear) in this process through
infra.train.loop.fit, once in fp32 and once under bf16 autocast, per seed; dev and test
accuracy of each (evaluation itself in fp32, as in the grid) and the training time.

Part 2 (--schedules): GMP at 90% sparsity from the fp32 teacher, the demo's pruning job
(0.5 epoch, update_every 4), once per LR schedule: linear to 0 (the recipe before issue 14),
constant after the warm-up (prune's default since), linear to a floor of half the peak.

One seed of 853 test sentences has a standard error of about 1.5 points: read a difference
smaller than that as none.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import claims
from infra import data
from infra.experiment import paths
from infra.experiment.settings import Settings
from infra.models import pretrained
from pruning.methods import build_method

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = {"linear_to_0": {"lr_schedule": "linear", "min_lr_fraction": 0.0},
             "constant": {"lr_schedule": "constant", "min_lr_fraction": 0.0},
             "linear_to_half": {"lr_schedule": "linear", "min_lr_fraction": 0.5}}
KEYS = ("dev_accuracy", "test_accuracy", "train_s")


def fine_tune(setup: claims.Setup, seed: int, precision: str, keep: bool = False) -> dict[str, float]:
    """The teacher job of the config in `precision`; its dev/test accuracy and training seconds."""
    model = claims.pretrained_model(setup, seed=seed)
    table = data.read_split(setup.ref, "train")
    method = build_method("dense", model, total_steps=claims.steps_of(table, setup.cfg.teacher),
                          final_sparsity=0.0, options={})
    began = time.perf_counter()
    claims.train_method(method, table, setup.cfg.teacher, seed=seed, precision=precision)
    spent = time.perf_counter() - began
    name = f"teacher-{precision}-{seed}"
    return claims.evaluate(setup, model, name, keep=keep) | {"train_s": spent}


def prune(setup: claims.Setup, teacher_dir: str, seed: int, schedule: dict) -> dict[str, float]:
    """GMP at 0.9 from the teacher with `schedule` over the config's pruning recipe."""
    spec = setup.cfg.prune.model_copy(update=schedule)
    student = pretrained.load_classifier(teacher_dir, num_labels=setup.ref.num_labels, seed=seed)
    began = time.perf_counter()
    method = claims.train(setup, "gmp", student, spec, sparsity=0.9, seed=seed,
                          options=claims.schedule_options(setup.cfg))
    spent = time.perf_counter() - began
    summary = method.recovery.summary() if method.recovery is not None else {}
    return claims.evaluate(setup, student, f"gmp-{seed}") | summary | {"train_s": spent}


def summary(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per run name, the mean and values of each key over seeds."""
    out = {}
    for name, metrics in runs.items():
        out[name] = {k: {"mean": statistics.fmean(m[k] for m in metrics), "values": [m[k] for m in metrics]}
                     for k in KEYS if all(k in m for m in metrics)}
    return out


def markdown(result: dict) -> str:
    lines = ["# bf16 vs fp32 training, and the pruning LR schedule (configs/demo.yaml)", "",
             f"Seeds {result['seeds']}; accuracy on the dev and test splits (evaluation in fp32);",
             "one seed's test accuracy has a standard error of about 1.5 points. The machine was",
             "shared with other work, so the training times are noisy.", "",
             "| run | dev acc | test acc | train s |", "|---|---|---|---|"]
    for name, m in result["runs"].items():
        lines.append(f"| {name} | {m['dev_accuracy']['mean']:.4f} | {m['test_accuracy']['mean']:.4f} | "
                     f"{m['train_s']['mean']:.0f} |")
    lines += ["", f"`{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--schedules", action="store_true", help="also part 2: GMP@0.9 per LR schedule")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/precision.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    log = claims.stamped_log(started)

    setup = claims.prepare(args.config, {"train": None, "eval": None},
                           paths.bench_dir(Settings.from_env().home, "precision"), args.threads)
    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for precision in ("fp32", "bf16"):
            log(f"teacher {precision} seed {seed}")
            keep = args.schedules and precision == "fp32"
            runs.setdefault(f"teacher_{precision}", []).append(fine_tune(setup, seed, precision, keep))
            log(f"  {runs[f'teacher_{precision}'][-1]}")
        if args.schedules:
            teacher_dir = str(paths.models_dir(setup.work) / f"teacher-fp32-{seed}")
            for name, schedule in SCHEDULES.items():
                log(f"gmp@0.9 {name} seed {seed}")
                runs.setdefault(f"gmp0.9_{name}", []).append(prune(setup, teacher_dir, seed, schedule))
                log(f"  {runs[f'gmp0.9_{name}'][-1]}")
    result = {"seeds": args.seeds, "runs": summary(runs), "data_hash": setup.ref.content_hash,
              "command": "python -m bench.precision " + " ".join(argv or [])}
    claims.write_results(args.out, result, markdown(result), log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
