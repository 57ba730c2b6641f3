"""bench/steptime.py's mechanics on the tiny BERT: every runner steps, masked ones at their final
sparsity without a mask update inside a timed step, and ratios pair steps of the same round."""

from __future__ import annotations

import pytest
import torch

from bench import steptime
from pruning.methods import build_method
from tests.tiny import VOCAB, make_tiny_bert


def test_ratios_pair_the_steps_of_one_round() -> None:
    times = {"a": [2.0, 4.0, 9.0], "b": [1.0, 4.0, 3.0]}  # a busy third round slows both
    assert steptime.paired_ratio(times, "a", "b") == 2.0


def test_every_runner_steps_and_masked_ones_keep_their_final_masks() -> None:
    torch.set_num_threads(1)
    base = make_tiny_bert(seed=0)
    runners = {name: steptime.make_runner(base, method, precision, sparsity=0.9, total=30, weight_decay=0.01)
               for name, method, precision in steptime.RUNNERS}
    masks = {name: {k: m.clone() for k, m in run.method.masks.items()}
             for name, run in runners.items() if hasattr(run.method, "masks")}
    assert set(masks) == {"gmp", "sdp", "sparsebert", "sdp_bf16"}
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, VOCAB, (4, 8), generator=g),
             "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "labels": torch.randint(0, 2, (4,), generator=g)}
    updater = build_method("gmp", make_tiny_bert(seed=0), total_steps=30, final_sparsity=0.9, options={})
    times = steptime.time_rounds(runners, batch, updater, rounds=1, total=30, max_grad_norm=1.0,
                                 log=lambda text: None)
    assert set(times) == {*runners, "mask_update"} and all(len(t) == 1 for t in times.values())
    for name, before in masks.items():
        assert all(torch.equal(runners[name].method.masks[k], m) for k, m in before.items()), name
        kept = sum(int(m.sum()) for m in before.values()) / sum(m.numel() for m in before.values())
        assert kept == pytest.approx(0.1, abs=0.02), name
