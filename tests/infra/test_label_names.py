"""Class names in the label column ("positive", "sci.space"): validated, stored as class indexes,
and carried into the model's config, so a saved model predicts names. Offline, no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# The hub libraries read these when first imported: set them before transformers loads.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, BertTokenizerFast  # noqa: E402

from infra import data  # noqa: E402
from infra.data import DataError, load_raw, prepare, read_split, validate  # noqa: E402
from infra.experiment.config import TaskSpec  # noqa: E402
from infra.experiment.preflight import split_spec, task_source  # noqa: E402
from infra.models import pretrained  # noqa: E402
from infra.train import loop  # noqa: E402
from infra.train.job import JobArgs, build_job  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_CSV, TINY_BERT = FIXTURES / "tiny_reviews.csv", FIXTURES / "tiny-bert"
# Not tiny-bert's own id2label (negative/positive), so the names a model predicts come from the data.
NAMES = {0: "thumbs.down", 1: "thumbs.up"}
# tiny_reviews.csv (integer labels) prepared at max_length 16 with the default split, before
# class names existed: integer-label data keep their content hash, so their jobs' runs and
# cached results stay theirs.
INTEGER_HASH = "b0561b570793f58b4e2eae00f3477726e27258e02bb9baba06092f0ab2112b20"


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab=str(TINY_BERT / "vocab.txt"))


def named_csv(path: Path, change=None) -> Path:
    """tiny_reviews.csv with its 0/1 labels written as names, optionally edited."""
    frame = pd.read_csv(TINY_CSV)
    frame["label"] = frame["label"].map(NAMES)
    if change is not None:
        change(frame)
    frame.to_csv(path, index=False)
    return path


def source(path: Path, **fields) -> data.TaskSource:
    return task_source(TaskSpec(name="named", source="file", path=str(path), **fields))


def test_named_labels_become_sorted_class_indexes(tmp_path: Path, tokenizer) -> None:
    src = source(named_csv(tmp_path / "named.csv"))
    ref = prepare(src, split_spec(TaskSpec(name="t")), tokenizer, 16, tmp_path / "out")
    assert ref.label_names == ("thumbs.down", "thumbs.up") and ref.num_labels == 2
    train = read_split(ref, "train").to_pandas()
    expected = train["text"].map(dict(zip(*pd.read_csv(TINY_CSV)[["text", "label"]].T.values)))
    assert train["label"].tolist() == expected.tolist()  # thumbs.down -> 0, thumbs.up -> 1
    assert data.load_ref(ref.path) == ref  # the names are stored with the data


def test_the_config_s_labels_fix_the_order_of_the_names(tmp_path: Path, tokenizer) -> None:
    path = named_csv(tmp_path / "named.csv")
    sorted_ref = prepare(source(path), split_spec(TaskSpec(name="t")), tokenizer, 16, tmp_path / "a")
    ref = prepare(source(path, labels=["thumbs.up", "thumbs.down"]), split_spec(TaskSpec(name="t")),
                  tokenizer, 16, tmp_path / "b")
    assert ref.label_names == ("thumbs.up", "thumbs.down")
    assert ref.content_hash != sorted_ref.content_hash  # other class indexes: other data
    train = read_split(ref, "train").to_pandas()
    assert set(train.loc[train["text"].str.contains("wonderful"), "label"]) == {0}


def test_integer_labels_keep_their_hash_and_have_no_names(tmp_path: Path, tokenizer) -> None:
    for fields in ({"labels": [0, 1]}, {}):
        ref = prepare(source(TINY_CSV, **fields), split_spec(TaskSpec(name="t")), tokenizer, 16,
                      tmp_path / str(len(fields)))
        assert ref.content_hash == INTEGER_HASH and ref.label_names == ()
        assert "label_names" not in json.loads((Path(ref.path) / "meta.json").read_text())


def test_a_name_outside_the_labels_an_empty_label_and_one_class_are_refused(tmp_path: Path) -> None:
    path = named_csv(tmp_path / "odd.csv", lambda f: f.__setitem__("label", f["label"].where(
        f.index != 5, "neutral")))
    src = source(path, labels=["thumbs.down", "thumbs.up"])
    with pytest.raises(DataError, match=r"unexpected label.*'neutral'.*allowed \['thumbs.down', 'thumbs.up'\]"):
        validate(load_raw(src), src)
    assert data.class_names(load_raw(source(path)), source(path)) == ("neutral", "thumbs.down", "thumbs.up")
    path = named_csv(tmp_path / "empty.csv", lambda f: f.__setitem__("label", f["label"].where(
        ~f.index.isin([3, 9]), "")))
    with pytest.raises(DataError, match=r"2 row\(s\) with an empty label.*rows \[3, 9\]"):
        validate(load_raw(source(path)), source(path))
    path = named_csv(tmp_path / "one.csv", lambda f: f.__setitem__("label", "thumbs.up"))
    with pytest.raises(DataError, match=">= 2 distinct names"):
        validate(load_raw(source(path)), source(path))


@pytest.fixture
def one_thread():
    """One torch thread, as a Ray worker of one CPU trains (two threads on a busy 2-core machine
    take 30x longer per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_model_trained_on_names_predicts_names_in_a_fresh_process(tmp_path: Path, one_thread) -> None:
    ref = prepare(source(named_csv(tmp_path / "named.csv")), split_spec(TaskSpec(name="t")),
                  pretrained.load_tokenizer(str(TINY_BERT)), 32, tmp_path / "data")
    args = JobArgs(job_id="named", method="dense", sparsity=0.0, seed=0, options={}, data_path=ref.path,
                   pretrained=str(TINY_BERT), init="random", teacher_dir=None, epochs=20, batch_size=16,
                   learning_rate=3e-3, weight_decay=0.01, warmup_fraction=0.0, max_grad_norm=1.0,
                   checkpoint_every=1000, log_every=1000)
    table, method, per_epoch, source_dir = build_job(args, world=1)
    steps = loop.total_steps(args.epochs, per_epoch)
    optimizer = loop.make_optimizer(method.module, learning_rate=args.learning_rate, weight_decay=0.01)
    stream = loop.stream_epochs(lambda e: data.batches(table, 16, shuffle=True, seed=0, epoch=e,
                                                       drop_last=True), start=0, batches_per_epoch=per_epoch)
    loop.fit(method, method.module, stream, steps=steps, optimizer=optimizer, scheduler=None,
             max_grad_norm=1.0)
    out = pretrained.save_model(method.export(), pretrained.load_tokenizer(source_dir), tmp_path / "model")
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "x = t(['a truly wonderful film .', 'the cast was really dull .'], return_tensors='pt', padding=True)\n"
        "with torch.no_grad(): ids = m(**x).logits.argmax(-1).tolist()\n"
        "print(json.dumps([m.config.id2label[i] for i in ids]))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["thumbs.up", "thumbs.down"]
    config = json.loads((out / "config.json").read_text())
    assert config["label2id"] == {"thumbs.down": 0, "thumbs.up": 1}


def test_integer_labels_keep_the_pretrained_config_s_names(tmp_path: Path) -> None:
    model = pretrained.load_classifier(str(TINY_BERT), num_labels=2, init="random")
    assert model.config.id2label == AutoConfig.from_pretrained(TINY_BERT).id2label  # as before names
    named = pretrained.load_classifier(str(TINY_BERT), num_labels=2, init="random",
                                       label_names=("neg", "pos"))
    assert named.config.id2label == {0: "neg", 1: "pos"}
    # The same seed gives the same weights with or without names: names change no result.
    same = [(a == b).all() for a, b in zip(model.state_dict().values(), named.state_dict().values())]
    assert all(same)
