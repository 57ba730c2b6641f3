"""HomoDistil's prediction term: what the student's output is distilled on (METHODS.md section 2).

The paper's objective is L_mlm(student) + a1 * KL(teacher || student predictions) + ...,
its predictions the masked-LM head's: ~15% of the tokens are masked (BERT's 80/10/10),
the teacher's MLM logits at those positions are distilled at temperature T, and the
student also learns the masked tokens themselves ("mlm"). That needs the checkpoint's
MLM head (BertForMaskedLM's `cls`, RoBERTa's `lm_head`), which the student keeps during
the stage (pruned with the hidden dims) and drops at export.

Without a head (all-MiniLM-L6-v2 ships none) there is no prediction to distil. The
default is then "pooled_cosine": 1 - cos(mean-pooled last state of the student, after
its projection, and of the teacher). A mean-pooled last state compared by cosine is the
sentence embedding such encoders are trained and used for; the hidden-state MSE sums
per-token squared errors over all L + 1 states, in absolute units, so the direction of
the pooled output weighs little in it (the two vanish together, but the MSE can stay
while the embedding turns). "none" drops the term. The term this replaces, a softmax
over the pooled state's 384 features, is near uniform for features of that size: its KL
stayed under 0.01 while the embedding was 0.49 (cosine distance) off, so it changed
nothing against "none"; the cosine took that distance to 0.45 at the same hidden-state
MSE (24 steps to half the parameters; commit 9d38299's bench/results/homodistil_prediction.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning import losses
from pruning.features import mean_pool

Prediction = Literal["auto", "mlm", "pooled_cosine", "none"]
PREDICTIONS: tuple[Prediction, ...] = ("auto", "mlm", "pooled_cosine", "none")
MLM_HEADS = ("cls", "lm_head")  # BertForMaskedLM's, Roberta/XLMRobertaForMaskedLM's
MASK_FRACTIONS = (0.8, 0.1)  # of the chosen tokens: [MASK], a random token; the rest stay


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module | None, str | None]:
    """(encoder, MLM head, the head's attribute name) of a *ForMaskedLM model; (model, None,
    None) for a bare encoder. The head's decoder stays tied to the encoder's word embeddings."""
    for name in MLM_HEADS:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and hasattr(model, "base_model"):
            return model.base_model, head, name
    return model, None, None


def resolve(prediction: Prediction, has_head: bool) -> Prediction:
    """"auto" -> "mlm" with a head, "pooled_cosine" without; "mlm" without a head raises."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if prediction == "auto":
        return "mlm" if has_head else "pooled_cosine"
    if prediction == "mlm" and not has_head:
        raise ValueError("prediction 'mlm' needs a masked-LM head: load the student and teacher "
                         "with theirs (a checkpoint with cls.predictions.* or lm_head.* weights)")
    return prediction


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for the masking of optimizer step `step`: the same tokens on a rerun or
    a resume, without any state to checkpoint."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, generator: torch.Generator, *,
                probability: float, mask_token_id: int, vocab_size: int) -> tuple[Tensor, Tensor]:
    """BERT's masking of a batch: input_ids, attention_mask [B, T] -> (masked ids [B, T],
    chosen bool [B, T]).

    Each real token but a row's first and last ([CLS] / [SEP], <s> / </s>) is chosen with
    `probability` (at least one per batch, so the loss is defined); of the chosen, 80%
    become `mask_token_id`, 10% a random token, 10% stay. Draws come from `generator`
    on the CPU, so masks are the same on every device.
    """
    real = attention_mask.bool().cpu()
    last = real.long().cumsum(1).argmax(1, keepdim=True)  # each row's last real token
    eligible = real.clone()
    eligible[:, 0] = False
    eligible.scatter_(1, last, False)
    draw = torch.rand(input_ids.shape, generator=generator)
    chosen = eligible & (draw < probability)
    if not bool(chosen.any()) and bool(eligible.any()):
        chosen.view(-1)[draw.masked_fill(~eligible, 2.0).argmin()] = True
    kind = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.cpu().clone()
    to_mask, to_random = chosen & (kind < MASK_FRACTIONS[0]), chosen & (kind >= MASK_FRACTIONS[0]) & (
        kind < sum(MASK_FRACTIONS))
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked.to(input_ids.device), chosen.to(input_ids.device)


class PredictionTerm:
    """One distiller's prediction term: how its batches are masked and what is compared.

    `kind` as `resolve` returns it; `teacher_head`: the teacher's MLM head ("mlm" only);
    masks of step t come from step_generator(seed, t).
    """

    def __init__(self, kind: Prediction, *, teacher_head: nn.Module | None, mask_token_id: int | None,
                 vocab_size: int, probability: float, temperature: float, seed: int) -> None:
        if kind == "mlm" and mask_token_id is None:
            raise ValueError("prediction 'mlm' needs config.mask_token_id (the tokenizer's [MASK] id; "
                             "infra.models.pretrained.load_encoder sets it)")
        self.kind, self.teacher_head = kind, teacher_head
        self.mask_token_id, self.vocab_size, self.probability = mask_token_id, vocab_size, probability
        self.temperature, self.seed = temperature, seed

    def mask(self, input_ids: Tensor, attention_mask: Tensor, step: int) -> tuple[Tensor, Tensor | None]:
        """(the ids the models read [B, T], the masked positions bool [B, T] or None)."""
        if self.kind != "mlm":
            return input_ids, None
        return mask_tokens(input_ids, attention_mask, step_generator(self.seed, step),
                           probability=self.probability, mask_token_id=self.mask_token_id,
                           vocab_size=self.vocab_size)

    def losses(self, student: dict, t_hidden: tuple[Tensor, ...], attention_mask: Tensor,
               chosen: Tensor | None, input_ids: Tensor) -> dict[str, Tensor]:
        """{"prediction": [], and for "mlm" "mlm": the student's MLM loss []}.

        `student`: DistillationModule's output (its projected hidden states, "mlm_logits"
        [N, vocab] at `chosen`); t_hidden: the teacher's L + 1 states [B, T, H];
        input_ids: the original ids [B, T], the MLM targets.
        """
        if self.kind == "pooled_cosine":
            s_pooled = mean_pool(student["hidden_states"][-1], attention_mask)
            return {"prediction": losses.cosine_loss(s_pooled, mean_pool(t_hidden[-1], attention_mask))}
        if self.kind == "none":
            return {"prediction": t_hidden[-1].new_zeros(())}
        logits = student["mlm_logits"]
        with torch.no_grad():
            teacher = self.teacher_head(t_hidden[-1][chosen])
        return {"prediction": losses.kl_logits(logits, teacher, self.temperature),
                "mlm": F.cross_entropy(logits.float(), input_ids[chosen])}
