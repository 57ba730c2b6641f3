from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pruning.masks import (
    apply_masks,
    global_keep_masks,
    keep_mask,
    kept_count,
    local_keep_masks,
    magnitude_scores,
    sensitivity_scores,
)

shapes = st.lists(st.integers(1, 12), min_size=1, max_size=3).map(tuple)
sparsities = st.floats(0.0, 1.0, allow_nan=False)
seeds = st.integers(0, 2**16)
# Few distinct levels make many ties, the case where counts go wrong.
levels = st.sampled_from([2, 5, 1000])


def _scores(shape: tuple[int, ...], seed: int, n_levels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_levels, shape, generator=generator).float()


def _subset(inner: torch.Tensor, outer: torch.Tensor) -> bool:
    return not bool((inner & ~outer).any())


@settings(max_examples=150, deadline=None)
@given(shapes, sparsities, seeds, levels)
def test_keep_mask_keeps_exact_count_of_highest_scores(shape, sparsity, seed, n_levels):
    scores = _scores(shape, seed, n_levels)
    mask = keep_mask(scores, sparsity)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert int(mask.sum()) == scores.numel() - round(sparsity * scores.numel())
    if mask.any() and (~mask).any():
        assert scores[mask].min() >= scores[~mask].max()


@settings(max_examples=100, deadline=None)
@given(shapes, st.lists(sparsities, min_size=1, max_size=6), seeds, levels)
def test_masks_along_a_schedule_are_monotone_and_never_regrow(shape, steps, seed, n_levels):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    mask = torch.ones(shape, dtype=torch.bool)
    for sparsity in sorted(steps):
        # Weights move between updates; pruned ones would outscore kept ones if allowed.
        weight = weight + 3 * torch.randn(shape, generator=generator)
        new = keep_mask(magnitude_scores(weight * mask), sparsity, previous=mask)
        assert _subset(new, mask)
        assert int(new.sum()) == min(int(mask.sum()), kept_count(weight.numel(), sparsity))
        mask = new


def test_previous_mask_returned_when_it_already_keeps_fewer():
    previous = torch.tensor([True, False, False, True])
    mask = keep_mask(torch.tensor([0.0, 9.0, 9.0, 1.0]), 0.25, previous=previous)
    assert torch.equal(mask, previous)


def test_ties_go_to_the_lower_index():
    mask = keep_mask(torch.ones(2, 3), 0.5)
    assert mask.reshape(-1).tolist() == [True, True, True, False, False, False]


def test_nan_scores_rank_last():
    mask = keep_mask(torch.tensor([float("nan"), 0.1, 0.2]), 1 / 3)
    assert mask.tolist() == [False, True, True]


@settings(max_examples=100, deadline=None)
@given(st.lists(shapes, min_size=1, max_size=4), sparsities, sparsities, seeds, levels)
def test_global_masks_exact_total_and_monotone(shape_list, s1, s2, seed, n_levels):
    scores = {f"w{i}": _scores(s, seed + i, n_levels) for i, s in enumerate(shape_list)}
    total = sum(s.numel() for s in scores.values())
    first = global_keep_masks(scores, min(s1, s2))
    assert sum(int(m.sum()) for m in first.values()) == kept_count(total, min(s1, s2))
    kept = torch.cat([scores[n][first[n]] for n in scores])
    dropped = torch.cat([scores[n][~first[n]] for n in scores])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()  # one threshold across matrices
    second = global_keep_masks(scores, max(s1, s2), previous=first)
    assert all(_subset(second[n], first[n]) for n in scores)
    assert sum(int(m.sum()) for m in second.values()) == kept_count(total, max(s1, s2))


def test_local_masks_each_matrix_reaches_sparsity():
    scores = {"a": torch.arange(10.0), "b": torch.arange(100.0).reshape(10, 10)}
    masks = local_keep_masks(scores, 0.3)
    assert int(masks["a"].sum()) == 7 and int(masks["b"].sum()) == 70


def test_global_differs_from_local_when_scales_differ():
    scores = {"small": torch.full((10,), 0.1), "large": torch.full((10,), 5.0)}
    masks = global_keep_masks(scores, 0.5)
    assert not masks["small"].any() and masks["large"].all()


@settings(max_examples=50, deadline=None)
@given(shapes, sparsities, seeds)
def test_apply_masks_zeroes_pruned_and_is_idempotent(shape, sparsity, seed):
    generator = torch.Generator().manual_seed(seed)
    param = nn.Parameter(torch.randn(shape, generator=generator))
    original = param.detach().clone()
    mask = keep_mask(magnitude_scores(param), sparsity)
    apply_masks({"w": param}, {"w": mask})
    once = param.detach().clone()
    apply_masks({"w": param}, {"w": mask})
    assert torch.equal(param.detach(), once)
    assert torch.equal(once[mask], original[mask])
    assert bool((once[~mask] == 0).all())


def test_apply_masks_unknown_name_raises():
    with pytest.raises(ValueError, match="nope"):
        apply_masks({"w": nn.Parameter(torch.ones(2))}, {"nope": torch.ones(2, dtype=torch.bool)})


def test_scores():
    w = torch.tensor([-2.0, 1.0, 0.5])
    g = torch.tensor([1.0, -3.0, 0.0])
    assert magnitude_scores(w).tolist() == [2.0, 1.0, 0.5]
    assert sensitivity_scores(w, g).tolist() == [2.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="gradient"):
        sensitivity_scores(w, None)
