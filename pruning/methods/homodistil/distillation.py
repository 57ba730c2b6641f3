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
from pruning.features import capture_attention_scores
from pruning.group_scores import GroupScores, raw_group_scores
from pruning.groups import StructuredMasks, group_layout
from pruning.methods.base import Batch, PruningMethod
from pruning.methods.homodistil.prediction import Prediction, PredictionTerm, resolve, split_head
from pruning.methods.homodistil.student import DistillationModule, leading_scores, reinitialise
from pruning.schedules import END_FRACTION, CubicSchedule, cubic_sparsity
from pruning.sizing import scheduled_widths, target_widths, widths_from
from pruning.structured import select_masks
from pruning.surgery import apply_structured_masks, reslice, slice_model, slice_parameters_

Score = Literal["sensitivity", "sensitivity_abs_sum", "platon"]
SCORES: tuple[Score, ...] = ("sensitivity", "sensitivity_abs_sum", "platon")
# How the student gets to its target widths (issue 4's baselines use the other two).
DistilPath = Literal["homotopic", "prune_first", "from_scratch"]
PATHS: tuple[DistilPath, ...] = ("homotopic", "prune_first", "from_scratch")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class HomotopicDistiller(PruningMethod):
    """Stage a: prune a copy of the pre-trained encoder while distilling the original.

    `student`, `teacher`: BertModel, RobertaModel or XLMRobertaModel with the same
    weights, or their *ForMaskedLM (the head is used for the prediction term and dropped
    at export); the student is pruned in place (masked LayerNorms, zeroed groups), cut
    physically at each width update (`slice_in_run`), and trained through `self.module`.
    Batches are unlabelled: input_ids, attention_mask, token_type_ids (may be absent, as
    XLM-R tokenizers give none).

    Loss: prediction_weight * the prediction term (`prediction`, see
    pruning.methods.homodistil.prediction: "mlm" with a head: KL(teacher || student) of
    the MLM logits at the masked tokens at `temperature`, plus mlm_weight * the student's
    MLM loss there, ~`mlm_probability` of the tokens masked per step from a seed fixed at
    construction (torch.initial_seed(): the job's); "pooled_cosine" without one)
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

    `slice_in_run`: after each width update (`reshape`, called by the loop after the
    step) the pruned groups are cut out of the student, its projections and head, and
    out of the optimizer's state (pruning.surgery.reslice: the same Parameter objects),
    so later steps cost what the remaining widths cost; the model is the masked run's
    (up to float rounding). Not under DDP (a wrapper holds the old shapes): there the
    student stays masked. Masks, scores and checkpoints stay at the full widths.

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
        ema_beta: float = 0.85, uncertainty_beta: float = 0.95, prediction: Prediction = "auto",
        prediction_weight: float = 1.0, mlm_weight: float = 1.0, mlm_probability: float = 0.15,
        hidden_weight: float = 1.0, attention_weight: float = 1.0, temperature: float = 1.0,
        update_every: int = 4, prune_fraction_of_run: float = END_FRACTION,
        widths: Mapping[str, int | Sequence[int]] | None = None, width_multiple: int = 16,
        path: DistilPath = "homotopic", slice_in_run: bool = True,
    ) -> None:
        if score not in SCORES or attention_unit not in ATTENTION_UNITS or path not in PATHS:
            raise ValueError(f"score must be one of {SCORES}, attention_unit one of {ATTENTION_UNITS} "
                             f"and path one of {PATHS}; got {score!r}, {attention_unit!r}, {path!r}")
        if temperature <= 0 or not 0 < mlm_probability < 1:
            raise ValueError(f"need temperature > 0 and 0 < mlm_probability < 1, got {temperature}, "
                             f"{mlm_probability}")
        model = student
        (student, head, head_name), (teacher, self.teacher_head, _) = split_head(student), split_head(teacher)
        kind = resolve(prediction, head is not None and self.teacher_head is not None)
        s_cfg, t_cfg = student.config, teacher.config
        if (s_cfg.hidden_size, s_cfg.num_hidden_layers) != (t_cfg.hidden_size, t_cfg.num_hidden_layers):
            raise ValueError("HomoDistil's student must start as a copy of the teacher (same widths)")
        # The loader seeded the job (torch.initial_seed()): its masked tokens differ per seed.
        self.prediction = PredictionTerm(kind, teacher_head=self.teacher_head, temperature=temperature,
                                         mask_token_id=getattr(s_cfg, "mask_token_id", None),
                                         vocab_size=s_cfg.vocab_size, probability=mlm_probability,
                                         seed=torch.initial_seed())
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        if self.teacher_head is not None:
            self.teacher_head.eval().requires_grad_(False)
        if getattr(student, "pooler", None) is not None:
            student.pooler.requires_grad_(False)
        self.module = DistillationModule(student, head if kind == "mlm" else None, head_name)
        self.full = Widths.of_config(s_cfg)
        self.target = (widths_from(s_cfg, widths, attention_unit=attention_unit) if widths is not None
                       else target_widths(s_cfg, 1.0 - final_sparsity, shrink_hidden=shrink_hidden,
                                          attention_unit=attention_unit, pooler=self._has_pooler(),
                                          multiple_of=width_multiple))
        self.schedule = CubicSchedule.over_run(total_steps, final_sparsity, update_every=update_every,
                                               end_fraction=prune_fraction_of_run)
        self.scores = GroupScores(ema_beta, uncertainty=score == "platon", beta2=uncertainty_beta)
        self.abs_of_sum = score == "sensitivity_abs_sum"
        self.weights = (prediction_weight, mlm_weight, hidden_weight, attention_weight)
        self.masks = StructuredMasks.full(self.full, attention_unit)
        self.present: StructuredMasks | None = None  # the groups the student still holds; None: all
        self.slice_in_run, self.wrapped = slice_in_run, False
        self.step = 0
        self.path: DistilPath = path
        # prune_first: one cut to the target after `update_every` steps of scores.
        self.cut_step = min(update_every, total_steps) - 1
        if path == "from_scratch":
            reinitialise(model)  # the MLM head too, when there is one
            self.masks = select_masks(leading_scores(self.masks), self.target, self.masks)
        apply_structured_masks(self.module, self.masks)  # installs the masked LayerNorms
        if path == "from_scratch" and slice_in_run:  # before any optimizer or DDP sees it
            self._cut(self.masks, None)

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
            move = lambda m: StructuredMasks.from_flat(  # noqa: E731
                {k: v.to(device) for k, v in m.to_flat().items()})
            same, self.masks = self.present is self.masks, move(self.masks)
            self.present = self.masks if same else (None if self.present is None else move(self.present))
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
            if self.teacher_head is not None:
                self.teacher_head.to(device)

    def on_step_start(self, step: int) -> None:
        """Record the step (masks change in on_step_end, after the gradients exist)."""
        self.step = step
        self._follow_student()

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Distillation loss of `model` (self.module, possibly DDP-wrapped) on an unlabelled batch."""
        self.wrapped = self.wrapped or model is not self.module  # a wrapper keeps the shapes it saw
        inputs = {k: batch[k] for k in _INPUTS if k in batch}
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        inputs["input_ids"], chosen = self.prediction.mask(inputs["input_ids"], mask, self.step)
        with torch.no_grad(), capture_attention_scores(self.teacher) as t_scores:
            t_hidden = self.teacher(**inputs, output_hidden_states=True).hidden_states
        out = model(**inputs, predict_at=chosen)
        terms = self.prediction.losses(out, t_hidden, mask, chosen, batch["input_ids"])
        terms["hidden"] = losses.hidden_states_mse(tuple(out["hidden_states"]), t_hidden)
        terms["attention"] = self._attention(out["attention_scores"], t_scores, mask)
        weights = dict(zip(("prediction", "mlm", "hidden", "attention"), self.weights))
        logs = {f"{k}_loss": float(v.detach()) for k, v in terms.items()}
        logs["kept_params"] = self._params_of(self.masks.widths()) / self._params_of(self.full)
        total = sum((weights[k] * v for k, v in terms.items()), start=torch.zeros((), device=mask.device))
        return total, logs

    def _attention(self, s_scores: list[Tensor], t_scores: list[Tensor], mask: Tensor) -> Tensor:
        """Sum over layers of attention_kl on the heads the masks keep; the student's scores
        cover the heads it holds, and a layer cut to no attention computes none."""
        total = torch.zeros((), device=mask.device)
        held = None if self.present is None else self.present.attention_rows()
        student = iter(s_scores)
        for i, (rows, t) in enumerate(zip(self.masks.attention_rows(), t_scores)):
            n = t.shape[1]
            there = (torch.ones(n, dtype=torch.bool, device=rows.device) if held is None
                     else held[i].view(n, -1).any(-1))  # the heads the student holds [h]
            if not bool(there.any()):
                continue
            s, heads = next(student), rows.view(n, -1).any(-1)[there].float()
            if bool(heads.any()):
                total = total + losses.attention_kl(s, t if bool(there.all()) else t[:, there], mask, heads)
        return total

    def progress(self, step: int) -> float:
        """Fraction of the way from full to target widths after `step`: cubic, 0 -> 1."""
        return cubic_sparsity(step, 0.0, 1.0, self.schedule.start_step, self.schedule.end_step)

    def on_step_end(self, step: int) -> None:
        """After optimizer.step() and before zero_grad(): score, maybe prune, re-mask."""
        self._follow_student()
        if self.path == "homotopic" or (self.path == "prune_first" and step <= self.cut_step):
            self.scores.update(raw_group_scores(self.student, self.masks, abs_of_sum=self.abs_of_sum,
                                                present=self.present))
        if self.path == "homotopic" and self.schedule.is_update_step(step):
            widths = scheduled_widths(self.full, self.target, self.progress(step))
            self.masks = select_masks(self.scores.scores(), widths, self.masks)
        elif self.path == "prune_first" and step == self.cut_step:
            self.masks = select_masks(self.scores.scores(), self.target, self.masks)
        if self.masks is not self.present:  # a student cut to its masks has nothing to zero
            apply_structured_masks(self.module, self.masks, present=self.present)

    def reshape(self, optimizer: torch.optim.Optimizer) -> bool:
        """After the step: cut what the masks dropped out of the student, its projections and
        head, and out of `optimizer`'s state (`slice_in_run`, not under DDP). True if it did."""
        held = self.full if self.present is None else self.present.widths()
        if not self.slice_in_run or self.wrapped or self.masks.widths() == held:
            return False
        self._cut(self.masks, optimizer)
        return True

    def _cut(self, masks: StructuredMasks, optimizer: torch.optim.Optimizer | None) -> None:
        """Slice the module down to `masks` in place (pruning.surgery.reslice); self.masks
        must keep no more than `masks` do."""
        self.student = self.module.student = reslice(self.student, masks, present=self.present,
                                                     optimizer=optimizer)
        rest = [n for n, _ in self.module.named_parameters() if not n.startswith("student.")]
        layout = group_layout(rest) | {f"projections.{k}.weight": ((1, "hidden"),)
                                       for k in range(len(self.module.projections))}
        slice_parameters_(self.module, masks, present=self.present, layout=layout, optimizer=optimizer)
        self.present = masks
        apply_structured_masks(self.module, self.masks, present=self.present)

    def mask_checksum(self) -> int:
        """A 63-bit digest of the current masks; the loop compares it across ranks."""
        return self.masks.checksum()

    def state_dict(self) -> dict[str, Tensor]:
        """CPU tensors: step, mask.*, score.importance.*, score.uncertainty.*, projection.<k>,
        and present.* (the groups the student holds) once it was cut."""
        state = {"step": torch.tensor(self.step, dtype=torch.int64)}
        state |= {f"mask.{k}": v for k, v in self.masks.to_flat().items()}
        state |= {f"score.{k}": v.contiguous() for k, v in self.scores.state_dict().items()}
        # The loop may checkpoint only the student; the projections are needed to resume.
        state |= {f"projection.{k}": p.weight.detach().cpu().clone()
                  for k, p in enumerate(self.module.projections)}
        if self.present is not None:
            state |= {f"present.{k}": v.clone() for k, v in self.present.to_flat().items()}
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what state_dict returned: a student that was cut is cut alike here (load this
        before the module's weights, which then have its shapes); the masks are applied."""
        sections = {p: {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
                    for p in ("mask.", "score.", "projection.", "present.")}
        expected = StructuredMasks.full(self.full, self.masks.attention_unit).to_flat()
        got = sections["mask."]
        if set(got) != set(expected) or any(got[k].shape != v.shape for k, v in expected.items()):
            raise ValueError(f"homodistil state does not fit this student: masks {sorted(got)}, "
                             f"expected {sorted(expected)} of the student's widths")
        self.masks, self.step = StructuredMasks.from_flat(got), int(state["step"])
        self._follow_student()
        if sections["present."]:
            device = self.masks.hidden.device
            present = StructuredMasks.from_flat({k: v.to(device) for k, v in sections["present."].items()})
            if present.checksum() == self.masks.checksum():
                present = self.masks  # one object: on_step_end then knows there is nothing to zero
            if self.present is None or present.checksum() != self.present.checksum():
                self._cut(present, None)
        self.scores.load_state_dict(sections["score."])
        with torch.no_grad():
            for k, proj in enumerate(self.module.projections):
                proj.weight.copy_(sections["projection."][str(k)])
        apply_structured_masks(self.module, self.masks, present=self.present)

    def export(self) -> CompactBertModel:
        """The student sliced to its current masks: a dense, physically smaller CompactBertModel
        (layout "roberta" for a RoBERTa / XLM-R student); a masked-LM head stays behind."""
        return slice_model(self.student, self.masks, present=self.present)
