"""The benchmark task registry: GLUE and XGLUE's classification tasks, as data.

Each entry says what the hub's dataset (nyu-mll/glue, microsoft/xglue) holds: the text
columns, the label column and its class names (index i = class i, as the hub stores it),
regression or classification, the official metrics, and which file is the training set
and which are the evaluation sets. A local copy must use the same layout: one folder per
config with `<split>.{csv,tsv,parquet,jsonl}` or the hub snapshot's `<split>-*.parquet`.

Evaluation sets are named by the metric prefix they are logged under. GLUE hides its test
labels, so this project carves `dev` out of the training set (model selection, promotion)
and reports on GLUE's own validation sets: `test`, and `test_mm` for MNLI-mismatched.
XGLUE released its test labels (2020-11-26) and trains on English only: `dev`/`test` are
its English validation/test sets, `dev_<lang>`/`test_<lang>` those of each target
language, and evaluation adds `dev_avg_*`/`test_avg_*`, the mean over languages
(zero-shot cross-lingual transfer; promote on the average with gate metric `avg_score`).
XGLUE's data are for non-commercial research only (its terms of use).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Benchmark = Literal["glue", "xglue"]
MetricName = Literal["accuracy", "f1", "matthews_correlation", "pearson", "spearman"]

HUB_IDS: dict[str, str] = {"glue": "nyu-mll/glue", "xglue": "microsoft/xglue"}

# What a plain task (packaged or file data, no registry entry) reports, and what its score averages.
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "f1_macro")
CLASSIFICATION_SCORE: tuple[str, ...] = ("accuracy",)


class BenchmarkError(ValueError):
    """An unknown benchmark task or language; the message lists the known ones."""


@dataclass(frozen=True)
class BenchmarkTask:
    benchmark: Benchmark
    name: str  # how configs name it (`subset`), e.g. "mrpc", "pawsx"
    hub_config: str  # the config name on the hub, e.g. "paws-x"
    text_columns: tuple[str, ...]  # 1 = single sentence, 2 = pair, 3 = pair with a joined 2nd part
    label_column: str
    label_names: tuple[str, ...]  # empty for regression
    metrics: tuple[MetricName, ...]
    # The headline score GLUE's leaderboard reports: the mean of these metrics.
    score: tuple[MetricName, ...]
    train_split: str = "train"
    eval_splits: tuple[tuple[str, str], ...] = (("test", "validation"),)  # (metric prefix, file split)
    languages: tuple[str, ...] = ()  # XGLUE: English first (the training language)
    note: str = ""

    @property
    def split_languages(self) -> tuple[tuple[str, str], ...]:
        """(metric prefix, language) of each evaluation set of a cross-lingual task."""
        if not self.languages:
            return ()
        return tuple((prefix, split.rsplit(".", 1)[-1]) for prefix, split in self.eval_splits)

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.name}"


def _glue(name: str, columns: tuple[str, ...], labels: tuple[str, ...], metrics: tuple[MetricName, ...],
          score: tuple[MetricName, ...] | None = None, **kw) -> BenchmarkTask:
    return BenchmarkTask("glue", name, name, columns, "label", labels, metrics, score or metrics[:1], **kw)


def _xglue(name: str, hub_config: str, columns: tuple[str, ...], label_column: str,
           labels: tuple[str, ...], languages: tuple[str, ...], note: str = "") -> BenchmarkTask:
    evals = tuple((prefix if lang == "en" else f"{prefix}_{lang}", f"{split}.{lang}")
                  for lang in languages for prefix, split in (("dev", "validation"), ("test", "test")))
    return BenchmarkTask("xglue", name, hub_config, columns, label_column, labels, ("accuracy",),
                         ("accuracy",), eval_splits=evals, languages=languages, note=note)


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, BenchmarkTask] = {t.key: t for t in (
    _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation", "accuracy")),
    _glue("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
    _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
          ("accuracy", "f1")),
    _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
          ("accuracy", "f1")),
    _glue("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearman"), ("pearson", "spearman")),
    _glue("mnli", ("premise", "hypothesis"), _NLI3, ("accuracy",),
          eval_splits=(("test", "validation_matched"), ("test_mm", "validation_mismatched"))),
    _glue("qnli", ("question", "sentence"), _NLI2, ("accuracy",)),
    _glue("rte", ("sentence1", "sentence2"), _NLI2, ("accuracy",)),
    _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
    _xglue("xnli", "xnli", ("premise", "hypothesis"), "label", _NLI3,
           ("en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")),
    _xglue("pawsx", "paws-x", ("sentence1", "sentence2"), "label", ("different", "same"),
           ("en", "de", "es", "fr")),
    _xglue("nc", "nc", ("news_title", "news_body"), "news_category",
           ("foodanddrink", "sports", "travel", "finance", "lifestyle", "news", "entertainment",
            "health", "video", "autos"), ("en", "de", "es", "fr", "ru")),
    _xglue("qadsm", "qadsm", ("query", "ad_title", "ad_description"), "relevance_label", ("Bad", "Good"),
           ("en", "de", "fr")),
    # "relavance_label" is the hub's own spelling.
    _xglue("wpr", "wpr", ("query", "web_page_title", "web_page_snippet"), "relavance_label",
           ("Bad", "Fair", "Good", "Excellent", "Perfect"), ("en", "de", "es", "fr", "it", "pt", "zh"),
           note="XGLUE's official WPR metric is nDCG over each query's pages; this project reports "
                "per-pair accuracy only"),
    _xglue("qam", "qam", ("question", "answer"), "label", ("False", "True"), ("en", "de", "fr")),
)}


def find_task(benchmark: str, name: str) -> BenchmarkTask:
    """The registry entry `benchmark/name`; BenchmarkError lists the known names."""
    key = f"{benchmark}/{name.lower().replace('-', '')}"
    if key not in TASKS:
        known = sorted(t.name for t in TASKS.values() if t.benchmark == benchmark)
        raise BenchmarkError(f"unknown {benchmark} task {name!r}; known: {known}")
    return TASKS[key]


def with_languages(task: BenchmarkTask, languages: tuple[str, ...] | None) -> BenchmarkTask:
    """The task evaluated on a subset of its languages (English, the training language, always kept)."""
    if languages is None:
        return task
    unknown = sorted(set(languages) - set(task.languages))
    if unknown:
        raise BenchmarkError(f"{task.key}: language(s) {unknown} not in the benchmark; "
                             f"known: {list(task.languages)}")
    keep = tuple(lang for lang in task.languages if lang == "en" or lang in languages)
    evals = tuple(e for e, (_, lang) in zip(task.eval_splits, task.split_languages) if lang in keep)
    return replace(task, languages=keep, eval_splits=evals)
