"""Frozen-teacher outputs computed once per (teacher, train split) and read with each batch.

A method whose loss reads a frozen teacher (SDP's frozen copy, SparseBERT) says what it reads
(PruningMethod.teacher_outputs_spec). `ensure` runs the teacher once over the train split and
stores every example's outputs in a folder under <home>/teacher_outputs/ (infra.experiment.paths)
named by everything that decides them; every job of that teacher and data reuses it, and every
DDP rank memory-maps the same file. `TeacherCache.attach` puts a batch's outputs into the batch
("teacher.<name>" keys, pruning.teacher_outputs) and drops its "example_ids".

One folder:
    meta.json       what it holds: spec, per-example shapes, storage types, rows, build time
    outputs.arrow   Arrow IPC file: "example_id" (the example's row in the train split) and one
                    column per output, one flat fixed-size list per example; rows grouped by
                    length, the order the teacher ran them in (batches that pad little)

Per-token outputs (hidden states, attention scores) are stored at the split's longest length,
computed on batches padded to it, so a batch's shorter T cuts them exactly (the values at padded
positions depend on the example and the position only). They are stored as `dtype` (float16
halves the size); per-example vectors (logits, representations) always as float32. When the
whole split exceeds the cap, its first rows are stored and a batch's other rows run the teacher
live: the loss is the same either way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from infra import data
from pruning import teacher_outputs
from pruning.methods import PruningMethod
from pruning.methods.base import Batch
from pruning.teacher_outputs import TeacherOutputs

FORMAT = 2  # bump when the folder's layout changes
DTYPES = {"float32": (torch.float32, pa.float32()), "float16": (torch.float16, pa.float16())}
BUILD_BATCH = 32  # examples per teacher forward while building
MEBIBYTE = 1 << 20
_FILE, _META, _IDS = "outputs.arrow", "meta.json", "example_id"


def longest(table: pa.Table) -> int:
    """Tokens in the split's longest example: the widest batch T there can be."""
    lengths = table.column("input_ids").combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
    return int(lengths.max(initial=0))


def folder_for(root: Path, spec: TeacherOutputs, *, data_hash: str, teacher: str, dtype: str,
               pad_token_id: int, length: int) -> Path:
    """The cache folder of `spec`'s outputs of `teacher` (a content fingerprint) on the data."""
    what = {"format": FORMAT, "key": spec.key, "token_axes": spec.token_axes, "data": data_hash,
            "teacher": teacher, "dtype": dtype, "pad_token_id": pad_token_id, "length": length}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return Path(root) / f"{data_hash[:12]}-{digest[:12]}"


class TeacherCache:
    """A cache folder, memory-mapped: stored outputs by example, cut to a batch's length."""

    def __init__(self, folder: Path, meta: dict, table: pa.Table) -> None:
        self.folder, self.meta, self.table = folder, meta, table
        self.rows: int = meta["rows"]
        self.shapes = {name: tuple(shape) for name, shape in meta["shapes"].items()}
        self.token_axes = {name: tuple(axes) for name, axes in meta["token_axes"]}
        # Per output, one array [rows of the record batch, *shape] per record batch: views of the
        # memory-mapped file, so a read touches its examples' pages only (Arrow's take would
        # first concatenate, i.e. copy, the whole column).
        self.views = {name: [chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), *shape)
                             for chunk in table.column(name).chunks] for name, shape in self.shapes.items()}
        self.starts = np.cumsum([0] + [len(chunk) for chunk in table.column(_IDS).chunks])
        # Rows are stored grouped by length (cheaper to compute): where each example's row is.
        self.position = np.empty(self.rows, dtype=np.int64)
        self.position[table.column(_IDS).to_numpy()] = np.arange(self.rows)

    @classmethod
    def open(cls, folder: Path) -> TeacherCache | None:
        """The cache in `folder`; None when there is none, or it is damaged (then it is removed)."""
        if not (folder / _META).is_file():
            return None
        try:
            meta = json.loads((folder / _META).read_text())
            table = pa.ipc.open_file(pa.memory_map(str(folder / _FILE), "r")).read_all()
            intact = meta["format"] == FORMAT and table.num_rows == meta["rows"] and \
                table.column_names == [_IDS] + [name for name, _ in meta["token_axes"]] and \
                np.array_equal(np.sort(table.column(_IDS).to_numpy()), np.arange(meta["rows"]))
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            intact = False
        if not intact:
            trash = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
            return None
        return cls(folder, meta, table)

    def read(self, ids: np.ndarray, width: int) -> dict[str, Tensor]:
        """Stored outputs of rows `ids` [b] (all < self.rows), cut to `width` tokens: name ->
        float32 [b, ...] on the CPU."""
        where = self.position[ids]
        chunk = np.searchsorted(self.starts, where, side="right") - 1
        offset = where - self.starts[chunk]
        out = {}
        for name, shape in self.shapes.items():
            cut = tuple(slice(0, width) if axis in self.token_axes[name] else slice(None)
                        for axis in range(len(shape)))
            views = self.views[name]
            # A stacked copy in the stored type (writable; Arrow's buffers are read-only), then float32.
            stored = np.stack([views[k][o][cut] for k, o in zip(chunk, offset)])
            out[name] = torch.from_numpy(stored).float()
        return out

    def attach(self, batch: Batch, method: PruningMethod) -> Batch:
        """`batch` (with "example_ids" [B]) without its ids and with its examples' teacher
        outputs as "teacher.<name>" [B, ...] on the batch's device: stored rows read here, the
        others computed now by `method.teacher_outputs`."""
        batch = dict(batch)
        ids = batch.pop("example_ids").cpu().numpy()
        device, width = batch["input_ids"].device, batch["input_ids"].shape[1]
        hit = ids < self.rows
        if hit.all():
            stored = self.read(ids, width)
            return teacher_outputs.attach(batch, {k: v.to(device) for k, v in stored.items()})
        miss = torch.from_numpy(~hit).to(device)
        inputs = {k: v[miss] for k, v in batch.items() if k != "labels"}
        live = method.teacher_outputs(inputs)
        full = {}
        for name, value in live.items():
            full[name] = torch.empty((len(ids), *value.shape[1:]), dtype=torch.float32, device=device)
            full[name][miss] = value.float()
        if hit.any():
            for name, value in self.read(ids[hit], width).items():
                full[name][~miss] = value.to(device)
        return teacher_outputs.attach(batch, full)


def ensure(method: PruningMethod, table: pa.Table, *, root: Path, data_hash: str, teacher: str,
           pad_token_id: int, cap_bytes: int, dtype: str = "float16", log=print) -> TeacherCache | None:
    """The cache of `method`'s frozen-teacher outputs on `table` (the train split whose content
    hash is `data_hash`), built when missing; None when the method has none to precompute, or
    not one example fits in `cap_bytes`."""
    spec = method.teacher_outputs_spec()
    if spec is None or cap_bytes <= 0:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"teacher cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    length = longest(table)
    folder = folder_for(root, spec, data_hash=data_hash, teacher=teacher, dtype=dtype,
                        pad_token_id=pad_token_id, length=length)
    cache = TeacherCache.open(folder)
    if cache is None:
        if not build(method, table, spec, folder, length=length, pad_token_id=pad_token_id,
                     cap_bytes=cap_bytes, dtype=dtype, log=log):
            return None
        cache = TeacherCache.open(folder)
    return cache


def build(method: PruningMethod, table: pa.Table, spec: TeacherOutputs, folder: Path, *, length: int,
          pad_token_id: int, cap_bytes: int, dtype: str, log=print) -> bool:
    """Run the teacher over the first rows of `table` that fit in `cap_bytes` and write them
    to `folder`, which appears whole or not at all; False when not one example fits."""
    began = time.perf_counter()
    padded = any(axes for _, axes in spec.token_axes)  # per-token outputs: pad to `length`
    width = length if padded else None
    probe = next(_chunks(method, table.slice(0, 1), pad_token_id, width))[1]
    types = {name: DTYPES[dtype] if axes else DTYPES["float32"] for name, axes in spec.token_axes}
    shapes = {name: tuple(probe[name].shape[1:]) for name in spec.names}
    per_example = sum(math.prod(shapes[n]) * types[n][0].itemsize for n in spec.names)
    rows = min(table.num_rows, cap_bytes // per_example)
    log(f"teacher outputs ({spec.key}): {per_example / MEBIBYTE:.3f} MiB per example, "
        f"{table.num_rows * per_example / MEBIBYTE:.0f} MiB for all {table.num_rows}; storing {rows}")
    if rows == 0:
        return False
    schema = pa.schema([(_IDS, pa.int64())] + [(n, pa.list_(types[n][1], math.prod(shapes[n])))
                                                for n in spec.names])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with pa.OSFile(str(tmp / _FILE), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for ids, outputs in _chunks(method, table.slice(0, rows), pad_token_id, width):
                writer.write_batch(pa.record_batch(
                    [pa.array(ids, pa.int64())] + [_column(outputs[n], types[n]) for n in spec.names],
                    schema=schema))
        meta = {"format": FORMAT, "key": spec.key, "token_axes": spec.token_axes, "shapes": shapes,
                "dtypes": {n: str(types[n][0]).removeprefix("torch.") for n in spec.names},
                "rows": rows, "examples": table.num_rows, "length": length,
                "bytes_per_example": per_example, "build_s": round(time.perf_counter() - began, 2)}
        (tmp / _META).write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide it from workers running as other users
        os.rename(tmp, folder)  # readers see the whole folder or none of it
    except OSError:
        if not (folder / _META).is_file():  # not just a concurrent builder that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"teacher outputs ({spec.key}): {rows} examples written to {folder} in "
        f"{time.perf_counter() - began:.1f} s")
    return True


def _chunks(method: PruningMethod, table: pa.Table, pad_token_id: int, length: int | None
            ) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
    """(rows [b], the teacher's outputs on them: name -> [b, ...] on the CPU) for every row of
    `table`, BUILD_BATCH at a time, grouped by length so batches pad little; padded to
    `length` when given (per-token outputs), else to each batch's longest."""
    device = next(method.student.parameters()).device
    for batch in data.batches(table, BUILD_BATCH, shuffle=False, seed=0, pad_token_id=pad_token_id,
                              length_buckets=True, example_ids=True):
        ids = batch.pop("example_ids").numpy()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if length is not None:
            inputs = {k: _pad(v, length, pad_token_id if k == "input_ids" else 0) for k, v in inputs.items()}
        with torch.no_grad():
            outputs = method.teacher_outputs({k: v.to(device) for k, v in inputs.items()})
        yield ids, {name: value.detach().cpu() for name, value in outputs.items()}


def _pad(tokens: Tensor, length: int, value: int) -> Tensor:
    """[B, T] -> [B, length], the new positions set to `value`."""
    return torch.nn.functional.pad(tokens, (0, length - tokens.shape[1]), value=value)


def _column(values: Tensor, kind: tuple[torch.dtype, pa.DataType]) -> pa.FixedSizeListArray:
    """[b, ...] -> b flat fixed-size lists of the storage type."""
    flat = values.to(kind[0]).reshape(len(values), -1).numpy()
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), kind[1]), flat.shape[1])
