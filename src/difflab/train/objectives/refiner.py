"""A refiner: a denoiser trained only on the low-noise part of the schedule (SDXL's refiner,
Podell et al. 2023, Sec. 2.5: the first 200 of 1000 discrete steps; eDiff-I's expert denoisers,
Balaji et al. 2022, Sec. 4), to take over the last steps of sampling from a base model
(:class:`difflab.experts.Handover`, ``difflab sample BASE --refiner RUN --switch 0.2``).

The denoising objective with training times restricted to t <= ``t_max`` (``[objective.args]``,
default 0.2: the last 20% of the noise levels); everything else is the run's ``[model]``,
``[schedule]`` and ``[loss]``.  Its own samples from pure noise are meaningless: sample the base
with it as refiner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from difflab.train.config import Config, ConfigError
from difflab.train.objectives.base import DataSpec, Dependencies, register
from difflab.train.objectives.denoising import Denoising

__all__ = ["Refiner"]


@register
class Refiner(Denoising):
    """Denoising on t in (0, ``t_max``] only."""

    name = "refiner"

    @dataclass
    class Args:
        t_max: float = 0.2

    def __init__(
        self,
        cfg: Config,
        spec: DataSpec,
        deps: Dependencies,
        primary: nn.Module | None = None,
        for_training: bool = True,
    ) -> None:
        super().__init__(cfg, spec, deps, primary, for_training)
        if not 0 < self.args.t_max <= 1:
            raise ConfigError(f"objective.args.t_max must be in (0, 1], got {self.args.t_max}")
        try:
            self.loss_fn = dataclasses.replace(self.loss_fn, t_max=self.args.t_max)
        except ValueError as e:
            raise ConfigError(f"objective 'refiner': {e}") from None

    def describe(self) -> str:
        return f"{super().describe()}, a refiner for t <= {self.args.t_max}"
