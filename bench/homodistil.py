"""Measure HomoDistil's accuracy against parameter count (issue 4) on the embedded default
(configs/homodistil.yaml: all-MiniLM-L6-v2 on rotten_tomatoes, distilled on the task's texts
plus packaged IMDB reviews) and write bench/results/homodistil[-quick].json and .md.

    python -m bench.homodistil --quick            # smoke run: 1 seed, a few steps per stage
    python -m bench.homodistil                    # 3 seeds at 50% of the parameters
    python -m bench.homodistil --budgets 0.5 0.25 # more budgets (about 25 min each per seed)

Per parameter budget (fraction of the model's parameters kept, embeddings included) and seed:
- homodistil: the homotopic path (prune a little at a time while distilling), then task
  fine-tuning with logit distillation from the fine-tuned teacher (the method's defaults);
- prune_then_distil: the same stages with path "prune_first": groups scored at full width,
  cut to the target widths at once, then distilled (same losses, corpus and steps);
- dense_distil: path "from_scratch": a randomly initialised dense model of the same shape,
  distilled the same way (TinyBERT-style general distillation, no homotopic path);
- gmp_equal_nonzero: GMP from the teacher with the word embeddings pruned too, at the
  sparsity that leaves the same non-zero count as the HomoDistil student.
Jobs run in this process through bench.claims.train_method (infra.train.loop, without Ray).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench import claims
from infra.data import corpus
from infra import data
from infra.models import pretrained
from infra.experiment import paths
from infra.experiment.settings import Settings
from pruning.methods import build_distiller
from pruning.targets import encoder_linear_weights, word_embedding_weight

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"homodistil": "homotopic", "prune_then_distil": "prune_first", "dense_distil": "from_scratch"}
SCALES = {  # seeds; max train / eval examples (None: the config's); corpus texts; distil epochs (None: config's)
    "full": {"seeds": (0, 1, 2), "train": None, "eval": None, "texts": None, "distil_epochs": None},
    "quick": {"seeds": (0,), "train": 128, "eval": 128, "texts": 128, "distil_epochs": None},
}


def prepare_corpus(setup: claims.Setup, max_texts: int | None) -> corpus.CorpusRef:
    """The distillation text as the flow builds it (tasks/prepare.py), tokenised for the model."""
    spec = setup.cfg.distil
    own = corpus.task_texts(data.read_split(setup.ref, "train")) if spec.task_texts else []
    texts = corpus.gather(spec.corpus, own, max_texts or spec.max_texts)
    return corpus.prepare_corpus(texts, setup.tokenizer, setup.cfg.model.max_length, setup.work / "corpus",
                                 "bench")


def distil(setup: claims.Setup, text: corpus.CorpusRef, budget: float, seed: int, path: str,
           epochs: float | None) -> str:
    """Stage a with `path`; returns the folder of the exported compact encoder."""
    spec = setup.cfg.distil.train
    if epochs:
        spec = spec.model_copy(update={"epochs": epochs})
    table = corpus.read_corpus(text.path)
    student = pretrained.load_encoder(setup.pretrained, seed=seed)
    teacher = pretrained.load_encoder(setup.pretrained, seed=seed)
    options = {k: v[0] for k, v in setup.cfg.grid.options.get("homodistil", {}).items()} | {"path": path}
    method = build_distiller("homodistil", student, teacher=teacher, total_steps=claims.steps_of(table, spec),
                             final_sparsity=budget, options=options)
    claims.train_method(method, table, spec, seed=seed)
    folder = paths.models_dir(setup.work) / f"distilled-{path}-{budget}-{seed}"
    return str(pretrained.save_model(method.export(), setup.tokenizer, folder))


def gmp_sparsity_for(teacher_dir: str, nonzero: float) -> float:
    """The sparsity of GMP with `prune_embeddings` that leaves `nonzero` parameters."""
    model = pretrained.load_saved(teacher_dir)
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(p.numel() for p in (encoder_linear_weights(model) | word_embedding_weight(model)).values())
    sparsity = (total - nonzero) / prunable
    if not 0 < sparsity < 1:
        raise ValueError(f"GMP cannot reach {nonzero:.0f} non-zero parameters of {total} "
                         f"({prunable} prunable)")
    return sparsity


def run(setup: claims.Setup, budgets: list[float], seeds: tuple[int, ...], text: corpus.CorpusRef,
        distil_epochs: float | None, log) -> dict:
    cfg, n_labels = setup.cfg, setup.ref.num_labels
    log("teacher: fine-tuning the pretrained model")
    teacher = claims.pretrained_model(setup, seed=seeds[0])
    claims.train(setup, "dense", teacher, cfg.teacher, sparsity=0.0, seed=seeds[0])
    teacher_metrics = claims.evaluate(setup, teacher, "teacher", keep=True)
    teacher_dir = str(paths.models_dir(setup.work) / "teacher")
    runs: dict[str, list[dict]] = {}
    gmp_options = {k: v[0] for k, v in cfg.grid.options.get("gmp", {}).items()} | {"prune_embeddings": True}
    for budget in budgets:
        for seed in seeds:
            for variant, path in PATHS.items():
                log(f"{variant} budget={budget} seed={seed}: task-agnostic stage")
                start = time.perf_counter()
                folder = distil(setup, text, budget, seed, path, distil_epochs)
                distil_s = time.perf_counter() - start
                log(f"{variant} budget={budget} seed={seed}: fine-tuning")
                student = pretrained.load_classifier(folder, num_labels=n_labels, seed=seed)
                claims.train(setup, "homodistil", student, cfg.prune, sparsity=budget, seed=seed,
                             teacher=pretrained.load_saved(teacher_dir))
                metrics = claims.evaluate(setup, student, f"{variant}-{budget}-{seed}")
                runs.setdefault(f"{variant}@{budget}", []).append(metrics | {"distil_s": distil_s})
            nonzero = runs[f"homodistil@{budget}"][-1]["model_nonzero_params"]
            sparsity = gmp_sparsity_for(teacher_dir, nonzero)
            log(f"gmp_equal_nonzero budget={budget} seed={seed}: sparsity {sparsity:.4f}")
            student = pretrained.load_classifier(teacher_dir, num_labels=n_labels, seed=seed)
            claims.train(setup, "gmp", student, cfg.prune, sparsity=sparsity, seed=seed, options=gmp_options)
            metrics = claims.evaluate(setup, student, f"gmp-{budget}-{seed}")
            runs.setdefault(f"gmp_equal_nonzero@{budget}", []).append(metrics | {"gmp_sparsity": sparsity})
    return summarise(teacher_metrics, runs, budgets)


KEYS = ("test_accuracy", "dev_accuracy", "model_nonzero_params", "size_mb", "distil_s", "gmp_sparsity")


def summarise(teacher: dict, runs: dict[str, list[dict]], budgets: list[float]) -> dict:
    table = {run: {k: claims.describe([r[k] for r in rs]) for k in KEYS if all(k in r for r in rs)}
             for run, rs in runs.items()}
    comparisons = {}
    for budget in budgets:
        hd = table[f"homodistil@{budget}"]["test_accuracy"]["mean"]
        for other in ("prune_then_distil", "dense_distil", "gmp_equal_nonzero"):
            delta = hd - table[f"{other}@{budget}"]["test_accuracy"]["mean"]
            comparisons[f"homodistil_beats_{other}@{budget}"] = {"delta_test_acc": delta, "holds": delta > 0}
    return {"teacher": {k: teacher[k] for k in KEYS if k in teacher}, "runs": table,
            "comparisons": comparisons}


def markdown(results: dict) -> str:
    lines = [f"# HomoDistil vs its baselines ({results['scale']} scale, seeds {results['seeds']})", "",
             "| run | kept params | test acc | dev acc | non-zero params |", "|---|---|---|---|---|"]
    t = results["teacher"]
    lines.append(f"| teacher | 100% | {t['test_accuracy']:.4f} | {t['dev_accuracy']:.4f} | "
                 f"{t['model_nonzero_params']:.0f} |")
    for run, m in results["runs"].items():
        name, budget = run.split("@")
        cell = lambda k: f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}"  # noqa: E731
        lines.append(f"| {name} | {1 - float(budget):.0%} | {cell('test_accuracy')} | {cell('dev_accuracy')} | "
                     f"{m['model_nonzero_params']['mean']:.0f} |")
    lines += ["", "| comparison | holds | test acc delta |", "|---|---|---|"]
    lines += [f"| {k} | {'yes' if v['holds'] else 'no'} | {v['delta_test_acc']:+.4f} |"
              for k, v in results["comparisons"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.homodistil", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="scale",
                        help="same as --scale quick: 1 seed, 128 examples and texts")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/homodistil.yaml")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5],
                        help="fractions of the parameters removed (0.5: half kept)")
    parser.add_argument("--distil-epochs", type=float, help="epochs of the task-agnostic stage (default: config's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/homodistil[-quick].json)")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    torch.set_num_threads(args.threads)
    out = args.out or ROOT / "bench/results" / ("homodistil.json" if args.scale == "full"
                                                else f"homodistil-{args.scale}.json")
    started = time.perf_counter()

    log = claims.stamped_log(started)

    work = paths.bench_dir(Settings.from_env().home, "homodistil")
    setup = claims.prepare(args.config, scale, work, args.threads)
    text = prepare_corpus(setup, scale["texts"])
    epochs = args.distil_epochs or scale["distil_epochs"]
    results = {"scale": args.scale, "seeds": list(scale["seeds"]), "budgets": args.budgets,
               "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
               "data_hash": setup.ref.content_hash, "corpus_hash": text.content_hash, "corpus_texts": text.size,
               "distil_epochs": epochs or setup.cfg.distil.train.epochs, "prune_epochs": setup.cfg.prune.epochs,
               "command": "python -m bench.homodistil " + " ".join(argv or [])}
    results |= run(setup, args.budgets, scale["seeds"], text, epochs, log)
    results["wall_s"] = time.perf_counter() - started
    claims.write_results(out, results, markdown(results), log)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
