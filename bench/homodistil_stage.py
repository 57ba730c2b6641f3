"""HomoDistil's task-agnostic stage on the embedded default (configs/homodistil.yaml: all-MiniLM-L6-v2,
the task's texts plus packaged IMDB reviews): short runs (issue 14), written to
bench/results/homodistil_<part>.json and .md.

    python -m bench.homodistil_stage --part stage-time --steps 24   # homodistil_stage_time.json
    python -m bench.homodistil_stage --part prediction --steps 16   # homodistil_prediction.json

stage-time: the stage at a parameter budget (default 50% kept) for the same steps and batches, with
the student cut at every width update (slice_in_run, the default) and masked throughout (as before
issue 14); steps interleaved (one of each in turn), so a busy moment on a shared machine slows both;
dropout off in both, so the two final students can be compared (max |difference| of their outputs).
prediction: the same short stage with the old prediction term (a softmax over the mean-pooled state's
features, KL at T = 1), the new default without an MLM head ("pooled_cosine") and none; per variant
the loss curve and, on held-out batches, what the student ends at: the hidden-state MSE to the teacher
(through its projections, as the loss), the pooled cosine distance and the attention KL.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from bench import claims
from bench.homodistil import prepare_corpus
from infra.data import corpus
from infra import data
from infra.experiment import paths
from infra.experiment.settings import Settings
from infra.models import pretrained
from infra.train import loop
from pruning import losses
from pruning.features import mean_pool
from pruning.methods import build_distiller
from pruning.methods.homodistil.prediction import PredictionTerm

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = 4  # batches after the training ones, for the end-of-run comparison


class FeatureSoftmaxTerm(PredictionTerm):
    """The prediction term issue 14 removed, for this comparison only: KL of softmaxes over the
    features of the mean-pooled last states (student after its projection)."""

    def losses(self, student: dict, t_hidden: tuple[Tensor, ...], attention_mask: Tensor,
               chosen: Tensor | None, input_ids: Tensor) -> dict[str, Tensor]:
        s, t = (mean_pool(h, attention_mask) for h in (student["hidden_states"][-1], t_hidden[-1]))
        return {"prediction": losses.kl_logits(s, t, self.temperature)}


def distiller(setup: claims.Setup, budget: float, steps: int, **options: object):
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


def step(run, batch: dict[str, Tensor], index: int) -> tuple[tuple[float, float], dict[str, float]]:
    """One product step of `run` (method, optimizer, scheduler, max_grad_norm): (wall seconds, this
    thread's CPU seconds: all of the step's compute with one torch thread) and its logs."""
    method, optimizer, scheduler, max_grad_norm = run
    start, cpu = time.perf_counter(), time.thread_time()
    _, logs = loop.train_step(method, method.module, batch, optimizer, scheduler, step=index,
                              max_grad_norm=max_grad_norm)
    return (time.perf_counter() - start, time.thread_time() - cpu), logs


def stage_time(setup: claims.Setup, batches: list[dict[str, Tensor]], steps: int, budget: float, log) -> dict:
    runs = {"sliced": distiller(setup, budget, steps),
            "masked": distiller(setup, budget, steps, slice_in_run=False)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for i in range(steps):
        for name, run in runs.items():
            times[name].append(step(run, batches[i], i)[0])
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


@torch.no_grad()
def gaps(method, batches: list[dict[str, Tensor]]) -> dict[str, float]:
    """What the student ends at on held-out batches, its mean over them."""
    method.module.eval()
    found: dict[str, list[float]] = {"hidden_mse": [], "pooled_cosine_distance": [], "attention_kl": []}
    for batch in batches:
        inputs = _inputs(batch)
        out = method.module(**inputs)
        t_hidden = method.teacher(**inputs, output_hidden_states=True).hidden_states
        mask = inputs["attention_mask"]
        found["hidden_mse"].append(float(losses.hidden_states_mse(tuple(out["hidden_states"]), t_hidden)))
        pooled = (mean_pool(h, mask) for h in (out["hidden_states"][-1], t_hidden[-1]))
        found["pooled_cosine_distance"].append(float(losses.cosine_loss(*pooled)))
        _, logs = method.loss(method.module, inputs)
        found["attention_kl"].append(logs["attention_loss"])
    method.module.train()
    return {k: statistics.mean(v) for k, v in found.items()}


def prediction(setup: claims.Setup, batches: list[dict[str, Tensor]], steps: int, budget: float, log) -> dict:
    results = {}
    for variant in ("feature_softmax_old", "pooled_cosine", "none"):
        run = distiller(setup, budget, steps, prediction="none" if variant == "none" else "pooled_cosine")
        method = run[0]
        if variant == "feature_softmax_old":
            method.prediction = FeatureSoftmaxTerm("none", teacher_head=None, mask_token_id=None,
                                                   vocab_size=1, probability=0.15, temperature=1.0, seed=0)
        curve = [step(run, batches[i], i)[1] for i in range(steps)]
        results[variant] = {"end": gaps(method, batches[steps:steps + HELD_OUT]),
                            "hidden_loss_curve": [round(c["hidden_loss"], 5) for c in curve],
                            "prediction_loss_curve": [round(c["prediction_loss"], 6) for c in curve]}
        log(f"prediction {variant}: {results[variant]['end']}")
    return results


def markdown(results: dict) -> str:
    lines = [f"# HomoDistil's task-agnostic stage (issue 14), {results['model']}", "",
             f"Command: `{results['command']}` (torch threads: {results['threads']}; batches of "
             f"{results['batch_size']} x up to {results['max_length']} tokens; dropout off).", ""]
    if "stage_time" in results:
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
    if "prediction" in results:
        steps = len(next(iter(results["prediction"].values()))["hidden_loss_curve"])
        lines += ["## Prediction term (no MLM head): old vs new default vs none", "",
                  f"After {steps} steps, on {HELD_OUT} held-out batches (the prediction term's own value: "
                  "mean of its last 6 training steps).", "",
                  "| variant | prediction term | hidden MSE to teacher | pooled cosine distance | attention KL |",
                  "|---|---|---|---|---|"]
        for name, r in results["prediction"].items():
            e, term = r["end"], statistics.mean(r["prediction_loss_curve"][-6:])
            lines.append(f"| {name} | {term:.4f} | {e['hidden_mse']:.4f} | {e['pooled_cosine_distance']:.5f} | "
                         f"{e['attention_kl']:.5f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.homodistil_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "stage-time", "prediction"), default="all")
    parser.add_argument("--steps", type=int, default=48, help="optimizer steps per run")
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of the parameters removed")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/homodistil.yaml")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the step's)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/homodistil_<part>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    log = claims.stamped_log(started)

    work = paths.bench_dir(Settings.from_env().home, "homodistil")
    setup = claims.prepare(args.config, {"train": 512, "eval": 64}, work, args.threads)
    spec = setup.cfg.distil.train
    text = prepare_corpus(setup, (args.steps + HELD_OUT) * spec.batch_size)
    table = corpus.read_corpus(text.path)
    pad = pretrained.load_tokenizer(setup.pretrained).pad_token_id or 0
    batches = list(data.batches(table, spec.batch_size, shuffle=True, seed=0, pad_token_id=pad, drop_last=True))
    if len(batches) < args.steps + HELD_OUT:
        raise SystemExit(f"the corpus gives {len(batches)} batches; lower --steps")
    results = {"model": setup.cfg.model.name, "threads": args.threads, "batch_size": spec.batch_size,
               "max_length": setup.cfg.model.max_length,
               "command": "python -m bench.homodistil_stage " + " ".join(argv or [])}
    if args.part in ("all", "stage-time"):
        results["stage_time"] = stage_time(setup, batches, args.steps, args.budget, log)
    if args.part in ("all", "prediction"):
        results["prediction"] = prediction(setup, batches, args.steps, args.budget, log)
    results["wall_s"] = time.perf_counter() - started
    out = args.out or ROOT / "bench/results" / f"homodistil_{args.part.replace('-', '_')}.json"
    claims.write_results(out, results, markdown(results), log)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
