"""Training checkpoints: everything a restart needs, written atomically, nothing pickled.

One checkpoint is a folder:

    model.safetensors      the student's weights (the trained module: student + projections)
    method.safetensors     the method's state: masks, importance scores and their moving
                           averages, schedule step (whatever `PruningMethod.state_dict` holds)
    optimizer.safetensors  the optimizer's per-parameter tensors, "state.<index>.<name>"
    rng.safetensors        torch's CPU (and CUDA) generator states, numpy's MT19937 keys
    trainer_state.json     step and data position, world size, the optimizer's param groups,
                           the LR scheduler, python's and numpy's remaining RNG fields

Each file is written under a temporary name and renamed into place, so a crash mid-write
never leaves a half-written file under a real name. Loading reads safetensors and JSON
only: a checkpoint from an untrusted place cannot run code.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

_FILES = ("model.safetensors", "method.safetensors", "optimizer.safetensors", "rng.safetensors",
          "trainer_state.json")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete or does not fit the job; names the folder and the part."""


@dataclass(frozen=True)
class Position:
    """Where training stands: `step` optimizer steps done = `epoch` full epochs + `batch` batches."""

    step: int
    epoch: int
    batch: int
    batches_per_epoch: int
    world_size: int
    mask_checksums: list[int] = field(default_factory=list)  # one per rank, equal when DDP is right


def position(step: int, batches_per_epoch: int, world_size: int,
             mask_checksums: list[int] | None = None) -> Position:
    epoch, batch = divmod(step, batches_per_epoch)
    return Position(step, epoch, batch, batches_per_epoch, world_size, list(mask_checksums or []))


def _atomic_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split the optimizer's state into tensors (safetensors) and plain values (JSON)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, py_gauss = random.getstate()
    plain = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)],
             "python": [version, list(internal), py_gauss]}
    return tensors, plain


def _set_rng_state(tensors: dict[str, Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = plain["python"]
    random.setstate((version, tuple(internal), py_gauss))


def save(folder: Path, *, module: nn.Module, method_state: dict[str, Tensor],
         optimizer: torch.optim.Optimizer, scheduler, where: Position) -> None:
    """Write one complete checkpoint into `folder` (which must exist)."""
    _atomic_safetensors(dict(module.state_dict()), folder / "model.safetensors")
    _atomic_safetensors(method_state, folder / "method.safetensors")
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    _atomic_safetensors(opt_tensors, folder / "optimizer.safetensors")
    rng_tensors, rng_plain = _rng_state()
    _atomic_safetensors(rng_tensors, folder / "rng.safetensors")
    trainer = {"position": asdict(where), "optimizer": opt_meta,
               "scheduler": scheduler.state_dict(), "rng": rng_plain}
    # The JSON goes last: a folder with trainer_state.json has every other file complete.
    _atomic_text(json.dumps(trainer), folder / "trainer_state.json")


def read_position(folder: Path) -> Position:
    """The position a checkpoint was taken at (for logs and tests)."""
    return Position(**json.loads((folder / "trainer_state.json").read_text())["position"])


def load(folder: Path, *, module: nn.Module, method, optimizer: torch.optim.Optimizer,
         scheduler, batches_per_epoch: int, world_size: int) -> Position:
    """Restore everything `save` wrote; return where training stands."""
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}")
    trainer = json.loads((folder / "trainer_state.json").read_text())
    where = Position(**trainer["position"])
    if (where.world_size, where.batches_per_epoch) != (world_size, batches_per_epoch):
        raise CheckpointError(
            f"checkpoint {folder} was taken with {where.world_size} worker(s) and "
            f"{where.batches_per_epoch} batches per epoch; this run has {world_size} and "
            f"{batches_per_epoch}, so the data position would not match: rerun with the same "
            "num_workers, or start the job afresh")
    # The method first: one that sliced its module mid-run (HomoDistil) cuts the fresh module
    # to the checkpoint's shapes here, so the weights and the optimizer's state then fit.
    method.load_state_dict(load_file(str(folder / "method.safetensors")))
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    optimizer.load_state_dict(_optimizer_state(load_file(str(folder / "optimizer.safetensors")),
                                               trainer["optimizer"]))
    scheduler.load_state_dict(trainer["scheduler"])
    _set_rng_state(load_file(str(folder / "rng.safetensors")), trainer["rng"])
    return where
