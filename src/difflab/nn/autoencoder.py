"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", Sec. 3.1 and App. G; the ``AutoencoderKL`` of
their code): a ResNet encoder maps an image (C, H, W) to a diagonal Gaussian posterior
q(z | x) = N(mu, diag sigma^2) over latents (c, H/f, W/f), a ResNet decoder maps z back.

- Encoder: conv3x3, per level ``num_res_blocks`` residual blocks (GroupNorm -> SiLU -> conv),
  a stride-2 downsampling between levels, a middle block (residual, self-attention, residual),
  GroupNorm -> SiLU -> conv3x3 to 2c channels (mean and log-variance) and LDM's 1x1
  ``quant_conv``; the decoder mirrors it (one more residual block per level, nearest-neighbour
  upsampling + conv).  The downsampling factor is f = 2^(levels - 1).  The blocks are
  difflab's U-Net blocks (:mod:`difflab.nn.unet`) without the time conditioning.
- The posterior's log-variance is clamped to [-30, 20] (LDM's ``DiagonalGaussianDistribution``);
  the KL term is KL(q(z|x) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2).
- **The latent scale** (LDM's ``scale_by_std``): diffusion runs on ``scale * z`` with
  scale = 1 / std(z) over the training data, so the latents have unit variance like the
  images the diffusion schedules were designed for.  :meth:`AutoencoderKL.compute_scale`
  computes it from data and stores it in the buffer ``scale_factor``, which is saved with the
  weights -- no magic 0.18215 to remember.

The training loss (L1 + perceptual + KL + patch-GAN hinge with LDM's adaptive weight) lives
with the training objectives; the patch discriminator is :mod:`difflab.nn.discriminator`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nn.unet import AttentionBlock, Downsample, ResBlock, Upsample, _norm

__all__ = ["AutoencoderKL", "DiagonalGaussian"]


class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)) with LDM's clamp of the log-variance to [-30, 20]."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps (the reparameterisation trick, Kingma & Welling 2014)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, summed over the latent's entries, shape (B,)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class _Coder(nn.Module):
    def _run(self, blocks: Iterable[nn.Module], h: Tensor) -> Tensor:
        for m in blocks:
            h = m(h)
        return h


class Encoder(_Coder):
    def __init__(
        self, in_channels: int, ch: int, mults: Sequence[int], nrb: int, out_ch: int, groups: int, dropout: float
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        c = ch
        for lvl, m in enumerate(mults):
            for _ in range(nrb):
                self.down.append(ResBlock(c, ch * m, None, dropout, groups))
                c = ch * m
            if lvl < len(mults) - 1:
                self.down.append(Downsample(c))
        self.mid = nn.ModuleList(
            [ResBlock(c, c, None, dropout, groups), AttentionBlock(c, c, groups), ResBlock(c, c, None, dropout, groups)]
        )
        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self._run(self.mid, self._run(self.down, self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(_Coder):
    def __init__(
        self, out_channels: int, ch: int, mults: Sequence[int], nrb: int, z_ch: int, groups: int, dropout: float
    ) -> None:
        super().__init__()
        c = ch * mults[-1]
        self.conv_in = nn.Conv2d(z_ch, c, 3, padding=1)
        self.mid = nn.ModuleList(
            [ResBlock(c, c, None, dropout, groups), AttentionBlock(c, c, groups), ResBlock(c, c, None, dropout, groups)]
        )
        self.up = nn.ModuleList()
        for lvl in reversed(range(len(mults))):
            for _ in range(nrb + 1):
                self.up.append(ResBlock(c, ch * mults[lvl], None, dropout, groups))
                c = ch * mults[lvl]
            if lvl > 0:
                self.up.append(Upsample(c))
        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self._run(self.up, self._run(self.mid, self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder (Rombach et al. 2022, Sec. 3.1): images (B, C, H, W) <->
    latents (B, latent_channels, H/f, W/f), f = ``factor`` = 2^(len(channel_mults) - 1).

    Args:
        in_channels: image channels.
        latent_channels: c, the latent's channels (LDM's ``embed_dim``).
        channels: width of the first level; level l has ``channels * channel_mults[l]``.
        channel_mults: one per level; ``(1, 2)`` gives f = 2, ``(1, 2, 2)`` f = 4.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        groups: GroupNorm groups (fewer when a width is not divisible).
        dropout: inside the residual blocks.

    ``encode(x)`` gives the posterior, ``decode(z)`` the image; ``encode_latents`` /
    ``decode_latents`` work in the scaled space the diffusion model sees (``scale_factor * z``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        mults = [int(m) for m in channel_mults]
        if not mults or min(mults) < 1 or num_res_blocks < 1 or latent_channels < 1 or in_channels < 1:
            raise ValueError(
                f"invalid autoencoder shape: in_channels={in_channels}, latent_channels={latent_channels}, "
                f"channel_mults={list(channel_mults)}, num_res_blocks={num_res_blocks}"
            )
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            latent_channels=latent_channels,
            channels=channels,
            channel_mults=mults,
            num_res_blocks=num_res_blocks,
            groups=groups,
            dropout=dropout,
        )
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.factor = 2 ** (len(mults) - 1)
        self.encoder = Encoder(in_channels, channels, mults, num_res_blocks, 2 * latent_channels, groups, dropout)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(in_channels, channels, mults, num_res_blocks, latent_channels, groups, dropout)
        # 1 / std of the latents over the training data (LDM's scale_by_std); saved with the weights
        self.register_buffer("scale_factor", torch.tensor(1.0))

    # --- shapes -----------------------------------------------------------------------------
    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """(c, H/f, W/f) for images of shape (C, H, W); an error if H or W is not divisible by f."""
        if len(image_shape) != 3 or image_shape[0] != self.in_channels:
            raise ValueError(
                f"this autoencoder takes images ({self.in_channels}, H, W), got shape {tuple(image_shape)}"
            )
        _, h, w = image_shape
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the autoencoder's downsampling factor f = {self.factor}"
            )
        return (self.latent_channels, h // self.factor, w // self.factor)

    def _check_images(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        self.latent_shape(tuple(x.shape[1:]))

    # --- the maps ---------------------------------------------------------------------------
    def encode(self, x: Tensor) -> DiagonalGaussian:
        """The posterior q(z | x) over unscaled latents."""
        self._check_images(x)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Images from unscaled latents (B, c, h, w)."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, h, w), got shape {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """(reconstruction, posterior): decode a posterior sample (training) or its mean."""
        post = self.encode(x)
        z = post.sample(generator) if sample_posterior else post.mode()
        return self.decode(z), post

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight, where LDM's adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.weight

    # --- the diffusion model's latent space ---------------------------------------------------
    def encode_latents(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """``scale_factor * z`` with z ~ q(z | x) (``sample=True``, as LDM's
        ``get_first_stage_encoding``) or its mean."""
        post = self.encode(x)
        return self.scale_factor * (post.sample(generator) if sample else post.mode())

    def decode_latents(self, z: Tensor) -> Tensor:
        """Images from latents in the diffusion model's (scaled) space."""
        return self.decode(z / self.scale_factor)

    @torch.no_grad()
    def compute_scale(
        self,
        images: Tensor | Iterable[Tensor],
        batch_size: int = 256,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> float:
        """Set ``scale_factor`` = 1 / std of the (unscaled) latents of ``images`` (a tensor or an
        iterable of batches), the standard deviation over all their entries (LDM's
        ``scale_by_std``, which uses one batch; all of them give a steadier estimate).  Returns it."""
        if isinstance(images, Tensor):
            images = [images[i : i + batch_size] for i in range(0, images.shape[0], batch_size)]
        n, s1, s2 = 0, 0.0, 0.0
        was_training = self.training
        self.eval()
        for x in images:
            x = x.to(self.scale_factor.device)
            post = self.encode(x)
            z = (post.sample(generator) if sample else post.mode()).double()
            n, s1, s2 = n + z.numel(), s1 + float(z.sum()), s2 + float(z.square().sum())
        self.train(was_training)
        if n < 2:
            raise ValueError("compute_scale needs at least one image")
        var = (s2 - s1 * s1 / n) / (n - 1)
        if not var > 0:
            raise ValueError(f"the latents have variance {var:.3g}; cannot scale them to unit variance")
        self.scale_factor.fill_(var**-0.5)
        return float(self.scale_factor)
