"""The layer-dropped dense control: the pretrained encoder with whole layers removed to
about the non-zero count of a pruned model, fine-tuned (and by default distilled) on
the task like the pruned methods (issue 17's "smaller dense model of equal non-zero count").
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from pruning import losses
from pruning.methods.base import Batch, PruningMethod

LayerChoice = Literal["spread", "bottom", "top"]
LAYER_CHOICES: tuple[LayerChoice, ...] = ("spread", "bottom", "top")


def kept_layers(num_layers: int, keep: int, choice: LayerChoice = "spread") -> list[int]:
    """Indices of the `keep` encoder layers (of `num_layers`) to keep, increasing.

    "spread": evenly spaced and ending with the last layer (every other one for half,
    as DistilBERT's initialisation); "bottom": the first `keep`; "top": the last `keep`.
    """
    if choice not in LAYER_CHOICES:
        raise ValueError(f"layer choice must be one of {LAYER_CHOICES}, got {choice!r}")
    if not 1 <= keep <= num_layers:
        raise ValueError(f"can keep 1 to {num_layers} layers, not {keep}")
    if choice == "bottom":
        return list(range(keep))
    if choice == "top":
        return list(range(num_layers - keep, num_layers))
    # Steps of num_layers / keep >= 1 keep the rounded indices distinct; floor(x + 0.5)
    # instead of round() so that halves go up (no banker's rounding).
    return [math.floor((i + 1) * num_layers / keep + 0.5) - 1 for i in range(keep)]


def layers_for_sparsity(num_layers: int, sparsity: float) -> int:
    """Encoder layers whose weights about match an encoder pruned to `sparsity`:
    round(L * (1 - sparsity)), at least 1 (embeddings, pooler and head stay in both)."""
    return max(1, round(num_layers * (1.0 - sparsity)))


def drop_layers(model: nn.Module, indices: list[int]) -> nn.Module:
    """Keep only the encoder layers `indices` (increasing) of `model`, in place.

    `model`: a BERT-like classifier or encoder (`base_model.encoder.layer`). The config's
    num_hidden_layers follows (a saved model reloads with that depth) and each kept
    layer's attention learns its new position (`layer_idx`, used by caches).
    """
    encoder = model.base_model.encoder
    layers = list(encoder.layer)
    if not indices or sorted(set(indices)) != list(indices) or indices[-1] >= len(layers):
        raise ValueError(f"layer indices must be increasing, within 0..{len(layers) - 1}: {indices}")
    encoder.layer = nn.ModuleList([layers[i] for i in indices])
    model.config.num_hidden_layers = len(indices)
    for position, layer in enumerate(encoder.layer):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    return model


class LayerDropped(PruningMethod):
    """Drop encoder layers of the pretrained student, then fine-tune it, distilling the teacher.

    The student (pretrained weights, new head) keeps `keep_layers` of its L encoder
    layers; None: layers_for_sparsity(L, final_sparsity), about the non-zero count of
    the grid's pruned models at that sparsity. Which layers: `layer_choice` (kept_layers).
    The default "spread" keeps the last layer: in the packaged all-MiniLM-L6-v2 (trained
    with mean pooling) the [CLS] state the classifier reads is the same for every input
    until the last layer (its spread across examples is 0.1-2.5% of its norm after layers
    1-5, 53% after layer 6), so the bottom layers alone ("bottom", the usual baseline,
    the old bench control) leave a head that cannot learn: it predicted one class.

    Loss: task loss + kd_weight * KL(teacher || student) of the logits at `temperature`
    (MSE of the logits for regression), as HomoDistil's task stage; kd_weight = 0 is
    plain fine-tuning and skips the teacher's forward. Nothing is masked: the encoder's
    sparsity is 0, and `final_sparsity` only sizes the depth.
    """

    name = "layerdrop"

    def __init__(self, student: nn.Module, *, teacher: nn.Module, final_sparsity: float,
                 keep_layers: int | None = None, layer_choice: LayerChoice = "spread",
                 kd_weight: float = 1.0, temperature: float = 1.0) -> None:
        if kd_weight < 0 or temperature <= 0:
            raise ValueError(f"need kd_weight >= 0 and temperature > 0, got {kd_weight}, {temperature}")
        if teacher is student:
            raise ValueError("the teacher must be the fine-tuned model, not the student itself")
        total = student.config.num_hidden_layers
        keep = layers_for_sparsity(total, final_sparsity) if keep_layers is None else keep_layers
        self.layers = kept_layers(total, keep, layer_choice)
        super().__init__(drop_layers(student, self.layers))
        self.teacher = teacher.eval().requires_grad_(False)
        self.kd_weight, self.temperature = kd_weight, temperature

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Task loss + kd_weight * logit distillation; both as logs."""
        if "labels" not in batch:
            raise ValueError(f"batch has no 'labels' (keys: {sorted(batch)}); the task loss needs them")
        out = model(**batch)
        logs = {"task_loss": float(out.loss.detach())}
        if self.kd_weight == 0:
            return out.loss, logs
        device = out.logits.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher = self.teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        kd = (losses.mse_logits(out.logits, teacher) if out.logits.shape[-1] == 1
              else losses.kl_logits(out.logits, teacher, self.temperature))
        logs["kd_loss"] = float(kd.detach())
        return out.loss + self.kd_weight * kd, logs
