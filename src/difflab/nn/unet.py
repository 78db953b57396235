"""A U-Net in the DDPM / ADM style (Ho et al. 2020, App. B; Nichol & Dhariwal 2021;
Dhariwal & Nichol 2021, Sec. 3):

- residual blocks GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> (1 + scale) * h + shift from the
  time (and label) embedding ("adaptive group normalisation", ADM) -> SiLU -> dropout -> conv3x3,
  the last conv zero-initialised so every block starts as the identity;
- a sinusoidal or Fourier time embedding followed by a 2-layer MLP;
- multi-head self-attention (and, with ``context_dim``, cross-attention to a context sequence
  as in Rombach et al. 2022, Sec. 3.3) at chosen resolutions, computed with
  ``scaled_dot_product_attention``;
- skip connections from every down block to the matching up block;
- optional class-label embedding (label ``num_classes`` = no label, for classifier-free
  guidance) and learned-variance output channels (Nichol & Dhariwal 2021, Sec. 3.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nn.embeddings import MicroConditioning, time_mlp


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    g = min(groups, ch)
    while ch % g:
        g -= 1
    return nn.GroupNorm(g, ch, eps=1e-6)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """ADM residual block with scale-shift conditioning (Dhariwal & Nichol 2021, Sec. 3);
    ``emb_dim=None`` drops the conditioning (the plain ResNet block of the LDM autoencoder)."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout) if emb_dim is not None else None
        self.norm2 = _norm(cout, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels (Vaswani et al. 2017; Ho et al. 2020 use it at
    16x16), optionally followed by cross-attention to a context sequence (Rombach et al. 2022)."""

    def __init__(self, ch: int, head_channels: int, groups: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = max(1, ch // head_channels)
        if ch % self.heads:
            raise ValueError(
                f"an attention block of {ch} channels cannot be split into heads of {head_channels} channels; "
                "choose head_channels dividing every attended level's width (channels x channel_mults)"
            )
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))
        self.cross = None
        if context_dim:  # None (or 0 / false in a config): no cross-attention
            self.cross_norm = _norm(ch, groups)
            self.cross_q = nn.Linear(ch, ch)
            self.cross_kv = nn.Linear(context_dim, 2 * ch)
            self.cross = _zero(nn.Linear(ch, ch))

    def _split(self, t: Tensor) -> Tensor:  # (B, L, C) -> (B, heads, L, C/heads)
        B, L, C = t.shape
        return t.reshape(B, L, self.heads, C // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)
        a = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        x = x + self.proj(a.transpose(1, 2).reshape(B, H * W, C).transpose(1, 2).reshape(B, C, H, W))
        if self.cross is not None:
            if context is None:
                raise ValueError("this U-Net has cross-attention (context_dim set): pass context=(B, L, context_dim)")
            h = self.cross_norm(x).flatten(2).transpose(1, 2)
            ck, cv = self.cross_kv(context.to(x.dtype)).chunk(2, dim=2)
            mask = None if context_mask is None else context_mask[:, None, None, :].bool()
            a = F.scaled_dot_product_attention(
                self._split(self.cross_q(h)), self._split(ck), self._split(cv), attn_mask=mask
            )
            x = x + self.cross(a.transpose(1, 2).reshape(B, H * W, C)).transpose(1, 2).reshape(B, C, H, W)
        return x


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetEncoder(nn.Module):
    """The encoder half of a U-Net, shared by :class:`UNet` and
    :class:`~difflab.nn.controlnet.ControlNet`: the time (label, micro-conditioning) embedding
    and the input convolution, down blocks and middle block.  Subclasses own the modules
    ``temb``, ``label``, optionally ``micro``, ``inp``, ``down`` and ``mid``, and ``image_size``."""

    def embed(self, x: Tensor, t: Tensor, y: Tensor | None = None, micro_cond: Tensor | None = None) -> Tensor:
        """The embedding every residual block is conditioned on: SiLU(time + label + micro)."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = self.temb(t)
        if self.label is not None:
            if y is None:  # no label: the null token (classifier-free guidance's unconditional model)
                y = torch.full((x.shape[0],), self.label.num_embeddings - 1, dtype=torch.long, device=x.device)
            emb = emb + self.label(y)
        micro = getattr(self, "micro", None)
        if micro is not None:
            if micro_cond is None:  # an uncropped image at the native size
                size = float(self.image_size)
                micro_cond = x.new_tensor([size, size, 0.0, 0.0, size, size]).expand(x.shape[0], 6)
            emb = emb + micro(micro_cond)
        elif micro_cond is not None:
            raise ValueError("micro_cond given, but this U-Net was built without micro_conditioning")
        return F.silu(emb).to(x.dtype)

    def _run(self, blk: nn.ModuleList, h: Tensor, emb: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        for m in blk:
            if isinstance(m, ResBlock):
                h = m(h, emb)
            elif isinstance(m, AttentionBlock):
                h = m(h, context, mask)
            else:
                h = m(h)
        return h

    def encode(
        self, h: Tensor, emb: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """From the input features ``h`` = inp(x) (plus a hint's, in a ControlNet): the skip
        tensors (h and every down block's output) and the middle block's output."""
        hs = [h]
        for blk in self.down:
            h = self._run(blk, h, emb, context, context_mask)
            hs.append(h)
        return hs, self._run(self.mid, h, emb, context, context_mask)


class UNet(UNetEncoder):
    """``net(x, t, y=None, context=None, context_mask=None) -> out`` for images (B, C, H, W).

    Args:
        in_channels: image channels.
        channels: width at the top level; level l has ``channels * channel_mults[l]``.
        channel_mults: one per resolution level (each level after the first halves H, W).
        num_res_blocks: residual blocks per level on the way down (one more on the way up,
            as in ADM); an int or one per level.
        attention_resolutions: feature-map sizes (in pixels, given ``image_size``) that get
            self-attention; the middle block always has it.
        image_size: the (square) input size the attention resolutions refer to.
        head_channels: channels per attention head.
        dropout: dropout inside the residual blocks.
        time_embedding / time_scale: ``sinusoidal`` (scale 1: step indices; use ~1000 for t in
            [0, 1]) or ``fourier`` (scale 16: log sigma or t).
        num_classes: class-conditional via a label embedding added to the time embedding.
        context_dim: adds cross-attention to ``context`` (B, L, context_dim) in attention blocks.
        learned_variance: doubles the output channels (mean prediction, then variance interpolation).
        groups: GroupNorm groups (fewer when a width is not divisible).
        input_skip: add ``c_skip(t) * x`` to the output, ``c_skip`` a zero-initialised linear function
            of the time embedding: a learned analogue of EDM's skip connection (Karras et al. 2022,
            eq. 7).  At high noise an eps-prediction net must return eps_hat = x_t with gain exactly 1
            whatever the amplitude of x_t, which GroupNorm (it divides each sample's amplitude out)
            makes hard to learn; ``benchmarks/train_quality.py`` measures the effect on samples.
        micro_conditioning: SDXL's size and crop conditioning (Podell et al. 2023, Sec. 2.2):
            ``micro_cond`` (B, 6) = (original height, width, crop top, left, target height, width)
            in pixels, each Fourier-embedded and added to the time embedding
            (:class:`~difflab.nn.embeddings.MicroConditioning`).  Default when not passed: an
            uncropped image of the native size, (S, S, 0, 0, S, S).

    Control hooks (ControlNet, Zhang et al. 2023): ``down_residuals`` (one tensor per skip
    connection, shaped as the skips) are added to the skips and ``mid_residual`` to the middle
    block's output; see :mod:`difflab.nn.controlnet`.  Without them the network is unchanged.

    Where the FLOPs go: a 3x3 convolution costs ``H * W * C_in * C_out``, so a block at 32x32
    costs 16 times one of the same width at 8x8.  For fast training on a CPU put the blocks
    (and the parameters) at the low resolutions, e.g. for 32x32 images
    ``channel_mults=(1, 2, 2, 3), num_res_blocks=(1, 1, 2, 2)`` and ``net.to(memory_format=
    torch.channels_last)``: 1.8x the parameters of diffusers' 3-level ``UNet2DModel`` at 0.77x
    its FLOPs (``benchmarks/train_throughput.py``, ``benchmarks/train_quality.py``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int | Sequence[int] = 2,
        attention_resolutions: Sequence[int] = (),
        image_size: int = 32,
        head_channels: int = 32,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        time_scale: float | None = None,
        num_classes: int | None = None,
        context_dim: int | None = None,
        learned_variance: bool = False,
        groups: int = 32,
        input_skip: bool = False,
        micro_conditioning: bool = False,
    ) -> None:
        super().__init__()
        levels = len(channel_mults)
        nrb = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if levels < 1 or len(nrb) != levels or min(nrb) < 1:
            raise ValueError(f"need one num_res_blocks >= 1 per level, got {num_res_blocks!r} for {levels} levels")
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1} ({levels} levels)")
        resolutions = [image_size // 2**i for i in range(levels)]
        bad = sorted(set(attention_resolutions) - set(resolutions))
        if bad:
            raise ValueError(f"attention_resolutions {bad} are not among the feature-map sizes {resolutions}")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            channels=channels,
            channel_mults=list(channel_mults),
            num_res_blocks=nrb,
            attention_resolutions=list(attention_resolutions),
            image_size=image_size,
            head_channels=head_channels,
            dropout=dropout,
            time_embedding=time_embedding,
            time_scale=time_scale,
            num_classes=num_classes,
            context_dim=context_dim,
            learned_variance=learned_variance,
            groups=groups,
            input_skip=input_skip,
        )
        if micro_conditioning:  # only when on: the configs (and checksums) of other U-Nets stay as they were
            self.config["micro_conditioning"] = True
        self.in_channels, self.image_size = in_channels, image_size
        self.out_channels = in_channels * (2 if learned_variance else 1)
        emb_dim = 4 * channels
        self.temb = time_mlp(time_embedding, channels, emb_dim, time_scale)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        if micro_conditioning:  # an attribute only when on, so other U-Nets keep their parameter names
            self.micro = MicroConditioning(emb_dim, channels)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, head_channels, groups, context_dim)

        self.down = nn.ModuleList()
        skips = [channels]
        ch = channels
        for lvl, mult in enumerate(channel_mults):
            for _ in range(nrb[lvl]):
                blk = nn.ModuleList([ResBlock(ch, channels * mult, emb_dim, dropout, groups)])
                ch = channels * mult
                if resolutions[lvl] in attention_resolutions:
                    blk.append(attn(ch))
                self.down.append(blk)
                skips.append(ch)
            if lvl < levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.skip_channels: list[int] = list(skips)  # what a ControlNet's zero convolutions feed
        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout, groups), attn(ch), ResBlock(ch, ch, emb_dim, dropout, groups)]
        )
        self.up = nn.ModuleList()
        for lvl in reversed(range(levels)):
            mult = channel_mults[lvl]
            for i in range(nrb[lvl] + 1):
                blk = nn.ModuleList([ResBlock(ch + skips.pop(), channels * mult, emb_dim, dropout, groups)])
                ch = channels * mult
                if resolutions[lvl] in attention_resolutions:
                    blk.append(attn(ch))
                if lvl > 0 and i == nrb[lvl]:
                    blk.append(Upsample(ch))
                self.up.append(blk)
        self.out = nn.Sequential(_norm(ch, groups), nn.SiLU(), _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1)))
        self.c_skip = _zero(nn.Linear(emb_dim, in_channels)) if input_skip else None

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        micro_cond: Tensor | None = None,
        down_residuals: Sequence[Tensor] | None = None,
        mid_residual: Tensor | None = None,
    ) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        emb = self.embed(x, t, y, micro_cond)
        hs, h = self.encode(self.inp(x), emb, context, context_mask)
        if down_residuals is not None:  # ControlNet (Zhang et al. 2023, eq. 2): added to every skip
            if len(down_residuals) != len(hs):
                raise ValueError(
                    f"down_residuals needs one tensor per skip connection ({len(hs)}), got {len(down_residuals)}"
                )
            hs = [a + r for a, r in zip(hs, down_residuals)]
        if mid_residual is not None:
            h = h + mid_residual
        for blk in self.up:
            h = self._run(blk, torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
        out = self.out(h)
        if self.c_skip is not None:  # on the prediction channels (not the learned-variance ones)
            skip = self.c_skip(emb)[:, :, None, None] * x
            out = torch.cat([out[:, : self.in_channels] + skip, out[:, self.in_channels :]], dim=1)
        return out
