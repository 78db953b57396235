"""ControlNet training (Zhang et al. 2023, Sec. 3.3): the denoising loss of a frozen, trained base
U-Net run with a ControlNet's residuals added, where only the ControlNet learns,

    L = E_{x_0, t, c_t, c_f, eps} || eps - eps_theta(x_t, t, c_t, c_f) ||^2     (eq. 5),

c_f the hint computed from the training image (:mod:`difflab.data.hints`: ``edges``, ``sobel``,
``silhouette``) and c_t the base's own conditioning (labels with the run's ``train.label_dropout``,
the paper drops 50% of prompts so the control alone has to carry the image).

The base run is ``objective.depends.base``; its schedule, prediction type and network are used
(the ControlNet run's own ``[model]`` and ``[schedule]`` sections are ignored), and the base is
recorded in the run by path and checksum, so ``difflab sample RUN --control hint.png`` needs
nothing else.  Options (``[objective.args]``): ``hint`` (the detector), ``hint_size`` (default:
the image size), ``hint_widths`` (the hint encoder's widths).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from difflab.data import hints as dl_hints
from difflab.denoiser import Denoiser
from difflab.nn import ControlledUNet, ControlNet, UNet
from difflab.train.build import build_denoiser, build_loss
from difflab.train.config import Config, ConfigError
from difflab.train.models import DiffusionModel
from difflab.train.objectives.base import Batch, ClassConditioning, DataSpec, Dependencies, Objective, register

__all__ = ["ControlNetTraining", "ControlledModel"]


class ControlledModel(DiffusionModel):
    """A diffusion model whose network takes a control ``hint`` (B or 1, C, H, W) in [0, 1]."""

    kind = "controlled diffusion"
    options: ClassVar[dict[str, str]] = {
        **DiffusionModel.options,
        "hint": "control image (1 or n, C, H, W) in [0, 1] (e.g. difflab.data.hints.edges(images))",
    }

    def __init__(self, *args: Any, hint_name: str = "edges", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hint_name = hint_name

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, *, hint: Tensor | None = None, **kw: Any) -> Any:
        if hint is not None:
            if not isinstance(hint, Tensor) or hint.dim() != 4 or hint.shape[0] not in (1, n):
                got = tuple(hint.shape) if isinstance(hint, Tensor) else type(hint).__name__
                raise ValueError(f"hint must be (1 or {n}, C, H, W), got {got}")
            kw["hint"] = hint.expand(n, -1, -1, -1)  # per sample: batched, and doubled by guidance
            self.net.controls[0].check_hint(kw["hint"], torch.empty(n, 1))
        return super().generate(n, seed, **kw)


@register
class ControlNetTraining(Objective):
    """Train a ControlNet copied from the base run's U-Net (module docstring)."""

    name = "controlnet"
    roles = ("base",)

    @dataclass
    class Args:
        hint: str = "edges"
        hint_size: int | None = None
        hint_widths: list[int] = field(default_factory=lambda: [16, 32])

    def __init__(
        self,
        cfg: Config,
        spec: DataSpec,
        deps: Dependencies,
        primary: nn.Module | None = None,
        for_training: bool = True,
    ) -> None:
        super().__init__(cfg, spec, deps, primary, for_training)
        if self.args.hint not in dl_hints.HINTS:
            raise ConfigError(f"objective.args.hint = {self.args.hint!r} is not one of {', '.join(dl_hints.HINTS)}")
        base = deps.load("base")
        base_net = getattr(base, "net", None)
        if not isinstance(base_net, UNet):
            raise ConfigError(f"objective.depends.base must be a U-Net diffusion run, got a {type(base_net).__name__}")
        if tuple(spec.shape) != tuple(base.shape):
            raise ConfigError(f"the data's items have shape {tuple(spec.shape)}, the base model's {tuple(base.shape)}")
        self.base_cfg = base.cfg
        self.schedule = base.schedule
        self.base = self.freeze("base", base_net)
        self.net = self.given_primary(
            lambda: ControlNet.from_unet(base_net, hint_size=self.args.hint_size, hint_widths=self.args.hint_widths)
        )
        # not a submodule: its weights are the base's and the ControlNet's, saved once each
        self.__dict__["controlled"] = ControlledUNet(self.base, self.net)
        # the base's parameterisation and loss: [model] / [loss] of the base run
        run_cfg = dataclasses.replace(cfg, model=base.cfg.model, schedule=base.cfg.schedule)
        self.den = build_denoiser(self.controlled, self.schedule, base.cfg.model)
        self.loss_fn = build_loss(run_cfg, self.schedule)
        self.conditioning = ClassConditioning(base_net, None, cfg.train.label_dropout)

    def dataset(self, data: Batch) -> Batch:
        """The training images with their hints, computed once."""
        return {**data, "hint": dl_hints.hint(self.args.hint, data["x"])}

    def loss(self, group: str, batch: Batch, gen: torch.Generator, step: int) -> dict[str, Tensor]:
        x = batch["x"]
        cond = self.conditioning(batch.get("y"), gen, x.device)
        net = ControlledUNet(self.base, self.train_net) if self.train_net is not self.net else self.controlled
        d = self.den
        den = Denoiser(net, self.schedule, d.prediction, d.time_input, d.learned_variance)
        return {"loss": self.loss_fn(den, x, gen, hint=batch["hint"], **cond)}

    def model(self, net: nn.Module) -> ControlledModel:
        cfg = dataclasses.replace(self.cfg, model=self.base_cfg.model, schedule=self.base_cfg.schedule)
        return ControlledModel(
            ControlledUNet(self.base, net), self.schedule, cfg, shape=self.spec.shape, hint_name=self.args.hint
        )

    def describe(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        return f"a {n / 1e6:.2f}M-parameter ControlNet ({self.args.hint} hints) on a frozen base U-Net"
