"""Under DDP every rank prunes exactly the same weights, for every pruning method.

Two processes (gloo on loopback) train the same tiny model on different batches, as data
parallel workers do, through the same hook order as infra.train.ray_job's loop. Masks come
from weights or gradients that DDP keeps identical, so the checksums must agree; a method
that ranked on per-rank statistics (its own batch's gradients) would fail here.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from transformers import BertForSequenceClassification, BertModel

from pruning.methods import build_distiller, build_method
from tests.tiny import tiny_bert_config, train_step

STEPS = 8
METHODS = ("gmp", "sdp", "sparsebert", "homodistil")
CONFIG = tiny_bert_config(vocab_size=60)


def _batch(rank: int, step: int, labels: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)  # each rank its own shard
    batch = {"input_ids": torch.randint(0, CONFIG.vocab_size, (4, 8), generator=g),
             "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    if labels:
        batch["labels"] = torch.randint(0, 2, (4,), generator=g)
    return batch


def _method(name: str):
    torch.manual_seed(0)  # the same initial weights on every rank, as Ray Train's loop has
    if name == "homodistil":
        student, teacher = BertModel(CONFIG), BertModel(CONFIG)
        teacher.load_state_dict(student.state_dict())
        return build_distiller(name, student, teacher=teacher, total_steps=STEPS, final_sparsity=0.6,
                               options={"update_every": 2})
    student = BertForSequenceClassification(CONFIG)
    teacher = BertForSequenceClassification(CONFIG)
    options = {"update_every": 2} if name in ("gmp", "sdp") else {}
    return build_method(name, student, teacher=teacher, total_steps=STEPS, final_sparsity=0.6,
                        options=options)


def _checksum_after_training(rank: int, name: str) -> int:
    method = _method(name)
    module = getattr(method, "module", method.student)
    model = DistributedDataParallel(module)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    for step in range(STEPS):  # the product's step, through the DDP wrapper
        train_step(method, _batch(rank, step, labels=name != "homodistil"), optimizer, step=step,
                   model=model)
    return method.mask_checksum()


def _worker(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    found = {}
    for name in METHODS:
        mine = torch.tensor([_checksum_after_training(rank, name)])
        both = [torch.zeros_like(mine), torch.zeros_like(mine)]
        dist.all_gather(both, mine)
        found[name] = [int(t) for t in both]
    dist.destroy_process_group()
    if rank == 0:
        out.put(found)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ranks_prune_the_same_weights_for_every_method() -> None:
    out = mp.get_context("spawn").Queue()
    # One pair of processes for all methods: spawning (importing transformers) is the slow part.
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, start_method="spawn")
    found = out.get(timeout=120)
    assert set(found) == set(METHODS)
    for name, (first, second) in found.items():
        assert first == second, f"{name}: rank checksums differ"
        assert first != _method(name).mask_checksum(), f"{name}: nothing was pruned; this proves nothing"
