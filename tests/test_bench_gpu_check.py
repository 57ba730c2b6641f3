"""bench/gpu_check.py's CPU-side parts: its command line, the FLOP count its utilisation divides
by, and a clear stop without CUDA (the check itself runs where a GPU is lent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertForSequenceClassification

from bench import gpu_check
from tests.tiny import VOCAB, tiny_bert_config


def test_the_command_line_defaults_and_parts() -> None:
    args = gpu_check.parse_args([])
    assert (args.steps, args.batch, args.seq, args.parts) == (20, 32, 128, ("step", "job"))
    assert args.out.name == "gpu_check.json" and args.out.parent.name == "results"
    assert gpu_check.parse_args(["--parts", "step", "--steps", "3"]).parts == ("step",)
    for bad in (["--parts", "step,magic"], ["--parts", ""], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def _counted(model: BertForSequenceClassification, batch: dict, *, train: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        out = model(**batch)
        if train:
            out.loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("shape", [(2, 8), (3, 16)])
def test_the_flop_count_is_what_torch_counts_of_a_step(shape: tuple[int, int]) -> None:
    config = tiny_bert_config()
    config.num_labels, config._attn_implementation = 2, "eager"  # eager: the attention matmuls are counted
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).train()
    batch_size, seq = shape
    batch = {"input_ids": torch.randint(0, VOCAB, shape),
             "attention_mask": torch.ones(shape, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,))}
    assert gpu_check.forward_flops(config, batch_size, seq) == _counted(model, batch, train=False)
    # Backward: each matmul's input gradient and weight gradient, twice the forward's work.
    assert gpu_check.train_step_flops(config, batch_size, seq) == _counted(model, batch, train=True)


def test_bert_base_is_about_22_gflops_a_sequence_forward() -> None:
    config = gpu_check.bert_base_config()
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (12, 768, 3072)
    per_sequence = gpu_check.forward_flops(config, 1, 128)
    assert 21e9 < per_sequence < 23e9  # ~2 x 85M encoder weights x 128 tokens, plus attention
    assert gpu_check.train_step_flops(config, 32, 128) == 3 * gpu_check.forward_flops(config, 32, 128)


def test_known_gpus_have_a_nominal_peak() -> None:
    assert gpu_check.nominal_peak("NVIDIA H200") == 989e12
    assert gpu_check.nominal_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.nominal_peak("Some Future GPU") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_clearly_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert "needs a CUDA GPU" in message and "Nothing was written" in message
    assert not out.exists()
