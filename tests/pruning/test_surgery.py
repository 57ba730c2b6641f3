from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertForSequenceClassification, BertModel

from pruning.accounting import count_params
from pruning.compact import CompactBertForSequenceClassification, CompactBertModel, Widths, count_params_for
from pruning.structured import StructuredMasks, select_masks, target_widths
from pruning.surgery import MaskedLayerNorm, apply_structured_masks, reslice, slice_model, slice_state_dict
from tests.tiny import VOCAB, tiny_bert_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tiny_bert_config(num_labels=3)
FULL = Widths.of_config(CONFIG)
CASES = {  # (unit, widths): hidden pruned in all; a layer with no heads / no FFN / no inner dims
    "heads": ("heads", Widths(20, (1, 0), (16, 16), (10, 64))),
    "inner": ("inner", Widths(25, (2, 2), (5, 11), (0, 7))),
    "inner_empty": ("inner", Widths(31, (2, 2), (0, 16), (64, 1))),
    "hidden_only": ("heads", Widths(9, (2, 2), (16, 16), (64, 64))),
}


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0  # padding, so the attention mask matters
    return {"input_ids": torch.randint(0, VOCAB, (3, 7), generator=g), "attention_mask": mask,
            "token_type_ids": torch.randint(0, 2, (3, 7), generator=g)}


def _masked(case: str, seed: int = 0, model: torch.nn.Module | None = None):
    torch.manual_seed(seed)
    model = BertForSequenceClassification(CONFIG).eval() if model is None else model
    unit, widths = CASES[case]
    full = StructuredMasks.full(FULL, unit)
    g = torch.Generator().manual_seed(seed)
    scores = {k: torch.rand(v.numel(), generator=g) for k, v in full.group_vectors().items()}
    if unit == "heads":
        scores |= {f"attention.{i}": torch.rand(2, generator=g) for i in range(2)}
    masks = select_masks(scores, widths, full)
    apply_structured_masks(model, masks)
    return model, masks


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_masked_model_and_sliced_twin_agree(case, seed):
    model, masks = _masked(case, seed)
    compact = slice_model(model, masks)
    assert isinstance(compact, CompactBertForSequenceClassification)
    assert Widths.of_config(compact.config) == masks.widths() == CASES[case][1]
    with torch.no_grad():
        torch.testing.assert_close(compact(**_inputs()).logits, model(**_inputs()).logits,
                                   atol=1e-5, rtol=1e-5)


def test_headless_encoder_slices_to_compact_bert_model():
    model, masks = _masked("inner", model=BertModel(CONFIG).eval())
    compact = slice_model(model, masks)
    assert isinstance(compact, CompactBertModel)
    with torch.no_grad():
        want, got = model(**_inputs()), compact(**_inputs())
    kept = masks.hidden
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state[..., kept],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output[..., kept], atol=1e-5, rtol=1e-5)


def test_pruned_hidden_dims_are_exactly_zero_along_the_residual_stream():
    model, masks = _masked("heads")
    with torch.no_grad():
        out = model(**_inputs(), output_hidden_states=True)
    assert len(out.hidden_states) == 3
    for state in out.hidden_states:
        assert state.shape[-1] == 32
        assert bool((state[..., ~masks.hidden] == 0).all())
        assert bool((state[..., masks.hidden] != 0).any())
    layernorms = [m for m in model.modules() if isinstance(m, MaskedLayerNorm)]
    assert len(layernorms) == 5  # embeddings + 2 per layer


def test_masking_is_idempotent_and_keeps_parameters():
    model, masks = _masked("inner")
    params = {n: p for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    apply_structured_masks(model, masks)
    assert all(p is params[n] for n, p in model.named_parameters())  # optimizers keep working
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert set(model.state_dict()) == set(BertForSequenceClassification(CONFIG).state_dict())


def test_unpruned_masked_layernorm_is_the_plain_one():
    plain = torch.nn.LayerNorm(8)
    masked = MaskedLayerNorm(copy.deepcopy(plain))
    x = torch.randn(2, 8)
    masked.set_keep(torch.ones(8, dtype=torch.bool))
    torch.testing.assert_close(masked(x), plain(x))


def test_masked_layernorm_normalises_over_the_kept_dims_only():
    plain = torch.nn.LayerNorm(8)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
    keep = torch.tensor([True, False, True, True, False, True, False, True])
    masked = MaskedLayerNorm(copy.deepcopy(plain))
    masked.set_keep(keep)
    x = (torch.randn(3, 5, 8) * 4 + 2).requires_grad_()  # pruned dims hold values too
    y = masked(x)
    sliced = torch.nn.functional.layer_norm(x[..., keep], (5,), plain.weight[keep],
                                            plain.bias[keep], plain.eps)
    torch.testing.assert_close(y[..., keep], sliced, atol=1e-5, rtol=1e-5)
    assert torch.equal(y[..., ~keep], torch.zeros_like(y[..., ~keep]))
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    (want,) = torch.autograd.grad(sliced.square().sum(), x)
    torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-5)  # nothing flows to pruned dims


def _random_group_scores(full: Widths) -> dict[str, torch.Tensor]:
    """Scores for unit "heads" masks of `full`: one per hidden dim, head and FFN neuron."""
    unit_masks = StructuredMasks.full(full, "heads")
    return {k: torch.rand(v.numel() if k[:3] != "att" else 2)
            for k, v in unit_masks.group_vectors().items()}


def test_sliced_model_meets_the_parameter_budget():
    widths = target_widths(CONFIG, 0.45, num_labels=3)
    unit_masks = StructuredMasks.full(FULL, "heads")
    masks = select_masks(_random_group_scores(FULL), widths, unit_masks)
    model = BertForSequenceClassification(CONFIG)
    apply_structured_masks(model, masks)
    compact = slice_model(model, masks)
    assert count_params(compact) == count_params_for(CONFIG, widths, num_labels=3)
    assert count_params(compact) <= 0.45 * count_params(BertForSequenceClassification(CONFIG))


def _roberta_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """As _inputs with RoBERTa's pad id 1 where the mask is 0 and no token_type_ids."""
    inputs = _inputs(seed)
    del inputs["token_type_ids"]
    inputs["input_ids"] = inputs["input_ids"].clamp_min(3).masked_fill(inputs["attention_mask"] == 0, 1)
    return inputs


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta"])
def test_saved_compact_model_reloads_in_a_fresh_process(tmp_path, tiny_roberta, kind):
    model = None if kind == "bert" else tiny_roberta(kind, num_labels=3).eval()
    model, masks = _masked("inner", seed=3, model=model)
    inputs = _inputs() if kind == "bert" else _roberta_inputs()
    compact = slice_model(model, masks)
    compact.save_pretrained(tmp_path / "model")
    with torch.no_grad():
        expected, hidden = compact(**inputs).logits, compact.bert(**inputs).last_hidden_state
    save_file({**inputs, "expected": expected, "hidden": hidden}, tmp_path / "io.safetensors")
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModel, AutoModelForSequenceClassification\n"
        "import pruning.compact\n"
        "io = load_file(sys.argv[2]); expected, hidden = io.pop('expected'), io.pop('hidden')\n"
        "model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "encoder = AutoModel.from_pretrained(sys.argv[1]).eval()\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(model(**io).logits, expected, atol=1e-6, rtol=1e-6)\n"
        "    torch.testing.assert_close(encoder(**io).last_hidden_state, hidden, atol=1e-6, rtol=1e-6)\n"
        "print(type(model).__name__, model.config.layout)\n"
    )
    args = [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "io.safetensors")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    layout = "bert" if kind == "bert" else "roberta"
    assert done.stdout.strip().endswith(f"CompactBertForSequenceClassification {layout}")


@pytest.mark.parametrize("case", ["heads", "inner", "inner_empty"])
@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_masked_roberta_and_its_sliced_twin_agree(tiny_roberta, kind, case):
    model, masks = _masked(case, model=tiny_roberta(kind, num_labels=3).eval())
    compact = slice_model(model, masks)
    assert isinstance(compact, CompactBertForSequenceClassification)
    assert compact.config.layout == "roberta" and Widths.of_config(compact.config) == CASES[case][1]
    with torch.no_grad():
        want = model(**_roberta_inputs(), output_hidden_states=True)
        got = compact(**_roberta_inputs(), output_hidden_states=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for sliced, masked in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(sliced, masked[..., masks.hidden], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_headless_roberta_slices_to_a_roberta_layout_compact_model(tiny_roberta, kind):
    model, masks = _masked("heads", model=tiny_roberta(kind, head=False).eval())
    compact = slice_model(model, masks)
    assert isinstance(compact, CompactBertModel) and compact.config.layout == "roberta"
    with torch.no_grad():
        want, got = model(**_roberta_inputs()), compact(**_roberta_inputs())
    kept = masks.hidden
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state[..., kept],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output[..., kept], atol=1e-5, rtol=1e-5)


def test_sliced_xlm_roberta_classifier_meets_the_parameter_budget(tiny_roberta):
    model = tiny_roberta("xlm-roberta", num_labels=3)
    full_params = count_params(model)
    # RoBERTa's head dense [H, H] counts as BERT's pooler, its out_proj as the classifier.
    widths = target_widths(model.config, 0.45, num_labels=3)
    masks = select_masks(_random_group_scores(FULL), widths, StructuredMasks.full(FULL, "heads"))
    apply_structured_masks(model, masks)
    compact = slice_model(model, masks)
    assert count_params(compact) == count_params_for(model.config, widths, num_labels=3)
    assert count_params(compact) <= 0.45 * full_params
    assert compact.classifier.dense.weight.shape == (widths.hidden, widths.hidden)


def _wider(case: str, seed: int = 0) -> StructuredMasks:
    """Masks between full and CASES[case]: a model cut to them can still lose the rest."""
    unit, widths = CASES[case]
    full = StructuredMasks.full(FULL, unit)
    g = torch.Generator().manual_seed(seed)  # the same draws as _masked: the final masks nest
    scores = {k: torch.rand(v.numel(), generator=g) for k, v in full.group_vectors().items()}
    if unit == "heads":
        scores |= {f"attention.{i}": torch.rand(2, generator=g) for i in range(2)}
    halfway = Widths((FULL.hidden + widths.hidden) // 2,
                     *(tuple((a + b + 1) // 2 for a, b in zip(getattr(FULL, k), getattr(widths, k)))
                       for k in ("heads", "head_size", "ffn")))
    return select_masks(scores, halfway, full)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("head", [True, False])
def test_reslicing_in_two_cuts_keeps_the_parameters_and_equals_the_sliced_copy(case, head):
    torch.manual_seed(0)
    model = (BertForSequenceClassification if head else BertModel)(CONFIG).eval()
    _, masks = _masked(case, model=model)  # masked to the final widths
    halfway = _wider(case)
    assert masks.group_vectors(halfway)["hidden"].numel() == int(halfway.hidden.sum())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():  # AdamW state of every parameter, each entry its own value
        p.grad = torch.randn_like(p)
    optimizer.step()
    apply_structured_masks(model, masks)
    want = slice_model(model, masks)
    moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    first = reslice(model, halfway, optimizer=optimizer)
    apply_structured_masks(first, masks, present=halfway)
    got = reslice(first, masks, present=halfway, optimizer=optimizer)
    assert type(got) is type(want) and Widths.of_config(got.config) == CASES[case][1]
    assert all(p is params[n] for n, p in got.named_parameters())  # the optimizer trains them on
    state = want.state_dict()
    for name, p in got.named_parameters():
        assert p.shape == state[name].shape and (p.grad is None or p.grad.shape == p.shape)
        assert optimizer.state[p]["exp_avg"].shape == p.shape
    # The moments are cut as the weights: slicing them out of the full-width moments agrees.
    cut = slice_state_dict(moments, masks)
    for name, p in got.named_parameters():
        torch.testing.assert_close(optimizer.state[p]["exp_avg"], cut[name], atol=0, rtol=0)
    with torch.no_grad():
        out = (lambda m: m(**_inputs()).logits) if head else (lambda m: m(**_inputs()).last_hidden_state)
        torch.testing.assert_close(out(got), out(want), atol=1e-6, rtol=1e-6)
    optimizer.step()  # the cut parameters and their cut state still step together


def test_masks_that_keep_what_was_sliced_out_are_refused():
    _, masks = _masked("heads")
    with pytest.raises(ValueError, match="already sliced out"):
        StructuredMasks.full(FULL, "heads").group_vectors(masks)
