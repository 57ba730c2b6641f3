"""GLUE's original download layout (glue_data/SST-2/train.tsv, ...): the same rows, columns and label
ids as the hub's layout, through the same `path` setting; clear errors for bad files. Offline."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

from infra.data import benchmarks
from infra import data
from infra.data import glue_original  # noqa: E402
from infra.experiment.config import TaskSpec  # noqa: E402
from infra.experiment.preflight import split_spec, task_source  # noqa: E402
from tests.fixtures.regenerate import regenerate  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ORIGINAL = FIXTURES / "glue_original"
HUB = {"sst2": FIXTURES / "glue_sst2", "cola": FIXTURES / "glue", "mrpc": FIXTURES / "glue",
       "stsb": FIXTURES / "glue", "mnli": FIXTURES / "glue"}


def load(subset: str, path: Path) -> pd.DataFrame:
    source = task_source(TaskSpec(name=subset, source="glue", subset=subset, path=str(path)))
    frame = data.load_raw(source)
    data.validate(frame, source)
    return frame


def copy_task(tmp_path: Path, folder: str) -> Path:
    shutil.copytree(ORIGINAL / folder, tmp_path / folder)
    return tmp_path / folder


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_fixtures_are_reproducible_and_small(tmp_path: Path) -> None:
    written = regenerate("make_glue_original_fixtures.py", tmp_path)
    assert len(written) == 11 and {p.parts[1] for p in written} == {"CoLA", "SST-2", "MRPC", "STS-B", "MNLI"}
    assert all((FIXTURES / rel).stat().st_size < 6 * 1024 for rel in written)


# ---------------------------------------------------------------- same rows as the hub's layout


@pytest.mark.parametrize("subset", list(HUB))
def test_original_layout_gives_the_hub_layouts_rows_and_labels(subset: str) -> None:
    original, hub = load(subset, ORIGINAL), load(subset, HUB[subset])
    pd.testing.assert_frame_equal(original, hub)  # texts, label ids (or scores), splits, dtypes


def test_string_labels_headerless_cola_and_float_scores_are_read_right() -> None:
    mnli = load("mnli", ORIGINAL)
    gold = pd.read_csv(ORIGINAL / "MNLI" / "dev_mismatched.tsv", sep="\t")["gold_label"]
    mismatched = mnli[mnli["glue_split"] == "validation_mismatched"]
    assert mismatched["label"].tolist() == [("entailment", "neutral", "contradiction").index(g) for g in gold]
    assert mnli["glue_split"].value_counts().to_dict() == {
        "train": 24, "validation_mismatched": 9, "validation_matched": 6}
    cola = load("cola", ORIGINAL)
    lines = [line.split("\t") for line in (ORIGINAL / "CoLA" / "train.tsv").read_text().splitlines()]
    train = cola[cola["glue_split"] == "train"]
    # No header: no row is eaten as one.
    assert len(train) == len(lines) and train["text"].tolist() == [f[3] for f in lines]
    assert train["label"].tolist() == [int(f[1]) for f in lines] and {f[2] for f in lines} == {"", "*"}
    stsb = load("stsb", ORIGINAL)
    assert str(stsb["label"].dtype) == "float64" and stsb["label"].iloc[1] == pytest.approx(0.22)


def prepare(subset: str, path: Path, out: Path) -> data.DatasetRef:
    tokenizer = BertTokenizerFast(vocab=str(FIXTURES / "tiny-bert" / "vocab.txt"))
    spec = TaskSpec(name=subset, source="glue", subset=subset, path=str(path))
    return data.prepare(task_source(spec), split_spec(spec), tokenizer, 32, out)


@pytest.mark.parametrize("subset", ["mnli", "stsb"])
def test_prepared_data_are_identical_to_the_hub_layouts(subset: str, tmp_path: Path) -> None:
    original = prepare(subset, ORIGINAL, tmp_path / "original")
    hub = prepare(subset, HUB[subset], tmp_path / "hub")
    # The content hash covers token ids and labels of every split: training and evaluation see the same.
    assert original.content_hash == hub.content_hash and original.sizes == hub.sizes
    assert (original.metrics, original.score, original.num_labels) == (hub.metrics, hub.score, hub.num_labels)
    if subset == "mnli":  # both dev sets: matched as test, mismatched as test_mm
        assert [name for name, _ in original.sizes] == ["train", "dev", "test", "test_mm"]
        assert dict(original.sizes)["test_mm"] == 9


def test_other_tasks_map_labels_to_the_hubs_class_ids(tmp_path: Path) -> None:
    # Headers and label spellings of the original QQP, QNLI, RTE and WNLI files; the hub's class
    # order is (entailment, not_entailment) for QNLI and RTE but (not_entailment, entailment) for WNLI.
    cases = {"QQP": (["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tis it ?\tis this ?\t1",
                      "1\t3\t4\twhy ?\thow ?\t0"], "qqp", [1, 0]),
             "QNLI": (["index\tquestion\tsentence\tlabel", "0\twho ?\the did .\tentailment",
                       "1\twhen ?\tsoon .\tnot_entailment"], "qnli", [0, 1]),
             "RTE": (["index\tsentence1\tsentence2\tlabel", "0\ta b .\ta .\tnot_entailment",
                      "1\tc d .\tc .\tentailment"], "rte", [1, 0]),
             "WNLI": (["index\tsentence1\tsentence2\tlabel", "0\ta b .\ta .\t1", "1\tc d .\tc .\t0"], "wnli",
                      [1, 0])}
    for folder, (lines, subset, labels) in cases.items():
        for name in ("train.tsv", "dev.tsv"):
            write(tmp_path / folder / name, lines)
        frame = load(subset, tmp_path)
        assert frame["label"].tolist() == labels * 2, folder
        assert frame["text_pair"].tolist() == [line.split("\t")[-2] for line in lines[1:]] * 2


def test_quote_characters_are_plain_text(tmp_path: Path) -> None:
    lines = ["sentence\tlabel", '" it \'s a film that " never ends\t0', 'a "cult" classic\t1', 'the end "\t1']
    for name in ("train.tsv", "dev.tsv"):
        write(tmp_path / "SST-2" / name, lines)
    frame = load("sst2", tmp_path)
    assert frame["text"].tolist()[:3] == [line.split("\t")[0] for line in lines[1:]]


def test_broken_rows_are_skipped_like_the_hub_did(tmp_path: Path, caplog) -> None:
    # The older QQP release: a newline inside a question splits one row into two short lines.
    lines = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tis it ?\tis this ?\t1",
             "1\t3\t4\t\"why", "\tWas it real ?\t0", "2\t5\t6\thow ?\twhy ?\t0", "3\t7\t8\ta ?\tb ?\t"]
    for name in ("train.tsv", "dev.tsv"):
        write(tmp_path / "QQP" / name, lines)
    with caplog.at_level(logging.WARNING, logger="infra.data.glue_original"):
        frame = load("qqp", tmp_path)
    assert frame["text"].tolist() == ["is it ?", "how ?"] * 2
    assert "skipped 3 row(s)" in caplog.text and "[3, 4, 6]" in caplog.text


# ---------------------------------------------------------------- detection and errors


def test_only_the_original_folder_names_select_this_reader(tmp_path: Path) -> None:
    sst2 = benchmarks.find_task("glue", "sst2")
    assert glue_original.task_dir(ORIGINAL, sst2) == ORIGINAL / "SST-2"
    assert glue_original.task_dir(ORIGINAL / "SST-2", sst2) == ORIGINAL / "SST-2"
    # `path` may name the task's folder itself.
    pd.testing.assert_frame_equal(load("mnli", ORIGINAL / "MNLI"), load("mnli", ORIGINAL))
    assert glue_original.task_dir(FIXTURES / "glue_sst2", sst2) is None  # the hub's layout
    hub_copy = copy_task(tmp_path, "SST-2")
    (hub_copy / "validation.tsv").write_text("sentence\tlabel\nok .\t1\n")
    assert glue_original.task_dir(tmp_path, sst2) is None  # validation files: the hub's layout
    assert glue_original.task_dir(ORIGINAL, benchmarks.find_task("xglue", "pawsx")) is None


def test_a_task_missing_from_glue_data_is_named(tmp_path: Path) -> None:
    copy_task(tmp_path, "CoLA")
    expected = r"found \['CoLA'\]; in GLUE's original layout .* glue/mnli needs .*MNLI/train\.tsv, dev_matched"
    with pytest.raises(data.DataError, match=expected):
        load("mnli", tmp_path)


@pytest.mark.parametrize("folder, file, edit, match", [
    ("MNLI", "dev_matched.tsv", lambda t: t.replace("\tneutral\n", "\tmaybe\n", 1),
     r"MNLI/dev_matched\.tsv line \d+: label 'maybe' in column 'gold_label' is not a class of glue/mnli"),
    ("STS-B", "train.tsv", lambda t: t.replace("\tscore\n", "\trating\n"),
     r"STS-B/train\.tsv: column\(s\) \['score'\] missing from the header"),
    ("STS-B", "dev.tsv", lambda t: t.replace("\t0.710\n", "\thigh\n"),
     r"STS-B/dev\.tsv line 3: score 'high' in column 'score' is not a number"),
    ("CoLA", "train.tsv", lambda t: "source\tlabel\toriginal_label\tsentence\n" + t,
     r"CoLA/train\.tsv line 1: label 'label'.*no header line"),
    ("SST-2", "train.tsv", lambda t: t.replace("\t1\n", "\t2\n", 1),
     r"SST-2/train\.tsv line \d+: label '2' .*\['negative', 'positive'\] or 0\.\.1"),
    ("MNLI", "dev_mismatched.tsv", None, r"MNLI/dev_mismatched\.tsv not found"),
])
def test_a_bad_file_is_named_with_the_problem(tmp_path: Path, folder, file, edit, match) -> None:
    path = copy_task(tmp_path, folder) / file
    if edit is None:
        path.unlink()
    else:
        path.write_text(edit(path.read_text()))
    subset = {"MNLI": "mnli", "STS-B": "stsb", "CoLA": "cola", "SST-2": "sst2"}[folder]
    with pytest.raises(data.DataError, match=f"task '{subset}': .*{match}"):
        load(subset, tmp_path)
