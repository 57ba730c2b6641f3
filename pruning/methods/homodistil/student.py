"""What HomoDistil's stage a trains: the student with its hidden-state projections (and
masked-LM head), and the two ways a student starts other than as its teacher's copy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pruning.features import capture_attention_scores
from pruning.groups import StructuredMasks


class DistillationModule(nn.Module):
    """The student encoder, one learned projection per hidden state, and the student's
    masked-LM head when it has one (registered under its own name, `cls` or `lm_head`).

    The training loop wraps this module in DDP and optimises all of it, so the
    projections stay in sync across ranks. Projection k maps the student's state
    k (embedding output first) onto the teacher's; each starts as the identity, so a
    student that equals its teacher starts with zero distillation loss.
    """

    def __init__(self, student: nn.Module, head: nn.Module | None = None, head_name: str | None = None
                 ) -> None:
        super().__init__()
        self.student = student
        self.head_name = head_name
        if head is not None:
            self.add_module(head_name, head)
        width, states = student.config.hidden_size, student.config.num_hidden_layers + 1
        self.projections = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(states))
        with torch.no_grad():
            for proj in self.projections:
                proj.weight.copy_(torch.eye(width))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, predict_at: Tensor | None = None
                ) -> dict[str, list[Tensor] | Tensor]:
        """ids [B, T] -> {"hidden_states": L + 1 projected [B, T, H_teacher],
        "attention_scores": pre-softmax [B, h, T, T] of every layer that has attention,
        and with `predict_at` (bool [B, T]) "mlm_logits": the head's [N, vocab] there}."""
        with capture_attention_scores(self.student) as scores:
            out = self.student(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids, output_hidden_states=True)
        projected = [proj(h) for proj, h in zip(self.projections, out.hidden_states)]
        result = {"hidden_states": projected, "attention_scores": list(scores)}
        if predict_at is not None:
            result["mlm_logits"] = getattr(self, self.head_name)(out.hidden_states[-1][predict_at])
        return result


def leading_scores(masks: StructuredMasks) -> dict[str, Tensor]:
    """Scores that rank every group's lower indices first (any choice is alike at random init)."""
    first = lambda v: -torch.arange(v.numel(), dtype=torch.float32)  # noqa: E731
    scores = {"hidden": first(masks.hidden)} | {f"ffn.{i}": first(v) for i, v in enumerate(masks.ffn)}
    return scores | {f"attention.{i}": first(v) for i, v in enumerate(masks.heads or masks.attention)}


def reinitialise(model: nn.Module) -> None:
    """BERT's initialisation, in place, from torch's global RNG: normal(0, initializer_range)
    for Linear and Embedding weights, zero biases and padding rows, LayerNorm 1 and 0."""
    std = model.config.initializer_range
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
