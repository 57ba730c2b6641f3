"""HomoDistil: homotopic distillation into a physically smaller BERT (Liang et al.,
ICLR 2023; METHODS.md section 2), in two stages, one module each.

Stage a, `HomotopicDistiller` (distillation.py, task-agnostic): the student starts as
an exact copy of the pre-trained teacher encoder and is distilled on unlabelled text
while its hidden dimensions, attention heads (or inner dimensions) and FFN neurons
are pruned a little at a time, by EMA-smoothed sensitivity, until the target widths;
`export()` slices it into a pruning.compact.CompactBertModel. The student and its
projections (and masked-LM head) are in student.py, the prediction term in prediction.py.

Stage b, `CompactFinetune` (finetuning.py): the compact model with a classifier is
fine-tuned on the task, distilling the fine-tuned teacher's logits.
"""

from pruning.methods.homodistil.distillation import (
    PATHS,
    SCORES,
    DistilPath,
    HomotopicDistiller,
    Score,
)
from pruning.methods.homodistil.finetuning import CompactFinetune
from pruning.methods.homodistil.prediction import PREDICTIONS, Prediction
from pruning.methods.homodistil.student import DistillationModule, reinitialise

__all__ = [
    "PATHS",
    "PREDICTIONS",
    "SCORES",
    "CompactFinetune",
    "DistilPath",
    "DistillationModule",
    "HomotopicDistiller",
    "Prediction",
    "Score",
    "reinitialise",
]
