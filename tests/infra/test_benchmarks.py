"""GLUE / XGLUE: the registry, each task on its hub-layout fixture, config and evaluation. Offline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # noqa: E402

from infra.data import benchmarks
from infra import data
from infra.evaluate import evaluation
from infra.models import pretrained  # noqa: E402
from infra.experiment.config import ConfigError, TaskSpec, parse_config  # noqa: E402
from infra.experiment.preflight import split_spec, task_source  # noqa: E402
from tests.fixtures.regenerate import regenerate  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GLUE, XGLUE = FIXTURES / "glue", FIXTURES / "xglue"


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab=str(FIXTURES / "tiny-bert" / "vocab.txt"))


def plan(dev_fraction: float) -> data.SplitPlan:
    """Dev carved out of a benchmark's training set; its own validation sets are the tests."""
    return data.SplitPlan(dev_fraction, 0.0, seed=13, max_train_examples=None, max_eval_examples=None)


def spec(subset: str, source: str = "glue", **kw) -> TaskSpec:
    path = GLUE if source == "glue" else XGLUE
    return TaskSpec(name=subset, source=source, subset=subset, path=str(path), **kw)


# ---------------------------------------------------------------- the registry


def test_registry_covers_glue_and_xglue_classification() -> None:
    names = {(t.benchmark, t.name) for t in benchmarks.TASKS.values()}
    glue = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    xglue = {"xnli", "pawsx", "nc", "qadsm", "wpr", "qam"}
    assert names == {("glue", n) for n in glue} | {("xglue", n) for n in xglue}


@pytest.mark.parametrize("task", list(benchmarks.TASKS.values()), ids=lambda t: t.key)
def test_every_task_definition_is_complete(task: benchmarks.BenchmarkTask) -> None:
    assert 1 <= len(task.text_columns) <= 3 and task.label_column
    assert set(task.score) <= set(task.metrics) and task.metrics
    names = [p for p, _ in task.eval_splits]
    assert "test" in names and len(set(names)) == len(names)
    if task.benchmark == "xglue":  # English dev/test first, then every target language's
        assert task.languages[0] == "en" and names[:2] == ["dev", "test"]
        assert task.split_languages == tuple((f"{p}_{lang}" if lang != "en" else p, lang)
                                             for lang in task.languages for p in ("dev", "test"))
        assert [s for _, s in task.eval_splits][-1] == f"test.{task.languages[-1]}"
    assert task.num_labels == (1 if task.is_regression else len(task.label_names))


def test_official_metrics_and_combined_scores() -> None:
    t = {key: benchmarks.TASKS[key] for key in benchmarks.TASKS}
    assert t["glue/cola"].score == ("matthews_correlation",)
    assert t["glue/mrpc"].score == t["glue/qqp"].score == ("accuracy", "f1")
    assert t["glue/stsb"].is_regression and t["glue/stsb"].score == ("pearson", "spearman")
    assert t["glue/mnli"].eval_splits == (("test", "validation_matched"), ("test_mm", "validation_mismatched"))
    assert t["glue/mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert t["glue/wnli"].label_names[1] == "entailment"  # WNLI's order differs from RTE's
    assert t["xglue/pawsx"].hub_config == "paws-x" and len(t["xglue/xnli"].languages) == 15
    assert t["xglue/wpr"].label_column == "relavance_label" and "nDCG" in t["xglue/wpr"].note


def test_unknown_task_and_language_are_named() -> None:
    with pytest.raises(benchmarks.BenchmarkError, match="unknown glue task 'boolq'.*mrpc"):
        benchmarks.find_task("glue", "boolq")
    assert benchmarks.find_task("xglue", "PAWS-X").name == "pawsx"
    pawsx = benchmarks.find_task("xglue", "pawsx")
    with pytest.raises(benchmarks.BenchmarkError, match=r"\['ja'\] not in"):
        benchmarks.with_languages(pawsx, ("ja",))
    assert benchmarks.with_languages(pawsx, ("de",)).eval_splits == (
        ("dev", "validation.en"), ("test", "test.en"), ("dev_de", "validation.de"), ("test_de", "test.de"))


# ---------------------------------------------------------------- each task on its fixture


def test_benchmark_fixtures_are_reproducible(tmp_path: Path) -> None:
    written = regenerate("make_benchmark_fixtures.py", tmp_path)
    assert len(written) == 14 and all((FIXTURES / rel).stat().st_size < 4096 for rel in written)


CASES = {  # subset -> (raw file, text column, pair column, label kind, eval splits -> file)
    "cola": ("cola/train.tsv", "sentence", None, "int64", {"test": "cola/validation.tsv"}),
    "mrpc": ("mrpc/train.tsv", "sentence1", "sentence2", "int64", {"test": "mrpc/validation.tsv"}),
    "stsb": ("stsb/train.csv", "sentence1", "sentence2", "float64", {"test": "stsb/validation.csv"}),
    "mnli": ("mnli/train.jsonl", "premise", "hypothesis", "int64",
             {"test": "mnli/validation_matched.jsonl", "test_mm": "mnli/validation_mismatched.jsonl"}),
}


def _raw(rel: str) -> pd.DataFrame:
    path = GLUE / rel
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")


@pytest.mark.parametrize("subset", list(CASES))
def test_glue_task_loads_with_registry_columns(subset: str, tokenizer, tmp_path: Path) -> None:
    train_file, text, pair, kind, evals = CASES[subset]
    source = task_source(spec(subset))  # no columns spelled out: the registry supplies them
    assert (source.text_column, source.text_pair_column) == (text, pair)
    frame = data.load_raw(source)
    data.validate(frame, source)
    raw = _raw(train_file)
    train = frame[frame["glue_split"] == "train"]
    assert train["text"].tolist() == raw[text].tolist() and str(frame["label"].dtype) == kind
    assert train["label"].tolist() == pytest.approx(raw["label"].tolist())
    if pair:
        assert train["text_pair"].tolist() == raw[pair].tolist()

    ref = data.prepare(source, split_spec(spec(subset)), tokenizer, max_length=32, out_root=tmp_path)
    sizes = dict(ref.sizes)
    assert list(sizes) == ["train", "dev", *evals] and sizes["train"] + sizes["dev"] == len(raw)
    for name, rel in evals.items():
        assert data.read_split(ref, name)["text"].to_pylist() == _raw(rel)[text].tolist()
    task = benchmarks.find_task("glue", subset)
    assert (ref.metrics, ref.score, ref.num_labels) == (task.metrics, task.score, task.num_labels)
    assert data.load_ref(ref.path) == ref  # metrics and extra splits survive the round trip


def test_stsb_is_regression_end_to_end(tokenizer, tmp_path: Path) -> None:
    ref = data.prepare(task_source(spec("stsb")), plan(0.25), tokenizer, 32, tmp_path)
    assert ref.regression and ref.num_labels == 1 and ref.label_values == ()
    dev = data.read_split(ref, "dev")["label"].to_pylist()
    # Stratified by integer part: the 6 dev rows spread over the scores, not the 6 lowest ones.
    assert len(dev) == 6 and len({int(v) for v in dev}) >= 5
    batch = next(data.batches(data.read_split(ref, "train"), 4, shuffle=False, seed=0))
    assert batch["labels"].dtype == torch.float32
    model = BertForSequenceClassification(BertConfig.from_pretrained(FIXTURES / "tiny-bert", num_labels=1))
    assert torch.isfinite(model(**batch).loss)  # transformers picks MSE for one float output


def test_pawsx_maps_label_names_and_adds_language_splits(tokenizer, tmp_path: Path) -> None:
    source = task_source(spec("pawsx", source="xglue", languages=("de",)))
    frame = data.load_raw(source)
    raw = pd.read_csv(XGLUE / "paws-x" / "train.csv")
    train = frame[frame["glue_split"] == "train"]
    assert train["label"].tolist() == [{"different": 0, "same": 1}[v] for v in raw["label"]]
    ref = data.prepare(source, plan(0.2), tokenizer, 32, tmp_path)
    # XGLUE has labelled dev and test sets per language: nothing is carved out of train.
    assert dict(ref.sizes) == {"train": 20, "dev": 6, "test": 8, "dev_de": 4, "test_de": 6}
    assert ref.languages == (("dev", "en"), ("test", "en"), ("dev_de", "de"), ("test_de", "de"))
    assert data.read_split(ref, "test_de")["text"].to_pylist() == pd.read_csv(
        XGLUE / "paws-x" / "test.de.csv")["sentence1"].tolist()
    with pytest.raises(data.DataError, match=r"no validation\.es file"):
        data.load_raw(task_source(spec("pawsx", source="xglue")))  # all 4 languages by default


def test_a_bad_class_name_is_named(tmp_path: Path) -> None:
    root = tmp_path / "paws-x"
    root.mkdir()
    for name in ("train", "validation.en", "test.en"):
        (root / f"{name}.csv").write_text("sentence1,sentence2,label\na b,c d,same\ne f,g h,maybe\n")
    source = task_source(TaskSpec(name="p", source="xglue", subset="pawsx", path=str(tmp_path),
                                  languages=()))
    with pytest.raises(data.DataError, match=r"\['maybe'\].*not class names of xglue/pawsx"):
        data.load_raw(source)


def test_columns_given_in_the_config_override_the_registry() -> None:
    source = task_source(spec("mrpc", text_column="sentence2", text_pair_column="sentence1"))
    assert (source.text_column, source.text_pair_column, source.labels) == ("sentence2", "sentence1", (0, 1))
    frame = data.load_raw(source)
    assert frame["text"].iloc[0] == _raw("mrpc/train.tsv")["sentence2"].iloc[0]


# ---------------------------------------------------------------- config and evaluation


def _config(task: dict, gate: str) -> dict:
    return {"name": "x", "tasks": [task], "registry": {"gate": {"metric": gate}}}


def test_config_checks_gate_metric_and_languages() -> None:
    stsb = {"name": "stsb", "source": "glue", "subset": "stsb", "path": str(GLUE)}
    assert parse_config(_config(stsb, "score")).tasks[0].metric_names() == ("pearson", "spearman", "score")
    pawsx_ok = {"name": "p", "source": "xglue", "subset": "pawsx", "path": str(XGLUE), "languages": ["de"]}
    assert "avg_score" in parse_config(_config(pawsx_ok, "avg_score")).tasks[0].metric_names()
    with pytest.raises(ConfigError, match="gate.metric 'accuracy' is not reported for task 'stsb'"):
        parse_config(_config(stsb, "accuracy"))
    pawsx = {"name": "p", "source": "xglue", "subset": "pawsx", "languages": ["xx"]}
    with pytest.raises(ConfigError, match=r"\['xx'\] not in"):
        parse_config(_config(pawsx, "accuracy"))
    with pytest.raises(ConfigError, match="languages.*'xglue' only"):
        parse_config(_config({**stsb, "languages": ["de"]}, "score"))
    with pytest.raises(ConfigError, match="unknown xglue task 'ner'"):
        parse_config(_config({"name": "n", "source": "xglue", "subset": "ner"}, "accuracy"))


def _ref(**kw) -> data.DatasetRef:
    return data.DatasetRef("t", "/nowhere", "0" * 64, 2, (0, 1), (("train", 1), ("dev", 5), ("test", 5)), **kw)


def test_task_metrics_use_the_task_official_metrics() -> None:
    pred, gold = torch.tensor([1, 0, 1, 1, 0]), torch.tensor([1, 0, 0, 1, 1])
    plain = evaluation.task_metrics(_ref(), {"dev": (pred, gold)})
    assert plain == pytest.approx({"dev_accuracy": 0.6, "dev_f1_macro": (4 / 6 + 0.5) / 2, "dev_score": 0.6})
    mrpc = evaluation.task_metrics(_ref(metrics=("accuracy", "f1"), score=("accuracy", "f1")),
                                   {"dev": (pred, gold), "test": (gold, gold)})
    assert mrpc["dev_score"] == pytest.approx((0.6 + 4 / 6) / 2) and mrpc["test_score"] == 1.0
    languages = (("dev", "en"), ("test", "en"), ("dev_de", "de"), ("test_de", "de"))
    xl = evaluation.task_metrics(_ref(metrics=("accuracy",), languages=languages),
                                 {"dev": (gold, gold), "test": (gold, gold), "test_de": (pred, gold),
                                  "dev_de": (pred[:4], gold[:4])})
    assert xl["test_avg_accuracy"] == pytest.approx((1.0 + 0.6) / 2) and xl["test_de_score"] == 0.6
    assert xl["dev_avg_score"] == pytest.approx((1.0 + 0.75) / 2)  # dev_de: 3 of 4 right


def test_evaluate_logs_regression_and_second_dev_set(tokenizer, tmp_path: Path) -> None:
    latency = {"latency_batch_sizes": (1,), "latency_seq_len": 8, "latency_repeats": 1, "latency_threads": 1}
    for subset, expect in (("stsb", {"dev_pearson", "test_spearman", "test_score"}),
                           ("mnli", {"dev_accuracy", "test_accuracy", "test_mm_accuracy", "test_mm_score"})):
        ref = data.prepare(task_source(spec(subset)), plan(0.25), tokenizer, 32, tmp_path)
        model = pretrained.load_classifier(str(FIXTURES / "tiny-bert"), num_labels=ref.num_labels, init="random")
        out = tmp_path / f"model-{subset}"
        pretrained.save_model(model, tokenizer, out)
        metrics = evaluation.evaluate(str(out), ref, batch_size=8, **latency)
        assert expect <= set(metrics), sorted(metrics)
        assert all(-1.0 <= metrics[k] <= 1.0 for k in expect)
