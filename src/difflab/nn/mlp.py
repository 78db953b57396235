"""A residual MLP with a time embedding, for 2-D (or any flat) data."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from difflab.nn.embeddings import time_mlp


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb_dim, 2 * width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb(emb).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.drop(torch.nn.functional.silu(self.fc1(torch.nn.functional.silu(z)))))


class MLP(nn.Module):
    """``net(x, t, y=None) -> out`` for x of shape (B, dim): residual blocks whose LayerNorm is
    modulated (scale-shift) by an embedding of t (and of a class label y, if ``num_classes``).

    Args:
        dim: data dimension (2 for the toys).
        width, depth: hidden width and number of residual blocks.
        out_dim: output dimension (default ``dim``; ``2 * dim`` for learned variances).
        time_embedding / time_scale: see :func:`difflab.nn.embeddings.time_embedding`
            (for t in [0, 1] use a time scale ~1000 with the sinusoidal embedding).
        num_classes: adds a label embedding; label ``num_classes`` is the 'no label' token
            used by classifier-free guidance.
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 128,
        depth: int = 3,
        out_dim: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float | None = None,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            dim=dim,
            width=width,
            depth=depth,
            out_dim=out_dim,
            time_embedding=time_embedding,
            time_scale=time_scale,
            num_classes=num_classes,
            dropout=dropout,
        )
        emb_dim = width
        self.temb = time_mlp(time_embedding, width, emb_dim, time_scale)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_dim or dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = self.temb(t.to(x.dtype))
        if self.label is not None:
            if y is None:  # unconditional call: the null label
                y = torch.full((x.shape[0],), self.label.num_embeddings - 1, dtype=torch.long, device=x.device)
            emb = emb + self.label(y)
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, emb)
        return self.out(h)
