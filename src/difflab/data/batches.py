"""Minibatches whose order is a pure function of (seed, step): exact resume needs no loader state."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffling of epoch ``epoch``: a permutation of range(n) from (seed, epoch) alone."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=g)


def batch_stream(
    tensors: dict[str, Tensor],
    batch_size: int,
    seed: int = 0,
    start_step: int = 0,
) -> Iterator[dict[str, Tensor]]:
    """Endless minibatches of the aligned ``tensors`` (same first dimension), reshuffled every epoch.

    Batch ``k`` holds the items at positions ``k*B .. k*B + B - 1`` of the concatenation of
    epoch permutations (a batch may straddle two epochs), so starting at ``start_step``
    yields exactly what the uninterrupted stream yields from there on.
    """
    if not tensors:
        raise ValueError("cannot draw batches from no tensors")
    sizes = {k: v.shape[0] for k, v in tensors.items()}
    n = next(iter(sizes.values()))
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n < 1:
        raise ValueError("cannot draw batches from an empty data set")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the tensors of a data set must have the same length, got {sizes}")
    pos = start_step * batch_size
    epoch, off = divmod(pos, n)
    perm = epoch_permutation(n, seed, epoch)
    while True:
        idx = []
        need = batch_size
        while need:
            take = min(need, n - off)
            idx.append(perm[off : off + take])
            off += take
            need -= take
            if off == n:
                epoch, off = epoch + 1, 0
                perm = epoch_permutation(n, seed, epoch)
        i = torch.cat(idx)
        yield {k: v[i] for k, v in tensors.items()}


def batches(
    data: Tensor,
    labels: Tensor | None,
    batch_size: int,
    seed: int = 0,
    start_step: int = 0,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Endless minibatches ``(x, y)`` of ``data`` (and ``labels``): :func:`batch_stream` of the pair."""
    if labels is not None and labels.shape[0] != data.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {data.shape[0]} data points")
    tensors = {"x": data} if labels is None else {"x": data, "y": labels}
    for b in batch_stream(tensors, batch_size, seed, start_step):
        yield b["x"], b.get("y")
