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
) -> Iterator[torch.Tensor]:
    """Yield (b, D) batches covering x once, in a fresh random order when ``shuffle``.

    ``binarize`` draws a new Bernoulli sample of every batch (dynamic binarisation). The permutation is
    drawn on the CPU with ``generator`` so the order is the same on every device for a given seed.
    ``first`` skips that many batches of the pass (an interrupted epoch resumed: the generator, restored to
    its state at the epoch's start, draws the same permutation).
    """
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    for start in range(first * batch_size, n, batch_size):
        batch = x[order[start : start + batch_size]] if shuffle else x[start : start + batch_size]
        # rand < p is a Bernoulli(p) draw; it runs about 3x faster than torch.bernoulli on the CPU.
        yield (torch.rand(batch.shape, device=batch.device) < batch).to(batch.dtype) if binarize else batch


def num_batches(n: int, batch_size: int) -> int:
    """Batches per pass over n examples (the last one may be smaller)."""
    return -(-n // batch_size)
