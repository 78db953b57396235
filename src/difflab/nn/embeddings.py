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


class MicroConditioning(nn.Module):
    """SDXL's micro-conditioning (Podell et al. 2023, Sec. 2.2, "Micro-Conditioning"): a few
    scalars describing the training image -- its original size (h, w) before rescaling, the crop
    (top, left) cut from it and the target size (h, w) -- each embedded by the sinusoidal
    (Fourier) features used for time (``dim`` each, frequencies for integer pixel counts), the
    embeddings concatenated and mapped by Linear -> SiLU -> Linear to ``emb_dim``, to be added to
    the time embedding (SDXL's ``add_time_proj`` / ``add_embedding``).  The concatenation keeps
    the slots apart: (h, w) = (20, 28) and (28, 20) embed differently."""

    def __init__(self, emb_dim: int, dim: int = 64, num_values: int = 6) -> None:
        super().__init__()
        self.num_values = num_values
        self.fourier = SinusoidalEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(num_values * dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def features(self, values: Tensor) -> Tensor:
        """The concatenated Fourier features (B, num_values * dim) of values (B, num_values)."""
        if values.dim() != 2 or values.shape[1] != self.num_values:
            raise ValueError(
                f"micro-conditioning needs (B, {self.num_values}) values (original h, w, crop top, left, "
                f"target h, w), got {tuple(values.shape)}"
            )
        return self.fourier(values.reshape(-1)).reshape(values.shape[0], -1)

    def forward(self, values: Tensor) -> Tensor:
        return self.mlp(self.features(values).to(self.mlp[0].weight.dtype))
