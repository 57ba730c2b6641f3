"""The order in which one rank sees a split's examples in one epoch: shuffled per (seed, epoch),
a disjoint, equal shard per rank, and optionally grouped by length so batches pad less.

The order is a pure function of (lengths, batch size, seed, epoch, rank, world size): a job
resumed mid-epoch skips the batches that epoch already trained on and meets the same ones
after them (infra.train.loop.stream_epochs).
"""

from __future__ import annotations

import numpy as np

# Batches whose examples are sorted by length together. Hugging Face's LengthGroupedSampler
# sorts 50 batches at a time as well: enough to pad little, few enough that which examples
# share a batch still changes every epoch.
MEGABATCH = 50


def rank_order(n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int,
               drop_last: bool, lengths: np.ndarray | None = None) -> np.ndarray:
    """Row indexes rank `rank` reads in epoch `epoch`, batch after batch ([n // world_size] or
    fewer with `drop_last`).

    `lengths` [n] (tokens per example) groups examples of similar length into the same batches:
    the epoch's shuffled examples are sorted by length within runs of MEGABATCH global batches
    (batch_size x world_size examples each), cut into global batches, and the global batches are
    shuffled; rank r takes examples r, r + world_size, ... of each global batch, so every rank
    steps through batches of similar length together. Without `lengths` the order is the one
    this function always gave (the same batches as before bucketing existed).
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size; got batch_size={batch_size}, "
                         f"rank={rank}, world_size={world_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    # Up to world_size - 1 examples (different ones each epoch when shuffled) sit out so
    # ranks stay disjoint and equal; evaluate with world_size=1 for exact metrics.
    per_rank = n // world_size
    kept = per_rank - per_rank % batch_size if drop_last else per_rank
    used = order[: kept * world_size]
    if lengths is not None:
        shuffle_batches = np.random.default_rng([seed, epoch, 1]) if shuffle else None
        used = by_length(used, np.asarray(lengths), batch_size * world_size, shuffle_batches)
    return used[rank::world_size]


def by_length(order: np.ndarray, lengths: np.ndarray, group: int,
              rng: np.random.Generator | None) -> np.ndarray:
    """`order` regrouped into batches of `group` examples of similar length: sorted by length
    within runs of MEGABATCH batches (ties keep their order in `order`), the full batches
    shuffled by `rng` (kept in length order when None); a last, partial batch stays last."""
    full = len(order) - len(order) % group
    run = group * MEGABATCH
    sorted_runs = [chunk[np.argsort(lengths[chunk], kind="stable")]
                   for chunk in np.split(order[:full], range(run, full, run))]
    groups = np.concatenate(sorted_runs).reshape(-1, group)
    if rng is not None:
        groups = groups[rng.permutation(len(groups))]
    return np.concatenate([groups.ravel(), order[full:]])
