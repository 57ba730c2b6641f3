"""What the distillation losses compare, taken from a model's forward pass.

transformers returns hidden states and (post-softmax) attentions, not everything a
loss needs, so forward hooks collect the rest: the pre-softmax attention scores of
every layer, or any module's output (a classifier's logits, a pooler's output).
The losses themselves are in pruning.losses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from pruning import losses


def self_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention blocks of a BERT-like encoder, in layer order.

    A block is a module with `query` and `key` nn.Linear children and a
    `num_attention_heads` attribute (BertSelfAttention, RobertaSelfAttention, ...).
    """
    inner = model.module if hasattr(model, "module") else model
    found = [m for m in inner.modules()
             if isinstance(getattr(m, "query", None), nn.Linear)
             and isinstance(getattr(m, "key", None), nn.Linear)
             and hasattr(m, "num_attention_heads")]
    if not found:
        raise ValueError(f"{type(inner).__name__} has no BERT-like self-attention "
                         "(query/key projections); distilling attention scores needs one")
    return found


@contextmanager
def capture_attention_scores(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the pre-softmax attention scores of every layer during a forward pass.

    transformers returns post-softmax attentions (and none at all under SDPA), so
    forward hooks take the outputs of W_q and W_k [B, T, H] and the scores are
    Q K^T / sqrt(d_head) per head, as BertSelfAttention computes them before adding
    the mask (a compact model: over its original head size). Yields a list that holds one
    [B, h, T, T] tensor per layer after the forward; the hooks are removed on exit.
    """
    scores: list[Tensor] = []
    hooks = []
    for attention in self_attention_modules(model):
        pending: dict[str, Tensor] = {}

        def on_query(_m, _i, out, pending=pending):
            pending["q"] = out

        # A compact model's narrowed heads keep the original head's scale.
        scale_dim = getattr(getattr(attention, "config", None), "scaling_head_size", None)

        def on_key(_m, _i, out, pending=pending, heads=attention.num_attention_heads, scale=scale_dim):
            scores.append(losses.attention_scores(pending.pop("q"), out, heads, scale))

        hooks += [attention.query.register_forward_hook(on_query),
                  attention.key.register_forward_hook(on_key)]
    try:
        yield scores
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def capture_output(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect `module`'s forward outputs (one per call, e.g. logits [B, C]) while the
    block runs; the hook is removed on exit."""
    seen: list[Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        yield seen
    finally:
        hook.remove()


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """hidden [B, T, H], mask [B, T] -> [B, H], the mean over real tokens."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
