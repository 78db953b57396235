"""Random numbers that do not depend on the batch size.

A sampling run is reproducible from an int seed *per sample*: sample j draws all of
its noise from its own ``torch.Generator`` seeded from (seed, j, stream), so the same
seed gives the same sample j whether it is drawn alone or in a batch of 10 000.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

GeneratorLike = int | torch.Generator | Sequence[torch.Generator] | None

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64 finaliser (Steele et al. 2014): a well-mixed 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """Seed of sample ``index`` in ``stream`` derived from ``seed`` (63-bit)."""
    h = _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ (index & _MASK)) ^ (stream & _MASK))
    return h >> 1


def sample_generators(seed: int, n: int, stream: int = 0, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per sample: ``sample_generators(s, n)[j]`` depends on (s, j, stream) only."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, j, stream)) for j in range(n)]


def randn(
    shape: Sequence[int],
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Standard normal noise of ``shape`` (batch first).

    generator: ``None`` (torch's global RNG), a ``torch.Generator``, an int seed (one
    stream per sample, batch-size invariant) or a list of one generator per sample.
    """
    shape = tuple(int(s) for s in shape)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if isinstance(generator, bool) or not isinstance(generator, int | Sequence):
        raise TypeError(
            f"generator must be None, an int seed, a torch.Generator or a list of them, got {type(generator).__name__}"
        )
    if isinstance(generator, int):
        generator = sample_generators(generator, shape[0], device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} samples; pass one per sample")
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=device) for g in generator])
