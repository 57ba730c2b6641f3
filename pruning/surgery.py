"""Apply structured masks: zero them in place (a masked model) or slice them out.

`apply_structured_masks` keeps a regular BERT's shapes and makes it compute exactly
what `slice_model` computes with the pruned rows, columns, heads and hidden dims
physically removed; both read pruning.groups.group_layout. The sliced model is a
pruning.compact model that saves as safetensors and loads through the Auto classes.
RoBERTa / XLM-R encoders and classifiers are handled alike (pruning.layouts): the
compact model takes their layout, so it keeps their position ids and head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning.compact import CompactBertForSequenceClassification, CompactBertModel
from pruning.groups import StructuredMasks, group_layout
from pruning.layouts import to_compact_prefix


class MaskedLayerNorm(nn.LayerNorm):
    """LayerNorm over the kept hidden dims only; pruned dims come out exactly 0.

    A plain LayerNorm would take its mean and variance over all H dims, zeros
    included, where the sliced model's takes them over the kept dims. It shares the
    original's Parameters, so optimizers and state dicts are unaffected.

    It stays one fused layer_norm over all H dims: the pruned dims of the input are
    replaced by the kept dims' mean mu, so the mean over H is mu and the variance over
    H is k/H times the kept dims' variance. Scaling eps by k/H and the weight by
    sqrt(k/H) gives the kept dims' normalisation exactly; weight and bias are zeroed
    on pruned dims. Slicing the kept dims out and scattering them back costs ~7% of a
    forward on CPU (bench/speed.py's masked model); this costs a matrix-vector product
    and two cheap elementwise passes (~2%).
    """

    def __init__(self, source: nn.LayerNorm) -> None:
        nn.Module.__init__(self)
        self.normalized_shape, self.eps = source.normalized_shape, source.eps
        self.elementwise_affine = True
        self.weight, self.bias = source.weight, source.bias
        self.register_buffer("keep", torch.ones(self.weight.numel(), dtype=torch.bool,
                                                device=self.weight.device), persistent=False)
        self.pruned = False  # a Python flag: no device sync in forward
        self.kept_count = self.weight.numel()

    def set_keep(self, keep: Tensor) -> None:
        """keep: bool [H]."""
        self.kept_count = int(keep.sum())
        self.pruned = self.kept_count < keep.numel()
        self.keep = keep.to(device=self.weight.device, dtype=torch.bool)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., H] -> [..., H], zeros on pruned dims."""
        if not self.pruned:
            return super().forward(x)
        size, k = self.keep.numel(), self.kept_count
        kept = self.keep.to(x.dtype)  # [H]
        mean = (x @ kept).unsqueeze(-1) / k  # [..., 1]; pruned dims do not enter it
        filled = torch.addcmul(x * kept, mean, 1 - kept)  # pruned dims := mean
        scale = (k / size) ** 0.5
        return F.layer_norm(filled, (size,), self.weight * kept * scale, self.bias * kept,
                            self.eps * k / size)


def install_masked_layernorms(model: nn.Module) -> None:
    """Swap every nn.LayerNorm of `model` for a MaskedLayerNorm sharing its Parameters (idempotent)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.LayerNorm) and not isinstance(child, MaskedLayerNorm):
                setattr(module, name, MaskedLayerNorm(child))


@torch.no_grad()
def apply_structured_masks(model: nn.Module, masks: StructuredMasks) -> None:
    """Zero every pruned row, column and bias entry, and mask the LayerNorms.

    `model` is an unwrapped BertModel or BertForSequenceClassification (or their RoBERTa /
    XLM-R counterparts) of the masks' full widths. Afterwards it computes what
    slice_model(model, masks) computes, and pruned hidden dims are exactly 0 all along
    the residual stream. Idempotent.
    """
    install_masked_layernorms(model)
    vectors = masks.group_vectors()
    for module in model.modules():
        if isinstance(module, MaskedLayerNorm):
            module.set_keep(vectors["hidden"])
    params = dict(model.named_parameters())
    for name, groups in group_layout(list(params)).items():
        p = params[name]
        for dim, group in groups:
            keep = vectors[group].to(p.device)
            shape = [1] * p.ndim
            shape[dim] = keep.numel()
            p.masked_fill_(~keep.view(shape), 0.0)


def slice_state_dict(state: dict[str, Tensor], masks: StructuredMasks) -> dict[str, Tensor]:
    """Keep only the kept indices of every grouped dimension; other tensors as they are."""
    vectors = masks.group_vectors()
    index = {g: torch.nonzero(v).reshape(-1) for g, v in vectors.items()}
    sliced = dict(state)
    for name, groups in group_layout(list(state)).items():
        tensor = state[name]
        for dim, group in groups:
            tensor = tensor.index_select(dim, index[group].to(tensor.device))
        sliced[name] = tensor.contiguous()
    return sliced


@torch.no_grad()
def slice_model(
    model: nn.Module, masks: StructuredMasks
) -> CompactBertModel | CompactBertForSequenceClassification:
    """A physically smaller dense copy of `model` without the pruned groups.

    Args:
        model: unwrapped BertModel (-> CompactBertModel) or BertForSequenceClassification
            (-> CompactBertForSequenceClassification) of the masks' full widths; also
            RobertaModel / XLMRobertaModel and their sequence classifiers (-> layout
            "roberta": RoBERTa's position ids and head, encoder renamed to `bert`).
        masks: what to keep; its widths become the compact config's per-layer sizes.

    Returns:
        The compact model (same dtype and device, same train/eval mode), whose outputs
        equal the masked model's; the attention keeps the original 1/sqrt(head size).
    """
    full_head = model.config.hidden_size // model.config.num_attention_heads
    config = masks.widths().to_config(model.config, scaling_head_size=full_head)
    config._attn_implementation = model.config._attn_implementation
    has_head = hasattr(model, "classifier")
    compact = (CompactBertForSequenceClassification(config) if has_head
               else CompactBertModel(config, add_pooling_layer=model.pooler is not None))
    state = slice_state_dict(model.state_dict(), masks)
    if has_head:
        state = to_compact_prefix(state, model.base_model_prefix)
    compact.load_state_dict(state, strict=True)
    param = next(model.parameters())
    return compact.to(device=param.device, dtype=param.dtype).train(model.training)
