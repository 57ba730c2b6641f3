"""Apply structured masks: zero them in place (a masked model) or slice them out.

`apply_structured_masks` keeps a regular BERT's shapes and makes it compute exactly
what `slice_model` computes with the pruned rows, columns, heads and hidden dims
physically removed; both read pruning.groups.group_layout. The sliced model is a
pruning.compact model that saves as safetensors and loads through the Auto classes.
RoBERTa / XLM-R encoders and classifiers are handled alike (pruning.layouts): the
compact model takes their layout, so it keeps their position ids and head.
`reslice` cuts a model mid-training instead: the compact model it returns holds the
model's own Parameter objects, cut in place with the optimizer's state, so a run that
slices at every width update trains on at the cost of the remaining widths.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning.compact import CompactBertForSequenceClassification, CompactBertModel
from pruning.groups import StructuredMasks, group_layout
from pruning.layouts import to_compact_prefix

Groups = tuple[tuple[int, str], ...]  # (dim, group) pairs of one parameter (group_layout)


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
def apply_structured_masks(model: nn.Module, masks: StructuredMasks, *,
                           present: StructuredMasks | None = None) -> None:
    """Zero every pruned row, column and bias entry, and mask the LayerNorms.

    `model` is an unwrapped BertModel or BertForSequenceClassification (or their RoBERTa /
    XLM-R counterparts) of the masks' full widths, or (`present`) the compact model
    `reslice` cut it to. Afterwards it computes what slice_model(model, masks) computes,
    and pruned hidden dims are exactly 0 all along the residual stream. Idempotent.
    """
    install_masked_layernorms(model)
    vectors = masks.group_vectors(present)
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


def _kept_index(masks: StructuredMasks, present: StructuredMasks | None) -> dict[str, Tensor]:
    """Group -> int64 [kept count]: the kept positions among those the model holds."""
    return {g: torch.nonzero(v).reshape(-1) for g, v in masks.group_vectors(present).items()}


def _cut(tensor: Tensor, groups: Groups, index: dict[str, Tensor]) -> Tensor:
    for dim, group in groups:
        tensor = tensor.index_select(dim, index[group].to(tensor.device))
    return tensor.contiguous()


def slice_state_dict(state: dict[str, Tensor], masks: StructuredMasks, *,
                     present: StructuredMasks | None = None) -> dict[str, Tensor]:
    """Keep only the kept indices of every grouped dimension; other tensors as they are.
    `present`: the state is of a model already cut to these groups (reslice)."""
    index = _kept_index(masks, present)
    sliced = dict(state)
    for name, groups in group_layout(list(state)).items():
        sliced[name] = _cut(state[name], groups, index)
    return sliced


def _compact_like(model: nn.Module, masks: StructuredMasks
                  ) -> CompactBertModel | CompactBertForSequenceClassification:
    """A new compact model of the masks' widths, with `model`'s head (or none) and config."""
    # The original head's 1/sqrt(size) stays the softmax scale (a compact model keeps its own).
    scaling = (getattr(model.config, "scaling_head_size", None)
               or model.config.hidden_size // model.config.num_attention_heads)
    config = masks.widths().to_config(model.config, scaling_head_size=scaling)
    config._attn_implementation = model.config._attn_implementation
    if hasattr(model, "classifier"):
        return CompactBertForSequenceClassification(config)
    return CompactBertModel(config, add_pooling_layer=model.pooler is not None)


@torch.no_grad()
def slice_model(
    model: nn.Module, masks: StructuredMasks, *, present: StructuredMasks | None = None
) -> CompactBertModel | CompactBertForSequenceClassification:
    """A physically smaller dense copy of `model` without the pruned groups.

    Args:
        model: unwrapped BertModel (-> CompactBertModel) or BertForSequenceClassification
            (-> CompactBertForSequenceClassification) of the masks' full widths; also
            RobertaModel / XLMRobertaModel and their sequence classifiers (-> layout
            "roberta": RoBERTa's position ids and head, encoder renamed to `bert`); or,
            with `present`, the compact model `reslice` cut one of them to.
        masks: what to keep; its widths become the compact config's per-layer sizes.
        present: the groups `model` still holds (None: all of the masks' full widths).

    Returns:
        The compact model (same dtype and device, same train/eval mode), whose outputs
        equal the masked model's; the attention keeps the original 1/sqrt(head size).
    """
    compact = _compact_like(model, masks)
    state = slice_state_dict(model.state_dict(), masks, present=present)
    if hasattr(model, "classifier"):
        state = to_compact_prefix(state, model.base_model_prefix)
    compact.load_state_dict(state, strict=True)
    param = next(model.parameters())
    return compact.to(device=param.device, dtype=param.dtype).train(model.training)


@torch.no_grad()
def slice_parameters_(module: nn.Module, masks: StructuredMasks, *, present: StructuredMasks | None = None,
                      layout: Mapping[str, Groups] | None = None,
                      optimizer: torch.optim.Optimizer | None = None) -> None:
    """Cut the pruned groups out of `module`'s parameters in place.

    Every parameter named in `layout` (default: group_layout of the module's parameter
    names) keeps its Parameter object, its data cut to the kept indices of each grouped
    dim, so an optimizer's parameter list stays valid; the optimizer's state tensors of
    the parameter's shape (AdamW's moments) are cut alike and the gradient is dropped.
    nn.Linear, nn.Embedding and nn.LayerNorm sizes follow their weights (a MaskedLayerNorm
    keeps all of its new width until masks are applied again). Modules whose sizes live
    in a config (BERT's self-attention) need a new module around the cut parameters:
    `reslice`. `present`: the groups the parameters hold now (None: the full widths).
    """
    index = _kept_index(masks, present)
    params = dict(module.named_parameters())
    for name, groups in (group_layout(list(params)) if layout is None else layout).items():
        if name not in params:  # a tied weight, cut under the name it was registered with
            continue
        param = params[name]
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == param.shape:
                state[key] = _cut(value, groups, index)
        param.grad = None
        _swap(name, param, nn.Parameter(_cut(param.detach(), groups, index),
                                        requires_grad=param.requires_grad))
    for child in module.modules():
        _follow_sizes(child)


def _swap(name: str, param: nn.Parameter, cut: nn.Parameter) -> None:
    # A swap, not `param.data = cut`: autograd caches a gradient accumulator of the old shape
    # on the parameter while a graph that used it lives (the loop's last loss, after backward).
    try:
        torch.utils.swap_tensors(param, cut)
    except RuntimeError as error:
        raise RuntimeError(f"cannot cut {name}: a graph that was never backpropagated still holds "
                           f"it; run backward on (or drop) every loss first ({error})") from None


def _follow_sizes(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
        if isinstance(module, MaskedLayerNorm):
            module.set_keep(torch.ones(module.weight.numel(), dtype=torch.bool))


@torch.no_grad()
def reslice(model: nn.Module, masks: StructuredMasks, *, present: StructuredMasks | None = None,
            optimizer: torch.optim.Optimizer | None = None
            ) -> CompactBertModel | CompactBertForSequenceClassification:
    """`model` cut to `masks` in place, inside a compact model of the kept widths.

    Unlike slice_model (a copy), the compact model holds `model`'s own Parameter
    objects, cut by slice_parameters_ (the optimizer's state with them), so training goes
    on where it stood at a cost that shrinks with the widths. `model` (as slice_model
    takes it, `present` the groups it holds) must not be used afterwards; its
    buffers (position ids) move over. Returns the compact model, same mode as `model`.
    """
    slice_parameters_(model, masks, present=present, optimizer=optimizer)
    with torch.device("meta"):  # no memory and no initialisation: every tensor is replaced
        shell = _compact_like(model, masks)
    prefix = model.base_model_prefix if hasattr(model, "classifier") else ""
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    own = to_compact_prefix(own, prefix)
    for name, tensor in list(shell.named_parameters()) + list(shell.named_buffers()):
        if name not in own:
            raise ValueError(f"{type(model).__name__} has no {name} to move into the compact model")
        owner, _, leaf = name.rpartition(".")
        target = shell.get_submodule(owner)
        if isinstance(tensor, nn.Parameter):
            setattr(target, leaf, own[name])
        else:
            target._buffers[leaf] = own[name]
    return shell.train(model.training)
