"""SDXL micro-conditioning (Podell et al. 2023, Sec. 2.2): train on rescaled and cropped images
and tell the network how each was made, so that sampling can ask for an uncropped, sharp image.

Every training image is turned, at random, into what a crawled data set holds: its "original"
is o x o pixels, o uniform in ``[min_size, max_size]`` (``[objective.args]``).  An original
smaller than the data (o < S) is a low-resolution one: the image is resized to o and back to S,
i.e. blurred (SDXL's "size conditioning"); a larger one is the image upscaled to o and a random
S x S crop (top, left) of it, which may cut the object off (SDXL's "crop conditioning").  The
network gets ``micro_cond`` = (o, o, top, left, S, S) (:class:`difflab.nn.embeddings.MicroConditioning`,
``model.args.micro_conditioning = true``).  With ``condition = false`` the same augmented data
trains a network that is not told (the ablation SDXL compares against).  At sampling,
``crop=(0, 0)`` and ``orig_size=(S, S)`` (the defaults) ask for an uncropped image at the native
resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.train.config import Config, ConfigError
from difflab.train.objectives.base import Batch, DataSpec, Dependencies, register
from difflab.train.objectives.denoising import Denoising

__all__ = ["MicroConditioned", "rescale_and_crop"]


def rescale_and_crop(x: Tensor, min_size: int, max_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images (B, C, S, S) -> (augmented images, micro-conditioning values (B, 6)) (module docstring)."""
    B, _, S, _ = x.shape
    o = torch.randint(min_size, max_size + 1, (B,), generator=gen)
    room = (o - S).clamp_min(0)
    top = (torch.rand(B, generator=gen) * (room + 1)).floor().long().clamp_max(room)
    left = (torch.rand(B, generator=gen) * (room + 1)).floor().long().clamp_max(room)
    out = torch.empty_like(x)
    for size in o.unique().tolist():
        sel = (o == size).nonzero().flatten()
        xs = F.interpolate(x[sel], size=(size, size), mode="bilinear", align_corners=False, antialias=size < S)
        if size < S:  # a low-resolution original, brought back to the data's size
            out[sel] = F.interpolate(xs, size=(S, S), mode="bilinear", align_corners=False)
        else:
            for j, i in enumerate(sel.tolist()):
                t, le = int(top[i]), int(left[i])
                out[i] = xs[j, :, t : t + S, le : le + S]
    vals = torch.stack([o, o, top, left, torch.full_like(o, S), torch.full_like(o, S)], 1).float()
    return out.clamp(-1, 1), vals


@register
class MicroConditioned(Denoising):
    """Denoising on randomly rescaled / cropped images with their micro-conditioning (module docstring)."""

    name = "micro"

    @dataclass
    class Args:
        min_size: int = 14
        max_size: int = 42
        condition: bool = True

    def __init__(
        self,
        cfg: Config,
        spec: DataSpec,
        deps: Dependencies,
        primary: nn.Module | None = None,
        for_training: bool = True,
    ) -> None:
        super().__init__(cfg, spec, deps, primary, for_training)
        a = self.args
        if len(spec.shape) != 3 or spec.shape[1] != spec.shape[2]:
            raise ConfigError(f"objective 'micro' needs square images, got items of shape {spec.shape}")
        if not 1 <= a.min_size <= a.max_size:
            raise ConfigError(f"objective.args needs 1 <= min_size <= max_size, got {a.min_size}, {a.max_size}")
        has = bool(getattr(self.net, "config", {}).get("micro_conditioning"))
        if a.condition != has:
            raise ConfigError(
                "objective.args.condition = true needs model.args.micro_conditioning = true"
                if a.condition
                else "objective.args.condition = false trains a network without micro-conditioning "
                "(set model.args.micro_conditioning = false)"
            )

    def loss(self, group: str, batch: Batch, gen: torch.Generator, step: int) -> dict[str, Tensor]:
        x, vals = rescale_and_crop(batch["x"], self.args.min_size, self.args.max_size, gen)
        cond = self.conditioning(batch.get("y"), gen, x.device)
        if self.args.condition:
            cond["micro_cond"] = vals.to(x.device)
        return {"loss": self.loss_fn(self._train_den(), x, gen, **cond)}
