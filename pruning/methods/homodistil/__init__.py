"""HomoDistil: homotopic distillation into a physically smaller BERT (Liang et al.,
ICLR 2023; METHODS.md section 2), in two stages, one module each.

Stage a, `HomotopicDistiller` (distillation.py, task-agnostic): the student starts as
an exact copy of the pre-trained teacher encoder and is distilled on unlabelled text
while its hidden dimensions, attention heads (or inner dimensions) and FFN neurons
are pruned a little at a time, by EMA-smoothed sensitivity, until the target widths;
`export()` slices it into a pruning.compact.CompactBertModel.

Stage b, `CompactFinetune` (finetuning.py): the compact model with a classifier is
fine-tuned on the task, distilling the fine-tuned teacher's logits.
"""

from pruning.methods.homodistil.distillation import (
    PATHS,
    SCORES,
    DistillationModule,
    DistilPath,
    HomotopicDistiller,
    Score,
    reinitialise,
)
from pruning.methods.homodistil.finetuning import CompactFinetune

__all__ = [
    "PATHS",
    "SCORES",
    "CompactFinetune",
    "DistilPath",
    "DistillationModule",
    "HomotopicDistiller",
    "Score",
    "reinitialise",
]
