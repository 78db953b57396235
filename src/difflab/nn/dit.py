"""The diffusion transformer, DiT (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"), following the structure of its reference ``models.py``:

- **patchify** (Sec. 3.2): the (C, H, W) input is cut into (H/p)(W/p) patches of p x p pixels,
  each linearly embedded to ``hidden_size`` (the paper's stride-p convolution is exactly a linear
  map of each flattened patch), plus a fixed 2-D sine-cosine position embedding (MAE's,
  He et al. 2022);
- **adaLN-Zero blocks** (Sec. 3.2, Fig. 3): the time embedding plus the class embedding, c,
  regresses six vectors per block, (shift, scale, gate) for the attention and for the MLP:
  ``x += gate_msa * Attn((1 + scale_msa) LN(x) + shift_msa)``, the same for the MLP; the
  regression is zero-initialised, so every block starts as the identity, and so is the final
  layer, so a fresh DiT outputs exactly zero;
- the class embedding has one extra "null" row (label ``num_classes``) for classifier-free
  guidance, as in the paper (and as difflab's U-Net);
- optional cross-attention to a context sequence (text tokens) after the self-attention, the
  way PixArt-alpha (Chen et al. 2024, Sec. 2.3) extends DiT: ``x += CrossAttn(LN(x), context)``
  with its output projection zero-initialised;
- optional learned variance: twice the output channels (Nichol & Dhariwal 2021), as the
  paper's ``learn_sigma``.

Attention uses ``torch.nn.functional.scaled_dot_product_attention``.  The modulations and the
gated residuals are fused multiply-adds (``torch.addcmul``): one pass over the activations
instead of two, which is where a CPU step spends the time not spent in matrix products
(``benchmarks/dit_throughput.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nn.embeddings import time_mlp

__all__ = ["DIT_SIZES", "DiT", "patchify", "sincos_pos_embed_2d", "unpatchify"]

#: (depth, hidden_size, num_heads): the paper's S, B, L, XL (Table 1) and two smaller ones for CPUs
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "T": (4, 128, 4),
    "XS": (6, 256, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C): patches in row-major order, each flattened as
    (row within the patch, column, channel), the layout the paper's ``unpatchify`` inverts."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
    x = x.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: Tensor, p: int, channels: int, h: int, w: int) -> Tensor:
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p), the inverse of :func:`patchify` (Peebles & Xie's
    ``unpatchify``)."""
    B, T, D = tokens.shape
    if h * w != T or p * p * channels != D:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not form a {h}x{w} grid of {p}x{p}x{channels} patches")
    x = tokens.reshape(B, h, w, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * p, w * p)


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.reshape(-1, 1).double() * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (grid_size^2, dim), MAE's
    ``get_2d_sincos_pos_embed`` as used by DiT: half the channels encode the column, half the row,
    each as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim/4))."""
    if dim % 4:
        raise ValueError(f"the 2-D position embedding needs hidden_size divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    gw, gh = torch.meshgrid(coords, coords, indexing="xy")  # MAE: np.meshgrid(grid_w, grid_h)
    return torch.cat([_sincos_1d(dim // 2, gw), _sincos_1d(dim // 2, gh)], dim=1).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """(1 + scale) * x + shift with per-sample vectors (B, D) over the tokens of x (B, T, D)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)  # no affine parameters: adaLN supplies them


class Attention(nn.Module):
    """Multi-head self-attention over the tokens (fused q, k, v projection)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    """Attention from the tokens to a context sequence (B, L, context_dim) (Rombach et al. 2022,
    Sec. 3.3; PixArt-alpha's placement in a DiT block); the output projection starts at zero."""

    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        B, T, D = x.shape
        L, d = context.shape[1], D // self.heads
        q = self.q(self.norm(x)).reshape(B, T, self.heads, d).transpose(1, 2)
        k, v = self.kv(context.to(x.dtype)).reshape(B, L, 2, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None if mask is None else mask[:, None, None, :].bool()
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(a.transpose(1, 2).reshape(B, T, D))


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning (Peebles & Xie 2023, Fig. 3, right)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, context_dim: int | None) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.cross = CrossAttention(dim, heads, context_dim) if context_dim is not None else None
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Linear(dim, 6 * dim)  # applied to SiLU(c), computed once per forward

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = torch.addcmul(x, gate_msa[:, None], self.attn(_modulate(_layer_norm(x), shift_msa, scale_msa)))
        if self.cross is not None:
            x = x + self.cross(x, context, mask)  # type: ignore[arg-type]
        return torch.addcmul(x, gate_mlp[:, None], self.mlp(_modulate(_layer_norm(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of each token to its p x p x C_out patch."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(_layer_norm(x), shift, scale))


class DiT(nn.Module):
    """``net(x, t, y=None, context=None, context_mask=None) -> out`` for (B, C, H, W) inputs
    (images or autoencoder latents) with H = W = ``input_size``.

    Args:
        input_size: height = width of the input.
        patch_size: p; the input becomes (input_size / p)^2 tokens.
        in_channels: input channels (4 for Stable Diffusion's latents, 1 for grey images).
        hidden_size, depth, num_heads: the transformer's width, number of blocks and heads;
            or ``size`` = one of :data:`DIT_SIZES` (``"T"``, ``"XS"``, ``"S"``, ``"B"``, ``"L"``,
            ``"XL"``) to take all three from the table (DiT-S/2 is ``size="S", patch_size=2``).
        mlp_ratio: MLP width / hidden_size.
        num_classes: class-conditional through a label embedding added to the time embedding;
            label ``num_classes`` is the null label (classifier-free guidance).
        context_dim: adds cross-attention to ``context`` (B, L, context_dim) in every block.
        learned_variance: doubles the output channels (the paper's ``learn_sigma``).
        time_embedding / time_scale: as the U-Net (:func:`difflab.nn.embeddings.time_mlp`;
            sinusoidal scale 1 for step indices, as DiT's 256 frequencies).
        frequency_dim: width of the sinusoidal time features (DiT: 256).
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        context_dim: int | None = None,
        learned_variance: bool = False,
        time_embedding: str = "sinusoidal",
        time_scale: float | None = None,
        frequency_dim: int = 256,
        size: str | None = None,
    ) -> None:
        super().__init__()
        if size is not None:
            if size not in DIT_SIZES:
                raise ValueError(f"unknown DiT size {size!r}; valid: {', '.join(DIT_SIZES)}")
            given = [k for k, v in (("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads)) if v]
            if given:
                raise ValueError(f"give either size={size!r} or {', '.join(given)}, not both")
        depth_, hidden_, heads_ = DIT_SIZES[size or "S"]
        depth, hidden_size, num_heads = depth or depth_, hidden_size or hidden_, num_heads or heads_
        if patch_size < 1 or input_size < 1 or input_size % patch_size:
            raise ValueError(
                f"input_size {input_size} is not divisible by patch_size {patch_size} "
                f"(valid patch sizes: {[p for p in range(1, input_size + 1) if input_size % p == 0]})"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by 4 (2-D sin-cos position embedding)")
        if depth < 1 or in_channels < 1:
            raise ValueError(f"need depth >= 1 and in_channels >= 1, got depth={depth}, in_channels={in_channels}")
        self.config: dict[str, Any] = dict(
            input_size=input_size,
            patch_size=patch_size,
            in_channels=in_channels,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
            context_dim=context_dim,
            learned_variance=learned_variance,
            time_embedding=time_embedding,
            time_scale=time_scale,
            frequency_dim=frequency_dim,
        )
        self.in_channels, self.patch_size, self.input_size = in_channels, patch_size, input_size
        self.out_channels = in_channels * (2 if learned_variance else 1)
        self.grid = input_size // patch_size
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, hidden_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, self.grid)[None], persistent=False)
        self.t_embedder = time_mlp(time_embedding, frequency_dim, hidden_size, time_scale)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """DiT's ``initialize_weights``: Xavier-uniform linear layers, N(0, 0.02) label and time
        MLP weights, zero adaLN modulations, zero final layer, and (PixArt) zero cross-attention
        output projections."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        for i in (1, 3):  # time_mlp = [embedding, Linear, SiLU, Linear]
            nn.init.normal_(self.t_embedder[i].weight, std=0.02)
        zero = [self.final_layer.adaLN_modulation, self.final_layer.linear]
        for blk in self.blocks:
            zero.append(blk.adaLN_modulation)
            if blk.cross is not None:
                zero.append(blk.cross.proj)
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        s = self.input_size
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"this DiT expects inputs (B, {self.in_channels}, {s}, {s}), got {tuple(x.shape)}")
        if self.blocks[0].cross is not None and context is None:
            raise ValueError("this DiT has cross-attention (context_dim set): pass context=(B, L, context_dim)")
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:  # no label: the null token (classifier-free guidance's unconditional model)
                y = torch.full((x.shape[0],), self.y_embedder.num_embeddings - 1, dtype=torch.long, device=x.device)
            c = c + self.y_embedder(y)
        c = F.silu(c).to(x.dtype)  # every adaLN regression starts with SiLU(c): computed once
        h = self.x_embedder(patchify(x, self.patch_size)) + self.pos_embed.to(x.dtype)
        for blk in self.blocks:
            h = blk(h, c, context, context_mask)
        return unpatchify(self.final_layer(h, c), self.patch_size, self.out_channels, self.grid, self.grid)
