"""Measure the claims of issue 3 on the embedded default (configs/demo.yaml: MiniLM on
rotten_tomatoes) and write bench/results/claims[-quick].json and .md.

    python -m bench.claims --quick                # smoke run: 1 seed, a few steps per job
    python -m bench.claims                        # everything, 3 seeds (roughly 45-60 min on 2 cores)

Parts: SDP vs GMP at 50/70/90% encoder sparsity; SparseBERT at 95% vs the teacher; SDP vs
MiniLM with layers dropped (about the same non-zero count; method layerdrop: fine-tuned like the
teacher while distilling its logits);
separability and SNR of SDP vs GMP models; recovery after mask updates. The step-time cost
of each method is bench/steptime.py's.

Jobs run in this process through infra.train.loop, the training step and loop the Ray workers
run (same methods, data batches, optimizer groups, schedule and clipping), without Ray, so
nothing but CPU is needed. A part that is re-run replaces its section of the results file;
the others are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn

from infra import data
from infra.evaluate import evaluation
from infra.models import pretrained
from infra.train import loop
from infra.experiment.config import TrainSpec, load_config
from infra.experiment.preflight import split_spec, task_source
from infra.experiment import paths
from infra.experiment.settings import Settings
from pruning.methods import METHOD_SPECS, PruningMethod, build_method
from pruning.methods.layerdrop import layers_for_sparsity

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.5, 0.7, 0.9)
SPARSEBERT_SPARSITY = 0.95
# SparseBERT's own recipe (METHODS.md section 3): batch 32, lr 3e-5 constant, weight decay 0.01.
SPARSEBERT_RECIPE = {"batch_size": 32, "learning_rate": 3e-5, "weight_decay": 0.01, "warmup_fraction": 0.0,
                     "lr_schedule": "constant"}
SCALES = {  # seeds, max train examples (None: the config's), max eval examples
    "full": {"seeds": (0, 1, 2), "train": None, "eval": None},
    "quick": {"seeds": (0,), "train": 128, "eval": 128},
}


# ---------------------------------------------------------------- setup and one job


@dataclasses.dataclass
class Setup:
    cfg: object
    pretrained: str
    ref: data.DatasetRef
    work: Path
    threads: int

    @property
    def tokenizer(self):
        return pretrained.load_tokenizer(self.pretrained)


def prepare(config: Path, scale: dict, work: Path, threads: int) -> Setup:
    cfg = load_config(config)
    task = cfg.tasks[0]
    model_dir = pretrained.resolve_model_dir(cfg.model.name)
    split = split_spec(task)
    if scale["train"]:
        split = dataclasses.replace(split, max_train_examples=scale["train"],
                                    max_eval_examples=scale["eval"])
    ref = data.prepare(task_source(task), split, pretrained.load_tokenizer(model_dir), cfg.model.max_length,
                       paths.data_dir(work))
    return Setup(cfg, model_dir, ref, work, threads)


def train(setup: Setup, name: str, student: nn.Module, spec: TrainSpec, *, sparsity: float, seed: int,
          teacher: nn.Module | None = None, options: dict | None = None):
    """Train `student` with method `name`; returns the method (its masks and recovery curve)."""
    table = data.read_split(setup.ref, "train")
    method = build_method(name, student, teacher=teacher, total_steps=steps_of(table, spec),
                          final_sparsity=sparsity, options=options or {})
    train_method(method, table, spec, seed=seed)
    return method


def steps_of(table: pa.Table, spec: TrainSpec) -> int:
    """Optimizer steps of `spec.epochs` over `table` (as the Ray workers count them)."""
    return loop.total_steps(spec.epochs, data.num_batches(table, spec.batch_size, drop_last=True))


def train_method(method: PruningMethod, table: pa.Table, spec: TrainSpec, *, seed: int,
                 precision: str = "fp32") -> None:
    """infra.train.loop.fit on one process: `method.module` trained for `steps_of(table, spec)`
    (`precision` as compute.precision; "bf16" falls back to fp32 where it is not native)."""
    per_epoch = data.num_batches(table, spec.batch_size, drop_last=True)
    total = steps_of(table, spec)
    optimizer = loop.make_optimizer(method.module, learning_rate=spec.learning_rate,
                                    weight_decay=spec.weight_decay)
    scheduler = loop.make_scheduler(optimizer, total_steps=total, warmup_fraction=spec.warmup_fraction,
                                    schedule=spec.lr_schedule, min_lr_fraction=spec.min_lr_fraction)
    pad = getattr(method.student.config, "pad_token_id", 0) or 0
    stream = loop.stream_epochs(
        lambda epoch: data.batches(table, spec.batch_size, shuffle=True, seed=seed, epoch=epoch,
                                   pad_token_id=pad, drop_last=True),
        start=0, batches_per_epoch=per_epoch)
    torch.manual_seed(seed)  # dropout
    precision = loop.resolve_precision(precision, next(method.module.parameters()).device)
    loop.fit(method, method.module, stream, steps=total, optimizer=optimizer, scheduler=scheduler,
             max_grad_norm=spec.max_grad_norm, precision=precision)


def evaluate(setup: Setup, model: nn.Module, name: str, keep: bool = False) -> dict[str, float]:
    """infra.evaluate.evaluation.evaluate on the saved model (latency kept minimal: not measured here)."""
    folder = pretrained.save_model(model, setup.tokenizer, paths.models_dir(setup.work) / name)
    metrics = evaluation.evaluate(str(folder), setup.ref, batch_size=64, latency_batch_sizes=(1,),
                                  latency_seq_len=64, latency_repeats=1, latency_threads=setup.threads)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return metrics


def pretrained_model(setup: Setup, seed: int) -> nn.Module:
    """The config's pretrained encoder with a new classifier head seeded by `seed`."""
    return pretrained.load_classifier(setup.pretrained, num_labels=setup.ref.num_labels,
                                  init=setup.cfg.model.init, seed=seed)


# ---------------------------------------------------------------- the accuracy claims


def describe(values: list[float]) -> dict:
    """mean, std (0 for one value), min, max and the values themselves."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def schedule_options(cfg) -> dict:
    """GMP's first grid value of `update_every` in the config, for GMP and SDP alike (a fair pair)."""
    values = cfg.grid.options.get("gmp", {}).get("update_every")
    return {"update_every": values[0]} if values else {}


def run_accuracy(setup: Setup, seeds: tuple[int, ...], log, prune_epochs: float | None = None) -> dict:
    cfg, n_labels = setup.cfg, setup.ref.num_labels
    prune = cfg.prune.model_copy(update={"epochs": prune_epochs}) if prune_epochs else cfg.prune
    shared = schedule_options(cfg)
    log("teacher: fine-tuning the pretrained model")
    teacher_model = pretrained_model(setup, seed=seeds[0])
    train(setup, "dense", teacher_model, cfg.teacher, sparsity=0.0, seed=seeds[0])
    teacher_metrics = evaluate(setup, teacher_model, "teacher", keep=True)
    teacher_dir = str(paths.models_dir(setup.work) / "teacher")
    runs: dict[str, list[dict]] = {}
    small_dense: dict[tuple[int, int], dict] = {}

    def record(key: str, metrics: dict, method=None) -> None:
        summary = method.recovery.summary() if method is not None and method.recovery is not None else {}
        runs.setdefault(key, []).append(metrics | summary)

    for seed in seeds:
        for s in SPARSITIES:
            for name in ("gmp", "sdp"):
                log(f"{name} s={s} seed={seed}")
                student = pretrained.load_classifier(teacher_dir, num_labels=n_labels, seed=seed)
                teacher = pretrained.load_saved(teacher_dir) if METHOD_SPECS[name].needs_teacher else None
                method = train(setup, name, student, prune, sparsity=s, seed=seed, teacher=teacher,
                               options=shared)
                record(f"{name}@{s}", evaluate(setup, student, f"{name}-{s}-{seed}"), method)
            # About the same non-zero count: embeddings stay, encoder layers scale with (1 - s).
            keep = layers_for_sparsity(teacher_model.config.num_hidden_layers, s)
            if (keep, seed) not in small_dense:  # two sparsities may round to one depth
                log(f"layerdrop: {keep} layers, seed={seed}")
                # From the pretrained weights, so the teacher's budget; layers spread to the
                # last one and logits distilled (the method's defaults; see its docstring).
                method = train(setup, "layerdrop", pretrained_model(setup, seed=seed), cfg.teacher,
                               sparsity=s, seed=seed, teacher=pretrained.load_saved(teacher_dir))
                small_dense[keep, seed] = (evaluate(setup, method.student, f"small-{keep}-{seed}")
                                           | {"layers": keep})
            record(f"small_dense@{s}", small_dense[keep, seed])
        log(f"sparsebert s={SPARSEBERT_SPARSITY} seed={seed}")
        student = pretrained_model(setup, seed=seed)
        spec = prune.model_copy(update=SPARSEBERT_RECIPE)
        method = train(setup, "sparsebert", student, spec, sparsity=SPARSEBERT_SPARSITY, seed=seed,
                       teacher=pretrained.load_saved(teacher_dir))
        record(f"sparsebert@{SPARSEBERT_SPARSITY}", evaluate(setup, student, f"sb-{seed}"), method)
    shutil.rmtree(teacher_dir, ignore_errors=True)
    return summarise(teacher_metrics, runs)


def _metric(runs: list[dict], key: str) -> dict | None:
    values = [r[key] for r in runs if key in r and not math.isnan(r[key])]
    return describe(values) if values else None


def summarise(teacher: dict, runs: dict[str, list[dict]]) -> dict:
    keys = ("dev_accuracy", "test_accuracy", "encoder_sparsity", "model_nonzero_params", "weight_snr",
            "separability_fisher", "separability_silhouette", "recovery_jump", "recovery_residual",
            "recovery_steps", "layers")
    table = {run: {k: _metric(rs, k) for k in keys if _metric(rs, k)} for run, rs in runs.items()}
    out = {"teacher": {k: teacher[k] for k in keys if k in teacher}, "runs": table, "claims": {}}
    claims = out["claims"]

    def mean(run: str, key: str) -> float:
        return table[run][key]["mean"]

    for s in SPARSITIES:
        gmp, sdp, small = f"gmp@{s}", f"sdp@{s}", f"small_dense@{s}"
        delta = mean(sdp, "test_accuracy") - mean(gmp, "test_accuracy")
        claims[f"sdp_beats_gmp@{s}"] = {"delta_test_acc": delta, "holds": delta > 0}
        delta = mean(sdp, "test_accuracy") - mean(small, "test_accuracy")
        claims[f"sdp_beats_small_dense@{s}"] = {
            "delta_test_acc": delta, "holds": delta > 0, "small_dense_layers": mean(small, "layers"),
            "nonzero_sdp": mean(sdp, "model_nonzero_params"),
            "nonzero_small": mean(small, "model_nonzero_params")}
        for key in ("separability_fisher", "separability_silhouette", "weight_snr"):
            delta = mean(sdp, key) - mean(gmp, key)
            claims[f"sdp_higher_{key}@{s}"] = {"delta": delta, "holds": delta > 0}
        if "recovery_residual" in table[sdp] and "recovery_residual" in table[gmp]:
            delta = mean(sdp, "recovery_residual") - mean(gmp, "recovery_residual")
            claims[f"sdp_recovers_faster@{s}"] = {
                "delta_residual_loss": delta, "holds": delta < 0,
                "steps_sdp": mean(sdp, "recovery_steps"), "steps_gmp": mean(gmp, "recovery_steps")}
    sb = f"sparsebert@{SPARSEBERT_SPARSITY}"
    drop = (teacher["test_accuracy"] - mean(sb, "test_accuracy")) * 100
    # The paper's gap is a GLUE average (METHODS.md: 76.5 -> 75.1); "holds" means we lose no more.
    claims[sb + "_vs_teacher"] = {"points_lost_test": drop, "paper_points_lost_glue_avg": 1.4,
                                  "holds": drop <= 1.4}
    return out


# ---------------------------------------------------------------- report


def markdown(results: dict) -> str:
    lines = [f"# Claims of issue 3 ({results.get('scale', '?')} scale)", "",
             "Step-time costs: bench/steptime.py (bench/results/steptime.md).", ""]
    if "accuracy" not in results:
        lines += ["The accuracy claims (SDP vs GMP, SparseBERT vs teacher, vs a smaller dense model)",
                  "were not run in this file: `python -m bench.claims --only accuracy`.", ""]
    acc = results.get("accuracy")
    if acc:
        lines += ["## Accuracy and analysis (mean ± std over seeds, test split)", "",
                  "| run | test acc | dev acc | Fisher | silhouette | SNR | recovery residual |",
                  "|---|---|---|---|---|---|---|"]
        t = acc["teacher"]
        lines.append(f"| teacher | {t['test_accuracy']:.4f} | {t['dev_accuracy']:.4f} | "
                     f"{t.get('separability_fisher', math.nan):.3f} | "
                     f"{t.get('separability_silhouette', math.nan):.3f} | {t['weight_snr']:.3f} | |")
        for run, m in acc["runs"].items():
            cell = lambda k: f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" if k in m else ""  # noqa: E731
            lines.append(f"| {run} | {cell('test_accuracy')} | {cell('dev_accuracy')} | "
                         f"{cell('separability_fisher')} | {cell('separability_silhouette')} | "
                         f"{cell('weight_snr')} | {cell('recovery_residual')} |")
        lines += ["", "| claim | holds | numbers |", "|---|---|---|"]
        for claim, v in acc["claims"].items():
            nums = ", ".join(f"{k} {x:.4g}" for k, x in v.items() if k != "holds")
            lines.append(f"| {claim} | {'yes' if v['holds'] else 'no'} | {nums} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict, text: str, log) -> None:
    """`out` (JSON, written atomically) and its markdown twin; the markdown is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(out)
    out.with_suffix(".md").write_text(text)
    log(f"wrote {out} and {out.with_suffix('.md')}")
    print(text)


def stamped_log(started: float) -> Callable[[str], None]:
    """A progress printer: each line prefixed with the seconds since `started` (perf_counter)."""

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {text}", flush=True)

    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="scale",
                        help="same as --scale quick: 1 seed, a few steps per job")
    parser.add_argument("--only", choices=("all", "accuracy"), default="all")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/demo.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prune-epochs", type=float, help="epochs of each pruning job (default: config's)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/claims[-quick].json)")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    torch.set_num_threads(args.threads)
    name = "claims.json" if args.scale == "full" else f"claims-{args.scale}.json"
    out = args.out or ROOT / "bench/results" / name
    work = paths.bench_dir(Settings.from_env().home)
    started = time.perf_counter()

    log = stamped_log(started)

    setup = prepare(args.config, scale, work, args.threads)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.pop("step_time", None)  # measured by bench/steptime.py since issue 14
    results |= {"scale": args.scale, "config": str(args.config.relative_to(ROOT)
                                                   if args.config.is_relative_to(ROOT) else args.config),
                "seeds": list(scale["seeds"]), "data_hash": setup.ref.content_hash,
                "sizes": dict(setup.ref.sizes)}
    if args.only in ("all", "accuracy"):
        results["accuracy"] = run_accuracy(setup, scale["seeds"], log, args.prune_epochs)
        results["accuracy"]["prune_epochs"] = args.prune_epochs or setup.cfg.prune.epochs
        results["accuracy"]["schedule_options"] = schedule_options(setup.cfg)
        results["accuracy"]["command"] = "python -m bench.claims " + " ".join(argv or [])
    write_results(out, results, markdown(results), log)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
