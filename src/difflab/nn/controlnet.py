"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"): spatial control of a frozen, trained U-Net.

- :meth:`ControlNet.from_unet` makes a *trainable copy* of the U-Net's encoder -- its time, label
  and micro-conditioning embeddings, input convolution, down blocks and middle block, weights
  included (Sec. 3.1) -- and adds a *hint encoder* E, a small stack of 3x3 convolutions (strided
  when the hint is larger than the image; the paper's 4x4-stride-2 stack takes 512 px hints to the
  64 px latent, Sec. 3.2) that embeds the control image c into features added to the copy's input
  features, and one *zero convolution* (1x1, weight and bias zero) per skip connection and one
  for the middle block.  The copy's outputs through the zero convolutions are the residuals
  added to the frozen U-Net's skips and middle block (eq. 2:
  y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)).
- Zero initialisation makes a fresh ControlNet an exact no-op (every residual is 0), and the
  gradient still reaches the zero convolutions, dL/dW = dL/dy * features != 0, so after the first
  step the rest of the copy learns too (Sec. 3.1).  The hint encoder's last convolution is zero
  as well (as in the paper's code), so an untrained hint cannot disturb the copy.
- :class:`ControlledUNet` runs the base U-Net with the residuals of one or several ControlNets
  added, each times its control scale (several ControlNets: their residuals sum, Sec. 4.4 /
  "multi-ControlNet"); with ``guess_mode`` the ControlNet sees no label (the paper's guess mode,
  Sec. 4.2/4.3 "without prompts") and its residuals are weighted from 0.1 at the first skip to 1 at
  the middle block (diffusers' logspace weighting).  Classifier-free guidance keeps the hint in
  both branches unless the null condition says ``hint=None``.

A ControlNet records the checksum of the U-Net config it was copied from, and a ControlledUNet
refuses a ControlNet made for another U-Net.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from difflab.nn.unet import UNet, UNetEncoder

__all__ = ["ENCODER_PARTS", "ControlNet", "ControlledUNet", "config_checksum"]

#: the U-Net modules a ControlNet copies (Zhang et al. 2023, Sec. 3.2: encoder and middle block)
ENCODER_PARTS = ("temb", "label", "micro", "inp", "down", "mid")


def config_checksum(config: dict[str, Any]) -> str:
    """SHA-256 (16 hex digits) of a U-Net config: which U-Net a ControlNet belongs to."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _zero_conv(ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(ch, ch, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class HintEncoder(nn.Module):
    """E(c): conv3x3 -> SiLU, one stride-2 conv3x3 -> SiLU per halving of the hint size, conv3x3 ->
    SiLU and a zero-initialised conv3x3 to the U-Net's input width (Zhang et al. 2023, Sec. 3.2)."""

    def __init__(
        self, hint_channels: int, out_channels: int, downsample: int, widths: Sequence[int] = (16, 32)
    ) -> None:
        super().__init__()
        w = list(widths)
        layers: list[nn.Module] = [nn.Conv2d(hint_channels, w[0], 3, padding=1), nn.SiLU()]
        c = w[0]
        for i in range(downsample):
            nxt = w[min(i + 1, len(w) - 1)]
            layers += [nn.Conv2d(c, nxt, 3, stride=2, padding=1), nn.SiLU()]
            c = nxt
        layers += [nn.Conv2d(c, w[-1], 3, padding=1), nn.SiLU()]
        last = nn.Conv2d(w[-1], out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.layers = nn.Sequential(*layers, last)

    def forward(self, c: Tensor) -> Tensor:
        return self.layers(c)


class ControlNet(UNetEncoder):
    """``cn(x, t, hint, y=None, context=None, context_mask=None, micro_cond=None) ->
    (down_residuals, mid_residual)``, the residuals :class:`~difflab.nn.unet.UNet` adds to its
    skips and middle block.

    Args:
        unet_config: the config of the U-Net it controls (``unet.config``).
        hint_channels: channels of the control image (1 for edge maps and masks).
        hint_size: its (square) size; the U-Net's ``image_size`` times a power of 2
            (default: the image size).
        hint_widths: widths of the hint encoder's convolutions.
        unet_checksum: if given (a saved config), checked against ``unet_config``.

    Build it with :meth:`from_unet` to start from the U-Net's weights; the constructor (used to
    rebuild a checkpoint from ``config``) initialises the copy afresh.
    """

    def __init__(
        self,
        unet_config: dict[str, Any],
        hint_channels: int = 1,
        hint_size: int | None = None,
        hint_widths: Sequence[int] = (16, 32),
        unet_checksum: str | None = None,
    ) -> None:
        super().__init__()
        own = config_checksum(unet_config)
        if unet_checksum is not None and unet_checksum != own:
            raise ValueError(f"unet_checksum {unet_checksum} does not match unet_config (checksum {own})")
        size = unet_config["image_size"]
        hint_size = size if hint_size is None else hint_size
        factor, down = hint_size // size, 0
        while 2**down < factor:
            down += 1
        if hint_size % size or 2**down != factor:
            raise ValueError(f"hint_size {hint_size} must be the image size {size} times a power of 2")
        if hint_channels < 1:
            raise ValueError(f"hint_channels must be positive, got {hint_channels}")
        self.config: dict[str, Any] = dict(
            unet_config=dict(unet_config),
            unet_checksum=own,
            hint_channels=hint_channels,
            hint_size=hint_size,
            hint_widths=list(hint_widths),
        )
        base = UNet(**unet_config)  # the copy has exactly the U-Net's encoder modules and names
        for name in ENCODER_PARTS:
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))
        if not hasattr(self, "label"):
            self.label = None
        self.hint = HintEncoder(hint_channels, unet_config["channels"], down, hint_widths)
        self.zero_convs = nn.ModuleList([_zero_conv(c) for c in base.skip_channels])
        self.mid_zero = _zero_conv(base.skip_channels[-1])
        self.hint_channels, self.hint_size, self.image_size = hint_channels, hint_size, size

    @classmethod
    def from_unet(cls, unet: UNet, hint_channels: int = 1, hint_size: int | None = None, **kw: Any) -> ControlNet:
        """A ControlNet whose encoder copy starts from ``unet``'s weights (Zhang et al. 2023, Sec. 3.1)."""
        if not isinstance(unet, UNet):
            raise TypeError(f"ControlNet.from_unet needs a difflab UNet, got {type(unet).__name__}")
        cn = cls(unet.config, hint_channels, hint_size, **kw)
        own = set(cn.state_dict())
        weights = {k: copy.deepcopy(v) for k, v in unet.state_dict().items() if k.split(".")[0] in ENCODER_PARTS}
        missing = [
            k for k in cn.load_state_dict(weights, strict=False).missing_keys if k.split(".")[0] in ENCODER_PARTS
        ]
        if missing or not set(weights) <= own:
            raise ValueError(f"the U-Net's encoder does not match the copy: missing {missing[:3]}")
        return cn.to(next(unet.parameters()).dtype)

    def check_hint(self, hint: Tensor, x: Tensor) -> None:
        want = (x.shape[0], self.hint_channels, self.hint_size, self.hint_size)
        if (
            not isinstance(hint, Tensor)
            or hint.dim() != 4
            or hint.shape[1:] != want[1:]
            or hint.shape[0] not in (1, x.shape[0])
        ):
            got = tuple(hint.shape) if isinstance(hint, Tensor) else type(hint).__name__
            raise ValueError(
                f"this ControlNet takes hints of shape {want} ({self.hint_channels} channel(s), "
                f"{self.hint_size}x{self.hint_size}), got {got}"
            )

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        hint: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        micro_cond: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        self.check_hint(hint, x)
        emb = self.embed(x, t, y, micro_cond)
        h = self.inp(x) + self.hint(hint.to(x.dtype)).expand(x.shape[0], -1, -1, -1)
        hs, mid = self.encode(h, emb, context, context_mask)
        return [z(h) for z, h in zip(self.zero_convs, hs)], self.mid_zero(mid)


class ControlledUNet(nn.Module):
    """``net(x, t, y=None, context=None, context_mask=None, micro_cond=None, hint=None)``: the base
    U-Net with the residuals of its ControlNets added (Zhang et al. 2023, eq. 2).

    Args:
        base: the (frozen) U-Net.
        controls: one ControlNet or several (their residuals are summed).
        scales: control scale per ControlNet (1 = as trained; 0 = no control).
        guess_mode: the ControlNets see no label or micro-conditioning, and their residuals are
            weighted 0.1 .. 1 from the first skip to the middle block (diffusers' ``guess_mode``);
            use it with ``cfg(..., null={..., 'hint': None})`` so that the unconditional branch
            has no control.

    ``hint``: a tensor for one ControlNet, a list of one per ControlNet (None entries: that
    control off), or None (no control: exactly the base U-Net).
    """

    def __init__(
        self,
        base: UNet,
        controls: ControlNet | Sequence[ControlNet],
        scales: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
    ) -> None:
        super().__init__()
        controls = [controls] if isinstance(controls, ControlNet) else list(controls)
        if not controls:
            raise ValueError("ControlledUNet needs at least one ControlNet")
        scales = [float(scales)] * len(controls) if isinstance(scales, int | float) else [float(s) for s in scales]
        if len(scales) != len(controls):
            raise ValueError(f"need one control scale per ControlNet ({len(controls)}), got {len(scales)}")
        want = config_checksum(base.config)
        for i, cn in enumerate(controls):
            if not isinstance(cn, ControlNet):
                raise TypeError(f"controls[{i}] is a {type(cn).__name__}, not a ControlNet")
            if cn.config["unet_checksum"] != want:
                diff = sorted(
                    k
                    for k in set(base.config) | set(cn.config["unet_config"])
                    if base.config.get(k) != cn.config["unet_config"].get(k)
                )
                raise ValueError(
                    f"ControlNet {i} was built for another U-Net (config checksum {cn.config['unet_checksum']}, "
                    f"this U-Net's is {want}; they differ in {', '.join(diff) or 'the config'})"
                )
        self.base, self.controls, self.scales, self.guess_mode = base, nn.ModuleList(controls), scales, guess_mode
        self.config = base.config  # sampling code reads the data shape from it

    @property
    def in_channels(self) -> int:
        return self.base.in_channels

    def residuals(self, x: Tensor, t: Tensor, hint: Any, **cond: Any) -> tuple[list[Tensor], Tensor] | None:
        """The summed, scaled residuals of the ControlNets for ``hint`` (None: no control)."""
        if hint is None:
            return None
        hints = list(hint) if isinstance(hint, list | tuple) else [hint]
        if len(hints) != len(self.controls):
            raise ValueError(f"need one hint per ControlNet ({len(self.controls)}), got {len(hints)}")
        if self.guess_mode:
            cond = {k: v for k, v in cond.items() if k not in ("y", "micro_cond")}
        down: list[Tensor] | None = None
        mid: Tensor | None = None
        for cn, h, s in zip(self.controls, hints, self.scales):
            if h is None or s == 0:
                continue
            d, m = cn(x, t, h, **cond)
            if self.guess_mode:
                w = torch.logspace(-1, 0, len(d) + 1, device=x.device, dtype=x.dtype)
                d, m = [r * wi for r, wi in zip(d, w[:-1])], m * w[-1]
            d, m = [s * r for r in d], s * m
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return None if down is None else (down, mid)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        micro_cond: Tensor | None = None,
        hint: Tensor | Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        cond = dict(y=y, context=context, context_mask=context_mask, micro_cond=micro_cond)
        res = self.residuals(x, t, hint, **cond)
        if res is None:
            return self.base(x, t, **cond)
        return self.base(x, t, **cond, down_residuals=res[0], mid_residual=res[1])
