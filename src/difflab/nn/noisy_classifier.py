"""A noise-conditional classifier p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021,
Sec. 4 and App. C): the encoder half of the ADM U-Net (input conv, the down path of residual
blocks with scale-shift time conditioning and optional attention, the middle block), then
GroupNorm -> SiLU -> spatial pooling -> a linear layer to the class logits.  ADM pools with
attention ("attention pooling", as in CLIP); ``pool="mean"`` is the cheaper global average.

The blocks are the U-Net's own (:mod:`difflab.nn.unet`), imported, not copied.  The network
sees the library's continuous time t in [0, 1] (``time_scale`` maps it to the sinusoidal
embedding's index range, 1000 by default); it knows nothing of schedules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nn.embeddings import time_mlp
from difflab.nn.unet import AttentionBlock, Downsample, ResBlock, _norm

__all__ = ["AttentionPool", "NoisyClassifier"]


class AttentionPool(nn.Module):
    """Attention pooling (Radford et al. 2021, CLIP's ``AttentionPool2d``; ADM's ``pool="attention"``):
    the mean feature, plus a learned position embedding per pixel, queries all pixels."""

    def __init__(self, ch: int, pixels: int, head_channels: int) -> None:
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.pos = nn.Parameter(torch.randn(pixels + 1, ch) / ch**0.5)
        self.qkv = nn.Linear(ch, 3 * ch)

    def forward(self, h: Tensor) -> Tensor:
        B, C = h.shape[:2]
        seq = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        seq = torch.cat([seq.mean(1, keepdim=True), seq], dim=1) + self.pos.to(h.dtype)
        q, k, v = (t.reshape(B, -1, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(seq).chunk(3, dim=2))
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # the mean token queries
        return out.transpose(1, 2).reshape(B, C)


class NoisyClassifier(nn.Module):
    """``net(x_t, t) -> logits`` (B, num_classes), with t (B,) or scalar in [0, 1].

    Args mirror :class:`~difflab.nn.UNet` (``channels``, ``channel_mults``, ``num_res_blocks``,
    ``attention_resolutions``, ``image_size``, ``head_channels``, ``dropout``, ``groups``);
    ``num_classes`` is the number of classes, ``pool`` ``attention`` (ADM) or ``mean``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (),
        image_size: int = 28,
        head_channels: int = 32,
        dropout: float = 0.0,
        time_embedding_kind: str = "sinusoidal",
        time_scale: float = 1000.0,
        pool: str = "attention",
        groups: int = 32,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if pool not in ("attention", "mean"):
            raise ValueError(f"pool must be 'attention' or 'mean', got {pool!r}")
        levels = len(channel_mults)
        if levels < 1 or num_res_blocks < 1:
            raise ValueError("need at least one level and one residual block per level")
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1} ({levels} levels)")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            channels=channels,
            channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions),
            image_size=image_size,
            head_channels=head_channels,
            dropout=dropout,
            time_embedding_kind=time_embedding_kind,
            time_scale=time_scale,
            pool=pool,
            groups=groups,
        )
        self.num_classes = num_classes
        emb_dim = 4 * channels
        self.temb = time_mlp(time_embedding_kind, channels, emb_dim, time_scale)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        ch, res = channels, image_size
        for lvl, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(ch, channels * mult, emb_dim, dropout, groups))
                ch = channels * mult
                if res in attention_resolutions:
                    self.blocks.append(AttentionBlock(ch, head_channels, groups))
            if lvl < levels - 1:
                self.blocks.append(Downsample(ch))
                res //= 2
        self.blocks.extend(
            [ResBlock(ch, ch, emb_dim, dropout, groups), AttentionBlock(ch, head_channels, groups)]
        )  # ADM's middle block, minus its second ResBlock
        self.head_norm = _norm(ch, groups)
        self.pool = AttentionPool(ch, res * res, head_channels) if pool == "attention" else None
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = F.silu(self.temb(t.to(x.dtype))).to(x.dtype)
        h = self.inp(x)
        for m in self.blocks:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        h = F.silu(self.head_norm(h))
        h = self.pool(h) if self.pool is not None else h.mean(dim=(2, 3))
        return self.fc(h)

    def log_prob(self, x: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        """log p_phi(y | x_t, t) per sample, shape (B,): the ``log_prob`` that
        :func:`difflab.guidance.classifier_guidance` takes."""
        y = torch.as_tensor(y, device=x.device)
        if y.dim() == 0:
            y = y.expand(x.shape[0])
        if y.dtype.is_floating_point or bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"labels must be integers in 0..{self.num_classes - 1}, got {y.tolist()[:8]}")
        return torch.log_softmax(self(x, t).float(), dim=-1).gather(1, y.long()[:, None])[:, 0]
