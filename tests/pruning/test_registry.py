from __future__ import annotations

import pytest
import torch

from pruning.methods import (
    METHOD_NAMES,
    METHOD_SPECS,
    PruningMethod,
    build_method,
    method_options,
)
from pruning.methods.dense import Dense
from pruning.methods.gmp import GradualMagnitude


def test_every_registered_name_builds(tiny_bert):
    for name in METHOD_NAMES:
        sparsity = 0.0 if name == "dense" else 0.5
        teacher = tiny_bert(seed=1) if METHOD_SPECS[name].needs_teacher else None
        method = build_method(
            name, tiny_bert(), teacher=teacher, total_steps=10, final_sparsity=sparsity, options={}
        )
        assert isinstance(method, PruningMethod) and method.name == name


def test_every_method_has_a_spec_and_needed_teachers_are_enforced(tiny_bert):
    assert set(METHOD_SPECS) == set(METHOD_NAMES)
    assert METHOD_SPECS["dense"].starts_from == "pretrained"  # dense trains the teacher
    for name, spec in METHOD_SPECS.items():
        if spec.needs_teacher:
            with pytest.raises(ValueError, match="teacher"):
                build_method(name, tiny_bert(), total_steps=10, final_sparsity=0.0, options={})


def test_options_reach_the_constructor(tiny_bert):
    method = build_method(
        "gmp", tiny_bert(), teacher=tiny_bert(), total_steps=100, final_sparsity=0.9,
        options={"update_every": 5, "allocation": "global", "end_fraction": 0.5},
    )
    assert isinstance(method, GradualMagnitude)
    assert method.schedule.update_every == 5 and method.schedule.end_step == 50
    assert method.allocation == "global"
    expected = {"start_fraction", "end_fraction", "update_every", "allocation", "recovery_steps",
                "prune_embeddings"}
    assert set(method_options("gmp")) == expected


def test_unknown_method_names_it_and_lists_valid(tiny_bert):
    with pytest.raises(ValueError, match=r"'magic'.*dense, gmp"):
        build_method("magic", tiny_bert(), total_steps=10, final_sparsity=0.5, options={})


def test_unknown_option_names_it_and_lists_valid(tiny_bert):
    with pytest.raises(ValueError, match=r"'warmup'.*allocation, end_fraction"):
        build_method("gmp", tiny_bert(), total_steps=10, final_sparsity=0.5, options={"warmup": 3})
    with pytest.raises(ValueError, match=r"'allocation'.*none"):
        build_method(
            "dense", tiny_bert(), total_steps=10, final_sparsity=0.0,
            options={"allocation": "local"},
        )


def test_dense_refuses_a_sparsity(tiny_bert):
    with pytest.raises(ValueError, match="final_sparsity"):
        build_method("dense", tiny_bert(), total_steps=10, final_sparsity=0.5, options={})


def test_dense_trains_without_masks(tiny_bert, make_batch, train_step):
    method = Dense(tiny_bert())
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-3)
    loss, logs = train_step(method, make_batch(torch.Generator().manual_seed(0)), optimizer, step=0)
    assert loss.ndim == 0 and logs["task_loss"] == pytest.approx(loss.item())
    assert method.target_sparsity() == 0.0 and method.state_dict() == {}
    batch = make_batch(torch.Generator().manual_seed(0))
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        method.loss(method.student, batch)
