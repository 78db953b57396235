"""The noise-conditional classifier p_phi(y | x_t, t) of classifier guidance (Dhariwal & Nichol
2021, Sec. 4.1) as an objective: minimise the cross-entropy -log p_phi(y | x_t, t) on noised data
x_t = alpha(t) x_0 + sigma(t) eps, t drawn like the diffusion model's training times
(:func:`difflab.losses.sample_times`), eps ~ N(0, I).

``[model] network = "noisy_classifier"`` (:class:`difflab.nn.NoisyClassifier`; ``num_classes``
defaults to the data's), ``[schedule]`` the diffusion model's; ``configs/fashion_noisy_classifier.toml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.losses import TIME_SAMPLINGS, sample_times
from difflab.schedules import Schedule
from difflab.train.build import build_network, build_schedule
from difflab.train.config import Config, ConfigError
from difflab.train.models import Model
from difflab.train.objectives.base import Batch, DataSpec, Dependencies, Objective, register

__all__ = ["ClassifierModel", "NoisyClassifierObjective", "noise"]


def noise(schedule: Schedule, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I) (the forward marginal q(x_t | x_0))."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return schedule.perturb(x0, t.to(x0.device), eps)


@dataclass
class NoisyClassifierArgs:
    time_sampling: str = "uniform"  # a difflab.losses.sample_times kind


class ClassifierModel(Model):
    """A trained noisy classifier: ``log_prob`` (what :func:`difflab.guidance.classifier_guidance`
    takes) and its ``schedule``; it generates nothing itself (``difflab eval --classifier RUN``
    guides a diffusion model with it)."""

    kind = "noisy classifier"
    options: ClassVar[dict[str, str]] = {}
    generates = False

    def __init__(self, net: nn.Module, schedule: Schedule, cfg: Config | None = None) -> None:
        super().__init__(cfg)
        self.net, self.schedule = net, schedule
        self.log_prob = net.log_prob

    def generate(self, n: int, seed: int = 0, **options: Any) -> Tensor:
        raise ValueError(
            "a noisy classifier does not generate images; guide a diffusion model with it "
            "(difflab eval RUN --classifier THIS_RUN --guidance S)"
        )


@register
class NoisyClassifierObjective(Objective):
    """Cross-entropy of ``net(x_t, t)`` against the labels (module docstring)."""

    name = "noisy_classifier"
    Args = NoisyClassifierArgs

    def __init__(
        self,
        cfg: Config,
        spec: DataSpec,
        deps: Dependencies,
        primary: nn.Module | None = None,
        for_training: bool = True,
    ) -> None:
        super().__init__(cfg, spec, deps, primary, for_training)
        if self.args.time_sampling not in TIME_SAMPLINGS:
            raise ConfigError(
                f"objective.args.time_sampling = {self.args.time_sampling!r} is not one of {', '.join(TIME_SAMPLINGS)}"
            )
        if spec.num_classes is None:
            raise ConfigError("the noisy_classifier objective needs a labelled data set")
        self.schedule = build_schedule(cfg.schedule.name, cfg.schedule.args)
        model_cfg = dataclasses.replace(cfg.model, args={"num_classes": True, **cfg.model.args})
        self.net = self.given_primary(lambda: build_network(model_cfg, spec.shape, spec.num_classes))

    def loss(self, group: str, batch: Batch, gen: torch.Generator, step: int) -> dict[str, Tensor]:
        x, y = batch["x"], batch["y"]
        t = sample_times(self.args.time_sampling, self.schedule, x.shape[0], gen)
        logits = self.train_net(noise(self.schedule, x, t, gen), t.to(x.dtype).to(x.device))
        return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}

    def model(self, net: nn.Module) -> ClassifierModel:
        return ClassifierModel(net, self.schedule, self.cfg)
