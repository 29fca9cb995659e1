"""Minibatches as slices of tensors already on the training device (no per-item Dataset calls)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def iterate_batches(
    x: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    binarize: bool = False,
    first: int = 0,
    shard: tuple[int, int] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield (b, D) batches covering x once, in a fresh random order when ``shuffle``.

    ``binarize`` draws a new Bernoulli sample of every batch (dynamic binarisation). The permutation is
    drawn on the CPU with ``generator`` so the order is the same on every device for a given seed.
    ``first`` skips that many batches of the pass (an interrupted epoch resumed: the generator, restored to
    its state at the epoch's start, draws the same permutation). ``shard`` = (rank, world): yield only this
    rank's share of each batch (every world-th example from the rank-th), the permutation being the same on
    every rank; a batch with fewer examples than ranks is skipped on all of them.
    """
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    for start in range(first * batch_size, n, batch_size):
        stop = min(n, start + batch_size)
        if shard is not None and stop - start < shard[1]:
            continue
        index = order[start:stop] if shuffle else torch.arange(start, stop, device=x.device)
        if shard is not None:
            index = index[shard[0] :: shard[1]]
        batch = x[index] if shuffle or shard is not None else x[start:stop]
        # rand < p is a Bernoulli(p) draw; it runs about 3x faster than torch.bernoulli on the CPU.
        yield (torch.rand(batch.shape, device=batch.device) < batch).to(batch.dtype) if binarize else batch


def num_batches(n: int, batch_size: int) -> int:
    """Batches per pass over n examples (the last one may be smaller)."""
    return -(-n // batch_size)
