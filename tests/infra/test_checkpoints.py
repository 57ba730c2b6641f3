"""A checkpoint holds everything a restart needs: resuming gives the uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from infra.train import checkpoints
from pruning.methods import build_method
from tests.tiny import make_tiny_bert

STEPS, CUT, PER_EPOCH = 12, 5, 4


def _setup(seed: int = 0):
    model = make_tiny_bert(seed, vocab_size=50)
    method = build_method("gmp", model, total_steps=STEPS, final_sparsity=0.6,
                          options={"update_every": 2})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, STEPS)
    return model, method, optimizer, scheduler


def _batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(0, 50, (4, 8), generator=g),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
            "labels": torch.randint(0, 2, (4,), generator=g)}


def _run(train_step, model, method, optimizer, scheduler, start: int, stop: int) -> list[float]:
    model.train()  # dropout on: the torch RNG state matters
    draws = []
    for step in range(start, stop):
        train_step(method, _batch(step), optimizer, step=step, model=model, scheduler=scheduler)
        # The loop's other RNG consumers (python, numpy) must resume where they were too.
        draws.append(random.random() + float(np.random.rand()))
    return draws


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, train_step):
    random.seed(1), np.random.seed(1)
    straight = _setup()
    draws_straight = _run(train_step, *straight, 0, STEPS)

    random.seed(1), np.random.seed(1)
    first = _setup()
    draws_first = _run(train_step, *first, 0, CUT)
    model, method, optimizer, scheduler = first
    checkpoints.save(tmp_path, module=model, method_state=method.state_dict(), optimizer=optimizer,
                     scheduler=scheduler, where=checkpoints.position(CUT, PER_EPOCH, 1, [7]))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a fresh process's RNGs

    resumed = _setup(seed=5)  # different initial weights: everything must come from the checkpoint
    where = checkpoints.load(tmp_path, module=resumed[0], method=resumed[1], optimizer=resumed[2],
                             scheduler=resumed[3], batches_per_epoch=PER_EPOCH, world_size=1)
    draws_rest = _run(train_step, *resumed, where.step, STEPS)

    assert (where.step, where.epoch, where.batch, where.mask_checksums) == (CUT, 1, 1, [7])
    assert draws_first + draws_rest == draws_straight
    for (name, a), b in zip(straight[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name
    assert straight[1].mask_checksum() == resumed[1].mask_checksum()
    assert straight[3].get_last_lr() == resumed[3].get_last_lr()


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path, train_step):
    model, method, optimizer, scheduler = _setup()
    _run(train_step, model, method, optimizer, scheduler, 0, 3)
    checkpoints.save(tmp_path, module=model, method_state=method.state_dict(), optimizer=optimizer,
                     scheduler=scheduler, where=checkpoints.position(3, PER_EPOCH, 1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(checkpoints._FILES)  # no leftover temporary files
    assert all(n.endswith((".safetensors", ".json")) for n in names)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["position"]["step"] == 3 and state["scheduler"]["last_epoch"] == 3


def test_incomplete_or_mismatched_checkpoint_is_refused(tmp_path):
    model, method, optimizer, scheduler = _setup()
    checkpoints.save(tmp_path, module=model, method_state=method.state_dict(), optimizer=optimizer,
                     scheduler=scheduler, where=checkpoints.position(0, PER_EPOCH, 1))
    with pytest.raises(checkpoints.CheckpointError, match="taken with 1 worker"):
        checkpoints.load(tmp_path, module=model, method=method, optimizer=optimizer,
                         scheduler=scheduler, batches_per_epoch=PER_EPOCH // 2, world_size=2)
    (tmp_path / "optimizer.safetensors").unlink()
    with pytest.raises(checkpoints.CheckpointError, match="missing optimizer.safetensors"):
        checkpoints.load(tmp_path, module=model, method=method, optimizer=optimizer,
                         scheduler=scheduler, batches_per_epoch=PER_EPOCH, world_size=1)
