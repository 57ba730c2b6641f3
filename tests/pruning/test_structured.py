from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel, RobertaForMaskedLM

from pruning.accounting import count_params
from pruning.compact import CompactBertModel, Widths, count_params_for, encoder_macs
from pruning.schedules import CubicSchedule
from pruning.structured import (
    GroupScores,
    StructuredMasks,
    group_layout,
    keep_top,
    raw_group_scores,
    scheduled_widths,
    select_masks,
    target_widths,
    widths_from,
)
from pruning.surgery import apply_structured_masks, reslice
from tests.tiny import tiny_bert_config

CONFIG = tiny_bert_config()
FULL = Widths.of_config(CONFIG)


def _random_scores(masks: StructuredMasks, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = {k: v.numel() for k, v in masks.group_vectors().items()}
    if masks.heads is not None:
        sizes |= {f"attention.{i}": h.numel() for i, h in enumerate(masks.heads)}
    return {k: torch.rand(n, generator=g) for k, n in sizes.items()}


def test_layout_names_every_grouped_dimension(tiny_bert):
    layout = group_layout([n for n, _ in tiny_bert().named_parameters()])
    assert layout["bert.embeddings.word_embeddings.weight"] == ((1, "hidden"),)
    assert layout["bert.encoder.layer.1.attention.self.key.weight"] == ((0, "attention.1"), (1, "hidden"))
    assert layout["bert.encoder.layer.0.attention.output.dense.weight"] == (
        (0, "hidden"), (1, "attention.0"))
    assert layout["bert.encoder.layer.0.attention.output.dense.bias"] == ((0, "hidden"),)
    assert layout["bert.encoder.layer.1.output.dense.weight"] == ((0, "hidden"), (1, "ffn.1"))
    assert layout["bert.encoder.layer.1.intermediate.dense.bias"] == ((0, "ffn.1"),)
    assert layout["bert.pooler.dense.weight"] == ((0, "hidden"), (1, "hidden"))
    assert layout["classifier.weight"] == ((1, "hidden"),)
    assert "classifier.bias" not in layout  # the label dimension is never pruned
    assert len(layout) == len(list(tiny_bert().parameters())) - 1


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_layout_of_roberta_names_its_head_like_berts_pooler_and_classifier(tiny_roberta, kind):
    model = tiny_roberta(kind)
    layout = group_layout([n for n, _ in model.named_parameters()])
    assert layout["roberta.embeddings.position_embeddings.weight"] == ((1, "hidden"),)
    assert layout["roberta.embeddings.token_type_embeddings.weight"] == ((1, "hidden"),)
    assert layout["roberta.encoder.layer.1.attention.self.key.weight"] == (
        (0, "attention.1"), (1, "hidden"))
    assert layout["roberta.encoder.layer.0.output.dense.weight"] == ((0, "hidden"), (1, "ffn.0"))
    assert layout["classifier.dense.weight"] == ((0, "hidden"), (1, "hidden"))
    assert layout["classifier.dense.bias"] == ((0, "hidden"),)
    assert layout["classifier.out_proj.weight"] == ((1, "hidden"),)
    assert "classifier.out_proj.bias" not in layout  # the label dimension is never pruned
    assert len(layout) == len(list(model.parameters())) - 1
    encoder = tiny_roberta(kind, head=False)
    assert len(group_layout([n for n, _ in encoder.named_parameters()])) == len(list(encoder.parameters()))


@pytest.mark.parametrize("unit", ["heads", "inner"])
def test_masks_round_trip_through_safetensors(tmp_path, unit):
    masks = select_masks(_random_scores(StructuredMasks.full(FULL, unit), 0),
                         Widths(20, (1, 2), (16, 16), (5, 64)) if unit == "heads"
                         else Widths(20, (2, 2), (3, 9), (5, 64)), StructuredMasks.full(FULL, unit))
    save_file(masks.to_flat(), tmp_path / "masks.safetensors")
    loaded = StructuredMasks.from_flat(load_file(tmp_path / "masks.safetensors"))
    assert loaded.widths() == masks.widths()
    assert loaded.checksum() == masks.checksum()
    assert masks.checksum() != StructuredMasks.full(FULL, unit).checksum()


def test_group_score_is_the_sum_of_its_weights_sensitivity(tiny_bert, make_batch):
    model = tiny_bert()
    model(**make_batch(torch.Generator().manual_seed(0))).loss.backward()
    masks = StructuredMasks.full(FULL, "heads")
    scores = raw_group_scores(model, masks)
    layer = model.bert.encoder.layer[0]
    w_in, b_in = layer.intermediate.dense.weight, layer.intermediate.dense.bias
    w_out = layer.output.dense.weight
    expected = ((w_in * w_in.grad).abs().sum(1) + (b_in * b_in.grad).abs()
                + (w_out * w_out.grad).abs().sum(0))
    torch.testing.assert_close(scores["ffn.0"], expected)
    assert scores["attention.1"].shape == (2,) and scores["hidden"].shape == (32,)
    signed = raw_group_scores(model, masks, abs_of_sum=True)["ffn.0"]
    torch.testing.assert_close(signed, ((w_in * w_in.grad).sum(1) + b_in * b_in.grad
                                        + (w_out * w_out.grad).sum(0)).abs())


def test_scores_need_gradients(tiny_bert):
    with pytest.raises(ValueError, match="after backward"):
        raw_group_scores(tiny_bert(), StructuredMasks.full(FULL))


def test_ema_and_platon_uncertainty():
    ema, platon = GroupScores(0.85), GroupScores(0.85, uncertainty=True, beta2=0.95)
    for value in (torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])):
        ema.update({"g": value})
        platon.update({"g": value})
    avg = 0.85 * 0.15 * torch.tensor([1.0, 2.0]) + 0.15 * torch.tensor([3.0, 0.0])
    torch.testing.assert_close(ema.scores()["g"], avg)
    first = 0.15 * torch.tensor([1.0, 2.0])
    spread = (0.95 * 0.05 * (torch.tensor([1.0, 2.0]) - first).abs()
              + 0.05 * (torch.tensor([3.0, 0.0]) - avg).abs())
    torch.testing.assert_close(platon.scores()["g"], avg * spread)
    restored = GroupScores(0.85, uncertainty=True)
    restored.load_state_dict(platon.state_dict())
    torch.testing.assert_close(restored.scores()["g"], platon.scores()["g"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=20), st.data())
def test_keep_top_is_exact_deterministic_and_monotone(values, data):
    scores = torch.tensor(values, dtype=torch.float32)
    n = len(values)
    k1 = data.draw(st.integers(0, n))
    k2 = data.draw(st.integers(0, k1))
    first = keep_top(scores, k1)
    assert int(first.sum()) == k1
    kept_scores = scores[first]
    if 0 < k1 < n:  # every kept score beats every pruned one; ties go to the lower index
        dropped = torch.nonzero(~first).reshape(-1)
        for j in dropped.tolist():
            assert all(s > scores[j] or (s == scores[j] and i < j)
                       for i, s in zip(torch.nonzero(first).reshape(-1).tolist(), kept_scores))
    second = keep_top(torch.rand(n), k2, first)
    assert int(second.sum()) == k2 and not bool((second & ~first).any())
    assert torch.equal(keep_top(torch.rand(n), n, second), second)  # no regrowth


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["heads", "inner"]), st.integers(0, 1000), st.integers(2, 8))
def test_masks_follow_the_schedule_monotonically_to_exact_widths(unit, seed, updates):
    target = target_widths(CONFIG, 0.4, attention_unit=unit)
    schedule = CubicSchedule(0.0, 0.6, 0, updates, 1)
    masks = StructuredMasks.full(FULL, unit)
    for step in range(updates + 1):
        widths = scheduled_widths(FULL, target, schedule.sparsity_at(step) / schedule.final_sparsity)
        new = select_masks(_random_scores(masks, seed + step), widths, masks)
        assert new.widths() == widths
        for old_v, new_v in zip(masks.group_vectors().values(), new.group_vectors().values()):
            assert not bool((new_v & ~old_v).any())
        if unit == "inner":
            counts = [a.view(-1, 16).sum(1) for a in new.attention]
            assert all(bool((c == c[0]).all()) for c in counts)
        masks = new
    assert masks.widths() == target


def test_count_params_for_matches_built_models():
    classifier, headless = BertForSequenceClassification(CONFIG), BertModel(CONFIG, add_pooling_layer=False)
    assert count_params_for(CONFIG, FULL, num_labels=2) == count_params(classifier)
    assert count_params_for(CONFIG, FULL, pooler=False) == count_params(headless)
    widths = Widths(20, (1, 0), (16, 16), (7, 0))
    compact = CompactBertModel(widths.to_config(CONFIG, scaling_head_size=16))
    assert count_params_for(CONFIG, widths) == count_params(compact)


@pytest.mark.parametrize("keep, shrink, unit",
                         [(0.5, True, "heads"), (0.3, True, "inner"), (0.8, False, "heads")])
def test_target_widths_fill_the_budget(keep, shrink, unit):
    widths = target_widths(CONFIG, keep, shrink_hidden=shrink, attention_unit=unit)
    budget = int(keep * count_params_for(CONFIG, FULL))
    count = count_params_for(CONFIG, widths)
    assert count <= budget
    assert count > budget - 2 * (2 * widths.hidden + 1)  # not even one more FFN neuron per layer fits
    assert len(set(widths.ffn)) == 1 and len(set(widths.heads)) == 1
    assert (widths.hidden < 32) == shrink


def test_target_widths_names_budget_and_floor_when_infeasible():
    # Embeddings (100 + 512 + 2) * 32 alone are about 2/3 of this model.
    with pytest.raises(ValueError, match=r"budget of \d+ parameters, below the floor of \d+.*shrink_h"):
        target_widths(CONFIG, 0.5, shrink_hidden=False)
    with pytest.raises(ValueError, match="keep_fraction"):
        target_widths(CONFIG, 0.0)


def test_explicit_widths():
    spec = {"hidden": 24, "heads": 1, "ffn": [10, 20]}
    assert widths_from(CONFIG, spec) == Widths(24, (1, 1), (16, 16), (10, 20))
    assert widths_from(CONFIG, {"head_size": 8}, attention_unit="inner").head_size == (8, 8)
    with pytest.raises(ValueError, match="heads"):
        widths_from(CONFIG, {"heads": 3})
    with pytest.raises(ValueError, match="not allowed"):
        widths_from(CONFIG, {"head_size": 8}, attention_unit="heads")


def test_scheduled_widths_run_from_full_to_target():
    target = Widths(10, (0, 1), (16, 16), (3, 5))
    assert scheduled_widths(FULL, target, 0.0) == FULL
    assert scheduled_widths(FULL, target, 1.0) == target
    assert 10 < scheduled_widths(FULL, target, 0.5).hidden < 32


def test_macs_shrink_with_the_widths():
    half = Widths(32, (1, 1), (16, 16), (32, 32))
    assert encoder_macs(FULL, 8) == 8 * 2 * (4 * 32 * 32 + 2 * 32 * 64 + 2 * 8 * 32)
    assert encoder_macs(half, 8) < encoder_macs(FULL, 8)


def test_budget_widths_of_a_real_size_model_are_multiples_and_meet_the_budget():
    # all-MiniLM-L6-v2's shape, built from a config (nothing downloaded).
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536)
    full = count_params_for(config, Widths.of_config(config))
    for keep in (0.5, 0.25, 0.15):
        exact = target_widths(config, keep)
        rounded = target_widths(config, keep, multiple_of=16)
        assert rounded.hidden % 16 == 0 and all(f % 16 == 0 for f in rounded.ffn), rounded
        assert count_params_for(config, rounded) <= keep * full
        assert count_params_for(config, rounded) >= 0.95 * count_params_for(config, exact)


def test_tiny_models_keep_exact_widths_whatever_the_multiple(tiny_config):
    config = tiny_config()
    assert target_widths(config, 0.4, multiple_of=16) == target_widths(config, 0.4)


def test_layout_groups_a_masked_lm_heads_hidden_dims(tiny_config, tiny_roberta):
    bert = group_layout(list(BertForMaskedLM(tiny_config()).state_dict()))
    assert bert["cls.predictions.transform.dense.weight"] == ((0, "hidden"), (1, "hidden"))
    assert bert["cls.predictions.transform.LayerNorm.weight"] == ((0, "hidden"),)
    assert bert["cls.predictions.decoder.weight"] == ((1, "hidden"),)  # tied to the word embeddings
    assert "cls.predictions.bias" not in bert  # the vocabulary is never pruned
    roberta = group_layout(list(RobertaForMaskedLM(tiny_roberta("roberta").config).state_dict()))
    assert roberta["lm_head.dense.weight"] == ((0, "hidden"), (1, "hidden"))
    assert roberta["lm_head.layer_norm.bias"] == ((0, "hidden"),)
    assert roberta["lm_head.decoder.weight"] == ((1, "hidden"),)


@pytest.mark.parametrize("unit", ["heads", "inner"])
def test_scores_of_a_cut_model_are_the_masked_models_at_full_width(tiny_bert, make_batch, unit):
    full = StructuredMasks.full(FULL, unit)
    masks = select_masks(_random_scores(full, 0), Widths(20, (1, 2), (16, 16), (5, 64)) if unit == "heads"
                         else Widths(20, (2, 2), (3, 9), (5, 64)), full)
    quiet = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    masked = tiny_bert(**quiet)
    apply_structured_masks(masked, masks)
    cut = reslice(tiny_bert(**quiet), masks)
    apply_structured_masks(cut, masks, present=masks)
    batch = make_batch(torch.Generator().manual_seed(0))
    for model in (masked, cut):
        model(**batch).loss.backward()
    want, got = raw_group_scores(masked, masks), raw_group_scores(cut, masks, present=masks)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    for group, value in want.items():
        torch.testing.assert_close(got[group], value, atol=1e-6, rtol=1e-5, msg=group)
    assert float(got["hidden"][~masks.hidden].abs().sum()) == 0.0
