"""Time embeddings shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer position encoding of a scalar time (Vaswani et al. 2017, Sec. 3.5; as used
    for the step index by Ho et al. 2020, App. B): [cos(s t w_k), sin(s t w_k)] with
    w_k = max_period^(-k / (dim/2)).  ``scale`` maps t into the index range the frequencies
    were made for (1 for step indices 0..999, ~1000 for t in [0, 1])."""

    def __init__(self, dim: int, scale: float = 1.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * scale, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Gaussian random Fourier features (Tancik et al. 2020) of the time, the NCSN++ / score-SDE
    choice for continuous noise levels (Song et al. 2021, App. H): [sin(2 pi w t), cos(2 pi w t)]
    with fixed w ~ N(0, scale^2).  Feed it log sigma or t."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        # a buffer so that it is saved with the weights (it is not trained)
        self.register_buffer("w", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: Tensor) -> Tensor:
        arg = 2 * math.pi * t.float()[:, None] * self.w[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


def time_embedding(kind: str, dim: int, scale: float | None = None) -> nn.Module:
    """``sinusoidal`` (default scale 1) or ``fourier`` (default scale 16)."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, 1.0 if scale is None else scale)
    if kind == "fourier":
        return FourierEmbedding(dim, 16.0 if scale is None else scale)
    raise ValueError(f"unknown time embedding {kind!r}; valid: sinusoidal, fourier")


def time_mlp(kind: str, dim: int, emb_dim: int, scale: float | None = None) -> nn.Sequential:
    """The networks' time embedding: ``time_embedding(kind, dim)`` -> Linear -> SiLU -> Linear
    (Ho et al. 2020, App. B), ``dim`` -> ``emb_dim``."""
    return nn.Sequential(
        time_embedding(kind, dim, scale), nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
    )
