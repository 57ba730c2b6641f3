"""What the benchmarks share: the config's data and model prepared as a job prepares them, a
stamped progress printer and the results writer. The benchmarks time steps through
infra.train.loop, the training step the Ray workers run; accuracy comes from the pipeline
(configs/claims/, flows/benchmark_refresh.py), not from here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from infra import data
from infra.data import corpus
from infra.experiment import paths
from infra.experiment.config import ExperimentConfig, load_config
from infra.experiment.preflight import split_spec, task_source
from infra.models import pretrained


@dataclasses.dataclass
class Setup:
    """The config, its pretrained model's folder, its first task's prepared data and the scratch."""

    cfg: ExperimentConfig
    pretrained: str
    ref: data.DatasetRef
    work: Path
    threads: int

    @property
    def tokenizer(self):
        return pretrained.load_tokenizer(self.pretrained)


def prepare(config: Path, work: Path, threads: int, *, max_train: int | None = None,
            max_eval: int | None = None) -> Setup:
    """The first task of `config` tokenised into `work`; `max_train` / `max_eval` (dev and test
    each) cap its split where given, else the config's caps hold."""
    cfg = load_config(config)
    task = cfg.tasks[0]
    model_dir = pretrained.resolve_model_dir(cfg.model.name)
    caps = {k: v for k, v in (("max_train_examples", max_train), ("max_eval_examples", max_eval)) if v}
    split = dataclasses.replace(split_spec(task), **caps)
    ref = data.prepare(task_source(task), split, pretrained.load_tokenizer(model_dir), cfg.model.max_length,
                       paths.data_dir(work))
    return Setup(cfg, model_dir, ref, work, threads)


def prepare_corpus(setup: Setup, max_texts: int | None) -> corpus.CorpusRef:
    """The distillation text as the flow builds it (tasks/prepare.py), tokenised for the model."""
    spec = setup.cfg.distil
    own = corpus.task_texts(data.read_split(setup.ref, "train")) if spec.task_texts else []
    texts = corpus.gather(spec.corpus, own, max_texts or spec.max_texts)
    return corpus.prepare_corpus(texts, setup.tokenizer, setup.cfg.model.max_length, setup.work / "corpus",
                                 "bench")


def pretrained_model(setup: Setup, seed: int) -> nn.Module:
    """The config's pretrained encoder with a new classifier head seeded by `seed`."""
    return pretrained.load_classifier(setup.pretrained, num_labels=setup.ref.num_labels,
                                      init=setup.cfg.model.init, seed=seed)


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
