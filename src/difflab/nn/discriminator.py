"""A patch discriminator: image in, a map of real/fake logits out, one per overlapping patch
(PatchGAN, Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
Networks", Sec. 3.2.2; the ``NLayerDiscriminator`` that taming-transformers and latent
diffusion (Esser et al. 2021; Rombach et al. 2022) put behind their autoencoders).

Layout: conv4x4 stride 2 -> LeakyReLU(0.2), then ``n_layers - 1`` times conv4x4 stride 2 ->
norm -> LeakyReLU with the width doubling (at most 8x), one conv4x4 stride 1 -> norm ->
LeakyReLU, and a conv4x4 stride 1 to one logit channel.  Weights start N(0, 0.02), norm scales
N(1, 0.02) (pix2pix's ``weights_init``).

Optionally conditioned on a time / noise level ``t`` (for discriminators of noisy images, e.g.
Diffusion-GAN, Wang et al. 2023): a time embedding (:func:`difflab.nn.embeddings.time_mlp`)
projected to a per-channel bias added after every hidden layer's normalisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from difflab.nn.embeddings import time_mlp
from difflab.nn.unet import _norm

__all__ = ["PatchDiscriminator"]

NORMS = ("batch", "group", "none")


class PatchDiscriminator(nn.Module):
    """``D(x, t=None) -> (B, 1, h, w)`` logits.

    Args:
        in_channels: image channels.
        channels: width of the first layer.
        n_layers: stride-2 layers (each halves the size; the receptive field grows with them:
            70x70 pixels for 3, pix2pix's default; 2 suits 28x28 images).
        norm: ``batch`` (pix2pix, LDM), ``group`` (batch-independent) or ``none``.
        time_embedding: ``None`` (unconditional), ``sinusoidal`` or ``fourier``: condition on t.
        time_scale: the time embedding's scale (as the U-Net's).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        time_embedding: str | None = None,
        time_scale: float | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if n_layers < 1 or channels < 1 or in_channels < 1:
            raise ValueError(f"need n_layers, channels, in_channels >= 1, got {n_layers}, {channels}, {in_channels}")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            channels=channels,
            n_layers=n_layers,
            norm=norm,
            time_embedding=time_embedding,
            time_scale=time_scale,
        )
        widths = [channels * min(2**i, 8) for i in range(n_layers + 1)]
        self.inp = nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            self.convs.append(nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=norm == "none"))
            self.norms.append(
                nn.BatchNorm2d(widths[i])
                if norm == "batch"
                else _norm(widths[i], 32)
                if norm == "group"
                else nn.Identity()
            )
        self.out = nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1)
        self.temb = self.t_proj = None
        if time_embedding is not None:
            emb_dim = 4 * channels
            self.temb = time_mlp(time_embedding, channels, emb_dim, time_scale)
            self.t_proj = nn.ModuleList(nn.Linear(emb_dim, w) for w in [widths[0], *widths[1:]])
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"expected images (B, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")
        emb = None
        if self.temb is not None:
            if t is None:
                raise ValueError("this discriminator is time-conditioned (time_embedding set): pass t")
            t = t.expand(x.shape[0]) if t.dim() == 0 else t
            emb = torch.nn.functional.silu(self.temb(t)).to(x.dtype)
        elif t is not None:
            raise ValueError("this discriminator is not time-conditioned; build it with time_embedding to pass t")
        h = self.inp(x)
        if emb is not None:
            h = h + self.t_proj[0](emb)[:, :, None, None]
        h = nn.functional.leaky_relu(h, 0.2)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h))
            if emb is not None:
                h = h + self.t_proj[i + 1](emb)[:, :, None, None]
            h = nn.functional.leaky_relu(h, 0.2)
        return self.out(h)
