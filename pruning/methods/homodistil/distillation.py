"""HomoDistil's stage a, task-agnostic: homotopic distillation (METHODS.md section 2).

The student starts as an exact copy of the pre-trained teacher encoder and is
distilled on unlabelled text while its hidden dimensions, attention heads (or inner
dimensions) and FFN neurons are pruned a little at a time, by EMA-smoothed
sensitivity, until the target widths; `export()` slices it into a
pruning.compact.CompactBertModel, which stage b (pruning.methods.homodistil.finetuning)
fine-tunes on the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from pruning import losses
from pruning.accounting import count_params_for
from pruning.compact import CompactBertModel
from pruning.compact_config import ATTENTION_UNITS, AttentionUnit, Widths
from pruning.features import capture_attention_scores, mean_pool
from pruning.group_scores import GroupScores, raw_group_scores
from pruning.groups import StructuredMasks
from pruning.methods.base import Batch, PruningMethod
from pruning.schedules import END_FRACTION, CubicSchedule, cubic_sparsity
from pruning.sizing import scheduled_widths, target_widths, widths_from
from pruning.structured import select_masks
from pruning.surgery import apply_structured_masks, slice_model

Score = Literal["sensitivity", "sensitivity_abs_sum", "platon"]
SCORES: tuple[Score, ...] = ("sensitivity", "sensitivity_abs_sum", "platon")
# How the student gets to its target widths (issue 4's baselines use the other two).
DistilPath = Literal["homotopic", "prune_first", "from_scratch"]
PATHS: tuple[DistilPath, ...] = ("homotopic", "prune_first", "from_scratch")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class DistillationModule(nn.Module):
    """The student encoder and one learned projection per hidden state.

    The training loop wraps this module in DDP and optimises all of it, so the
    projections stay in sync across ranks. Projection k maps the student's state
    k (embedding output first) onto the teacher's; each starts as the identity, so a
    student that equals its teacher starts with zero distillation loss.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        width, states = student.config.hidden_size, student.config.num_hidden_layers + 1
        self.projections = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(states))
        with torch.no_grad():
            for proj in self.projections:
                proj.weight.copy_(torch.eye(width))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> dict[str, list[Tensor]]:
        """ids [B, T] -> {"hidden_states": L + 1 projected [B, T, H],
        "attention_scores": L pre-softmax [B, h, T, T]}."""
        with capture_attention_scores(self.student) as scores:
            out = self.student(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids, output_hidden_states=True)
        projected = [proj(h) for proj, h in zip(self.projections, out.hidden_states)]
        return {"hidden_states": projected, "attention_scores": list(scores)}


class HomotopicDistiller(PruningMethod):
    """Stage a: prune a copy of the pre-trained encoder while distilling the original.

    `student`, `teacher`: BertModel, RobertaModel or XLMRobertaModel (no head) with the
    same weights; the student is pruned in place (masked LayerNorms, zeroed groups) and
    trained through `self.module`. Batches are unlabelled: input_ids, attention_mask,
    token_type_ids (may be absent, as XLM-R tokenizers give none).

    Loss: prediction_weight * KL(softmax(z_t / T) || softmax(z_s / T)) T^2 with z the
    mean-pooled last hidden state (our choice: the packaged encoders have no MLM head,
    and this is the sentence embedding they were trained to produce; the student's is
    taken after its last projection so pruned hidden dims do not count against it)
      + hidden_weight * sum over the L + 1 hidden states of MSE(H_t, proj_k(H_s))
      + attention_weight * sum over layers of attention_kl on the kept heads.
    The pooler is frozen: nothing in the loss reaches it (DDP would otherwise see an
    unused parameter); it is only sliced, and trained in stage b.

    Pruning: group scores (pruning.group_scores.raw_group_scores; `score` "sensitivity"
    = sum |w g|, "sensitivity_abs_sum" = |sum w g|, "platon" = EMA importance times
    EMA uncertainty with beta2 `uncertainty_beta`) are smoothed by an EMA of
    `ema_beta` after every optimizer step; every `update_every` steps each group type
    shrinks along the cubic schedule from full width to its target, reached after
    `prune_fraction_of_run` of the run (default pruning.schedules.END_FRACTION, as
    the unstructured methods' ramp). Targets: uniform widths whose whole-model
    parameter count is at most 1 - final_sparsity of the original (target_widths), or
    the explicit `widths` ({"hidden", "heads" | "head_size", "ffn"}: int or per layer).
    Budget widths of real-size models are multiples of `width_multiple` (16: the
    sliced matmuls run near the FLOP-ideal speed; odd widths lose a third, bench/speed.py).

    `path` is how the student reaches its target widths: "homotopic" (the method, as
    above), or one of two baselines with the same losses, corpus and steps:
    "prune_first" scores groups over the first `update_every` steps at full width,
    prunes to the target widths at once, then distils the pruned student (prune, then
    distil); "from_scratch" re-initialises the student (BERT's init) at the target
    widths from step 0 and only distils it (a dense model of the same shape distilled
    without the homotopic path, as TinyBERT's general distillation).
    """

    name = "homodistil"

    def __init__(
        self, student: nn.Module, *, teacher: nn.Module, total_steps: int, final_sparsity: float,
        attention_unit: AttentionUnit = "heads", shrink_hidden: bool = True, score: Score = "sensitivity",
        ema_beta: float = 0.85, uncertainty_beta: float = 0.95, prediction_weight: float = 1.0,
        hidden_weight: float = 1.0, attention_weight: float = 1.0, temperature: float = 1.0,
        update_every: int = 4, prune_fraction_of_run: float = END_FRACTION,
        widths: Mapping[str, int | Sequence[int]] | None = None, width_multiple: int = 16,
        path: DistilPath = "homotopic",
    ) -> None:
        if score not in SCORES or attention_unit not in ATTENTION_UNITS or path not in PATHS:
            raise ValueError(f"score must be one of {SCORES}, attention_unit one of {ATTENTION_UNITS} "
                             f"and path one of {PATHS}; got {score!r}, {attention_unit!r}, {path!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        s_cfg, t_cfg = student.config, teacher.config
        if (s_cfg.hidden_size, s_cfg.num_hidden_layers) != (t_cfg.hidden_size, t_cfg.num_hidden_layers):
            raise ValueError("HomoDistil's student must start as a copy of the teacher (same widths)")
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        if getattr(student, "pooler", None) is not None:
            student.pooler.requires_grad_(False)
        self.module = DistillationModule(student)
        self.full = Widths.of_config(s_cfg)
        self.target = (widths_from(s_cfg, widths, attention_unit=attention_unit) if widths is not None
                       else target_widths(s_cfg, 1.0 - final_sparsity, shrink_hidden=shrink_hidden,
                                          attention_unit=attention_unit, pooler=self._has_pooler(),
                                          multiple_of=width_multiple))
        self.schedule = CubicSchedule.over_run(total_steps, final_sparsity, update_every=update_every,
                                               end_fraction=prune_fraction_of_run)
        self.scores = GroupScores(ema_beta, uncertainty=score == "platon", beta2=uncertainty_beta)
        self.abs_of_sum = score == "sensitivity_abs_sum"
        self.weights = (prediction_weight, hidden_weight, attention_weight)
        self.temperature = temperature
        self.masks = StructuredMasks.full(self.full, attention_unit)
        self.step = 0
        self.path: DistilPath = path
        # prune_first: one cut to the target after `update_every` steps of scores.
        self.cut_step = min(update_every, total_steps) - 1
        if path == "from_scratch":
            reinitialise(student)
            self.masks = select_masks(_leading(self.masks), self.target, self.masks)
        apply_structured_masks(student, self.masks)  # installs the masked LayerNorms

    def _has_pooler(self) -> bool:
        return getattr(self.student, "pooler", None) is not None

    def _params_of(self, widths: Widths) -> int:
        return count_params_for(self.student.config, widths, pooler=self._has_pooler())

    def target_sparsity(self) -> float:
        """1 - (parameters of the target widths) / (parameters of the full model)."""
        return 1.0 - self._params_of(self.target) / self._params_of(self.full)

    def _follow_student(self) -> None:
        # The loop may move the student after the method is built; masks and teacher follow.
        device = next(self.student.parameters()).device
        if self.masks.hidden.device != device:
            flat = {k: v.to(device) for k, v in self.masks.to_flat().items()}
            self.masks = StructuredMasks.from_flat(flat)
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)

    def on_step_start(self, step: int) -> None:
        """Record the step (masks change in on_step_end, after the gradients exist)."""
        self.step = step
        self._follow_student()

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Distillation loss of `model` (self.module, possibly DDP-wrapped) on an unlabelled batch."""
        inputs = {k: batch[k] for k in _INPUTS if k in batch}
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        with torch.no_grad(), capture_attention_scores(self.teacher) as t_scores:
            t_hidden = self.teacher(**inputs, output_hidden_states=True).hidden_states
        out = model(**inputs)
        s_hidden, s_scores = out["hidden_states"], out["attention_scores"]
        prediction = losses.kl_logits(mean_pool(s_hidden[-1], mask), mean_pool(t_hidden[-1], mask),
                                      self.temperature)
        hidden = losses.hidden_states_mse(tuple(s_hidden), t_hidden)
        attention = torch.zeros((), device=prediction.device)
        for rows, s, t in zip(self.masks.attention_rows(), s_scores, t_scores):
            heads = rows.view(s.shape[1], -1).any(-1).float()
            if bool(heads.any()):
                attention = attention + losses.attention_kl(s, t, mask, heads)
        w_p, w_h, w_a = self.weights
        logs = {"prediction_loss": float(prediction.detach()), "hidden_loss": float(hidden.detach()),
                "attention_loss": float(attention.detach()),
                "kept_params": self._params_of(self.masks.widths()) / self._params_of(self.full)}
        return w_p * prediction + w_h * hidden + w_a * attention, logs

    def progress(self, step: int) -> float:
        """Fraction of the way from full to target widths after `step`: cubic, 0 -> 1."""
        return cubic_sparsity(step, 0.0, 1.0, self.schedule.start_step, self.schedule.end_step)

    def on_step_end(self, step: int) -> None:
        """After optimizer.step() and before zero_grad(): score, maybe prune, re-mask."""
        self._follow_student()
        if self.path == "homotopic" or (self.path == "prune_first" and step <= self.cut_step):
            self.scores.update(raw_group_scores(self.student, self.masks, abs_of_sum=self.abs_of_sum))
        if self.path == "homotopic" and self.schedule.is_update_step(step):
            widths = scheduled_widths(self.full, self.target, self.progress(step))
            self.masks = select_masks(self.scores.scores(), widths, self.masks)
        elif self.path == "prune_first" and step == self.cut_step:
            self.masks = select_masks(self.scores.scores(), self.target, self.masks)
        apply_structured_masks(self.student, self.masks)

    def mask_checksum(self) -> int:
        """A 63-bit digest of the current masks; the loop compares it across ranks."""
        return self.masks.checksum()

    def state_dict(self) -> dict[str, Tensor]:
        """CPU tensors: step, mask.*, score.importance.*, score.uncertainty.*, projection.<k>."""
        state = {"step": torch.tensor(self.step, dtype=torch.int64)}
        state |= {f"mask.{k}": v for k, v in self.masks.to_flat().items()}
        state |= {f"score.{k}": v.contiguous() for k, v in self.scores.state_dict().items()}
        # The loop may checkpoint only the student; the projections are needed to resume.
        state |= {f"projection.{k}": p.weight.detach().cpu().clone()
                  for k, p in enumerate(self.module.projections)}
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what state_dict returned; the masks are applied to the student."""
        sections = {p: {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
                    for p in ("mask.", "score.", "projection.")}
        expected = StructuredMasks.full(self.full, self.masks.attention_unit).to_flat()
        got = sections["mask."]
        if set(got) != set(expected) or any(got[k].shape != v.shape for k, v in expected.items()):
            raise ValueError(f"homodistil state does not fit this student: masks {sorted(got)}, "
                             f"expected {sorted(expected)} of the student's widths")
        self.masks, self.step = StructuredMasks.from_flat(got), int(state["step"])
        self.scores.load_state_dict(sections["score."])
        with torch.no_grad():
            for k, proj in enumerate(self.module.projections):
                proj.weight.copy_(sections["projection."][str(k)])
        self._follow_student()
        apply_structured_masks(self.student, self.masks)

    def export(self) -> CompactBertModel:
        """The student sliced to its current masks: a dense, physically smaller CompactBertModel
        (layout "roberta" for a RoBERTa / XLM-R student)."""
        return slice_model(self.student, self.masks)


def _leading(masks: StructuredMasks) -> dict[str, Tensor]:
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
