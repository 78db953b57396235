"""Random numbers that do not depend on the batch size.

A run seeded with an int draws sample j's noise from its own counter-based stream:
the e-th number of the k-th draw of sample j is a hash of (key_j, k, e) pushed through
Box-Muller, with key_j = SplitMix64(seed, j, stream) (Steele et al. 2014; the counter-based
idea of Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3").  So the same
seed gives the same sample j whether it is drawn alone or in a batch of 10 000, at the
cost of a few integer operations per number, fully vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

GeneratorLike = int | torch.Generator | Sequence[torch.Generator] | None

_MASK = (1 << 64) - 1
_GOLDEN, _C1, _C2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _splitmix64(z: int) -> int:
    """SplitMix64 finaliser on Python ints (the reference for the tensor version)."""
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _C1) & _MASK
    z = ((z ^ (z >> 27)) * _C2) & _MASK
    return z ^ (z >> 31)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _srl(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(z: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors (wrap-around arithmetic mod 2^64)."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _srl(z, 30)) * _signed(_C1)
    z = (z ^ _srl(z, 27)) * _signed(_C2)
    return z ^ _srl(z, 31)


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """Key of sample ``index`` in ``stream`` derived from ``seed`` (a signed 64-bit int)."""
    h = _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ (index & _MASK)) ^ (stream & _MASK))
    return _signed(h)


def sample_keys(seed: int, n: int, stream: int = 0) -> Tensor:
    """Keys of samples 0..n-1 (int64), each depending on (seed, j, stream) only."""
    j = torch.arange(n, dtype=torch.int64)
    s = torch.tensor(_signed(_splitmix64(seed & _MASK)), dtype=torch.int64)
    return splitmix64(splitmix64(s ^ j) ^ _signed(stream & _MASK))


def counter_randn(keys: Tensor, counter: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Draw number ``counter`` of every stream: standard normals of shape (len(keys), *shape)."""
    n = math.prod(shape)
    e = torch.arange(n, dtype=torch.int64, device=keys.device)
    base = splitmix64(keys[:, None] ^ splitmix64(torch.tensor(counter, dtype=torch.int64, device=keys.device)))
    bits1 = splitmix64(base ^ (2 * e))
    bits2 = splitmix64(base ^ (2 * e + 1))
    scale = 2.0**-53
    u1 = (_srl(bits1, 11).to(torch.float64) + 0.5) * scale  # in (0, 1)
    u2 = _srl(bits2, 11).to(torch.float64) * scale
    z = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return z.to(dtype).reshape(len(keys), *shape)


class NoiseStreams:
    """Per-sample counter-based streams for one run: ``next(shape)`` gives fresh noise."""

    def __init__(self, seed: int, n: int, stream: int = 0, device: str | torch.device = "cpu") -> None:
        self.keys = sample_keys(seed, n, stream).to(device)
        self.counter = 0

    def next(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        out = counter_randn(self.keys, self.counter, shape, dtype)
        self.counter += 1
        return out


def check_generator(generator: GeneratorLike, batch: int) -> None:
    """Raise a clear error for a generator argument that is not usable for ``batch`` samples."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, bool) or not isinstance(generator, int | Sequence):
        raise TypeError(
            f"generator must be None, an int seed, a torch.Generator or a list of them, got {type(generator).__name__}"
        )
    if isinstance(generator, Sequence) and (
        len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator)
    ):
        raise ValueError(f"a list of generators needs one torch.Generator per sample ({batch}), got {len(generator)}")


def randn(
    shape: Sequence[int],
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Standard normal noise of ``shape`` (batch first).

    generator: ``None`` (torch's global RNG), a ``torch.Generator``, an int seed (one
    counter-based stream per sample: batch-size invariant) or a list of one generator
    per sample.
    """
    shape = tuple(int(s) for s in shape)
    check_generator(generator, shape[0])
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if isinstance(generator, int):
        return NoiseStreams(generator, shape[0], device=device).next(shape[1:], dtype)
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=device) for g in generator])
