from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruning.accounting import encoder_sparsity, matrix_sparsities
from pruning.masks import kept_count
from pruning.methods import PruningMethod
from pruning.methods.gmp import GradualMagnitude
from tests.tiny import train_step

TOTAL_STEPS = 12  # end_step 8 (2/3 of the run), then 4 fixed-mask steps
TARGET = 0.8
OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-1, momentum=0.9),
}


def _gmp(model: torch.nn.Module, **options: object) -> GradualMagnitude:
    return GradualMagnitude(model, final_sparsity=TARGET, total_steps=TOTAL_STEPS, **options)


def _kept(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def _is_subset(later: dict[str, torch.Tensor], earlier: dict[str, torch.Tensor]) -> bool:
    return all(not bool((later[n] & ~earlier[n]).any()) for n in earlier)


def _train(
    method: GradualMagnitude,
    optimizer: str,
    make_batch: Callable,
    steps: int,
    check: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """The step infra/ runs (its train_step), minus DDP; returns the masks after each update step."""
    model = method.student
    opt = OPTIMIZERS[optimizer](model.parameters())
    generator = torch.Generator().manual_seed(1)
    seen = []
    for step in range(steps):
        _, logs = train_step(method, make_batch(generator, size=2, length=6), opt, step=step)
        if method.schedule.is_update_step(step):  # masks change only as such a step starts
            seen.append({n: m.clone() for n, m in method.masks.items()})
        assert set(logs) == {"task_loss", "sparsity"}
        assert all(isinstance(v, float) for v in logs.values())
        if check:
            for name, w in method.params.items():
                assert bool((w.detach()[~method.masks[name]] == 0).all()), (step, name)
    return seen


@pytest.mark.parametrize(
    ("optimizer", "allocation"),
    [("adamw", "local"), ("sgd_momentum", "local"), ("adamw", "global")],
)
def test_gmp_reaches_target_and_pruned_weights_stay_zero(
    tiny_bert, make_batch, optimizer, allocation
):
    method = _gmp(tiny_bert(), update_every=2, allocation=allocation)
    assert isinstance(method, PruningMethod)
    seen = _train(method, optimizer, make_batch, TOTAL_STEPS)
    assert len(seen) == 5  # steps 0, 2, 4, 6 and end_step 8
    assert all(_is_subset(later, earlier) for earlier, later in zip(seen, seen[1:]))
    sparsities = matrix_sparsities(method.student)
    if allocation == "local":
        for name, w in method.params.items():
            pruned = w.numel() - kept_count(w.numel(), TARGET)
            assert abs(sparsities[name] * w.numel() - pruned) <= 1, name
    total = sum(w.numel() for w in method.params.values())
    assert abs(encoder_sparsity(method.student) - TARGET) * total <= len(method.params)
    assert method.target_sparsity() == TARGET


def test_masks_touch_only_encoder_linear_weights(tiny_bert):
    method = _gmp(tiny_bert())
    named = method.student.named_parameters()
    others = {n: p.detach().clone() for n, p in named if n not in method.params}
    method.on_step_start(method.schedule.end_step)
    method.on_step_end(method.schedule.end_step)
    assert encoder_sparsity(method.student) == pytest.approx(TARGET, abs=1e-3)
    for name, p in method.student.named_parameters():
        if name in others:
            assert torch.equal(p.detach(), others[name]), name


def test_state_dict_round_trips_through_safetensors(tiny_bert, make_batch, tmp_path):
    method = _gmp(tiny_bert(), update_every=3)  # updates at 0, 3, 6 and 8
    _train(method, "adamw", make_batch, 6, check=False)
    state = method.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, str(tmp_path / "method.safetensors"))

    fresh = _gmp(tiny_bert(seed=7), update_every=3)
    fresh.load_state_dict(load_file(str(tmp_path / "method.safetensors")))
    assert fresh.step == method.step == 5
    for name, mask in method.masks.items():
        assert torch.equal(fresh.masks[name], mask)
        assert bool((fresh.params[name].detach()[~mask] == 0).all())  # applied on load
    # After a resume the next scheduled update prunes further and never regrows.
    before = {n: m.clone() for n, m in fresh.masks.items()}
    fresh.on_step_start(6)
    assert _is_subset(fresh.masks, before) and _kept(fresh.masks) < _kept(before)


def test_load_state_dict_rejects_a_foreign_state(tiny_bert):
    method = _gmp(tiny_bert())
    state = method.state_dict()
    state["mask.bert.pooler.dense.weight"] = torch.ones(32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="pooler"):
        method.load_state_dict(state)


def test_bad_allocation_raises(tiny_bert):
    with pytest.raises(ValueError, match="allocation"):
        _gmp(tiny_bert(), allocation="per-head")


def test_prune_embeddings_prunes_the_word_embeddings_to_the_same_exact_sparsity(tiny_bert, make_batch):
    model = tiny_bert()
    embedding = model.bert.embeddings.word_embeddings.weight
    _train(_gmp(model, prune_embeddings=True), "adamw", make_batch, TOTAL_STEPS)
    assert int((embedding == 0).sum()) == round(TARGET * embedding.numel())
    # encoder_sparsity still counts only the encoder's matrices, which reach the target as before
    assert encoder_sparsity(model) == pytest.approx(TARGET, abs=1e-3)
    untouched = tiny_bert()
    zeros = lambda m: int((m.bert.embeddings.word_embeddings.weight == 0).sum())  # noqa: E731
    before = zeros(untouched)  # the padding row
    _train(_gmp(untouched), "adamw", make_batch, TOTAL_STEPS)
    assert zeros(untouched) == before
