"""Denoising diffusion training, the first objective: the config's ``[model]`` network learns
the ``[loss]`` (:class:`difflab.losses.DiffusionLoss`: L_simple, weighted denoising losses, the
variational bound, the hybrid loss, DSM, flow matching) on the ``[schedule]``.

Class-conditional networks get label dropout to the null label, text-conditional ones random
captions of their label (or the empty prompt), so one network is also its own unconditional
model for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from difflab.denoiser import Denoiser
from difflab.train.build import (
    build_denoiser,
    build_loss,
    build_network,
    build_schedule,
    caption_bank,
)
from difflab.train.config import Config, ConfigError
from difflab.train.models import DiffusionModel
from difflab.train.objectives.base import Batch, ClassConditioning, DataSpec, Dependencies, Objective, register


@register
class Denoising(Objective):
    """Train ``net`` on the denoising loss of ``[loss]`` (module docstring)."""

    name = "denoising"

    def __init__(
        self,
        cfg: Config,
        spec: DataSpec,
        deps: Dependencies,
        primary: nn.Module | None = None,
        for_training: bool = True,
    ) -> None:
        super().__init__(cfg, spec, deps, primary, for_training)
        self.schedule = build_schedule(cfg.schedule.name, cfg.schedule.args)
        self.net = self.given_primary(lambda: build_network(cfg.model, spec.shape, spec.num_classes))
        self.den = build_denoiser(self.net, self.schedule, cfg.model)
        self.loss_fn = build_loss(cfg, self.schedule)
        if getattr(self.net, "config", {}).get("num_classes") and spec.num_classes is None:
            raise ConfigError("model.args.num_classes is set but the data set has no labels")
        captions = caption_bank(cfg.model, spec.num_classes) if cfg.model.captions and for_training else None
        self.conditioning = ClassConditioning(self.net, captions, cfg.train.label_dropout)

    def _train_den(self) -> Denoiser:
        d = self.den
        return Denoiser(self.train_net, self.schedule, d.prediction, d.time_input, d.learned_variance)

    def loss(self, group: str, batch: Batch, gen: torch.Generator, step: int) -> dict[str, Tensor]:
        x = batch["x"]
        cond = self.conditioning(batch.get("y"), gen, x.device)
        return {"loss": self.loss_fn(self._train_den(), x, gen, **cond)}

    def extra_state(self) -> dict[str, Tensor]:
        imp = self.loss_fn.importance
        return {} if imp is None else {f"importance.{k}": v for k, v in imp.state_dict().items()}

    def load_extra_state(self, tensors: Mapping[str, Tensor]) -> None:
        imp = self.loss_fn.importance
        sd = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("importance.")}
        if imp is not None and sd:
            imp.load_state_dict(sd)

    def model(self, net: nn.Module) -> DiffusionModel:
        return DiffusionModel(net, self.schedule, self.cfg, shape=self.spec.shape)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        kind: Any = self.cfg.model.network
        return f"a {n / 1e6:.2f}M-parameter {kind} ({self.cfg.model.prediction}-prediction, {self.cfg.schedule.name})"
