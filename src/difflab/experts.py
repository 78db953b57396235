"""Ensembles of expert denoisers: a base model for the high noise levels, a refiner below a switch time.

eDiff-I (Balaji et al. 2022, Sec. 4) trains denoisers specialised to intervals of noise levels
and samples with each on its own interval; SDXL's refiner (Podell et al. 2023, Sec. 2.5) is the
two-expert case: a second model trained on the low-noise part of the schedule only (SDXL's
first 200 of 1000 discrete steps) takes over the last steps of sampling from the base model.
Since both experts are denoisers of the same x_t, their hand-over is a denoiser too,

    den(x, t) = base(x, t) for t >= t_switch,   refiner(x, t) for t < t_switch   (t = 0: data),

so every solver and every guidance wrapper works with it unchanged, and a grid that puts k of
its N steps below t_switch spends k network evaluations on the refiner and N - k on the base.
Both experts must share the schedule (the same x_t means the same noise level at the same t)
and the data shape: :func:`check_experts` says which differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.parameterization import batch_times
from difflab.schedules import Schedule, TimeLike

__all__ = ["Handover", "check_experts", "item_shape", "same_schedule"]

Den = Callable[..., Tensor]


def same_schedule(a: Schedule, b: Schedule, points: int = 65) -> bool:
    """Whether two schedules are the same process: same class, steps T and t_max, and the same
    alpha(t) and sigma(t) (to 1e-10 relative) on ``points`` times in [0, t_max]."""
    if type(a) is not type(b) or a.T != b.T or not math.isclose(a.t_max, b.t_max, rel_tol=1e-12):
        return False
    t = torch.linspace(0, a.t_max, points, dtype=torch.float64)
    return all(torch.allclose(f(t), g(t), rtol=1e-10, atol=1e-12) for f, g in ((a.alpha, b.alpha), (a.sigma, b.sigma)))


def item_shape(den: Any) -> tuple[int, ...] | None:
    """The per-item data shape a denoiser's network was built for, if it says (a
    :class:`~difflab.denoiser.Denoiser` around a network with a ``config``), else None."""
    cfg = getattr(getattr(den, "net", None), "config", None)
    if not isinstance(cfg, dict):
        return None
    if "image_size" in cfg and "in_channels" in cfg:
        return (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    if "dim" in cfg:
        return (cfg["dim"],)
    return None


def check_experts(
    base_schedule: Schedule | None,
    refiner_schedule: Schedule | None,
    base_shape: tuple[int, ...] | None = None,
    refiner_shape: tuple[int, ...] | None = None,
) -> None:
    """Raise a ValueError naming what differs if a refiner does not fit its base model: another
    schedule or another data shape (None: unknown, not checked)."""
    if (
        base_schedule is not None
        and refiner_schedule is not None
        and not same_schedule(base_schedule, refiner_schedule)
    ):
        raise ValueError(
            f"the refiner was trained on the schedule {refiner_schedule!r}, the base on {base_schedule!r}: "
            "experts must share the schedule (the same t must mean the same noise level)"
        )
    if base_shape is not None and refiner_shape is not None and tuple(base_shape) != tuple(refiner_shape):
        raise ValueError(
            f"the refiner was built for data of shape {tuple(refiner_shape)}, the base for {tuple(base_shape)}"
        )


class Handover:
    """The base denoiser for t >= ``t_switch``, the refiner below (per sample, so a batch of mixed
    times is split between them).

    Args:
        base, refiner: denoisers ``den(x, t, **cond) -> x0_hat``; both get the same conditioning.
        t_switch: the time (in (0, 1], t = 0 data) below which the refiner denoises, e.g. 0.2 for
            a refiner trained on the last 20% of the noise levels.
        schedule: checked against both experts' ``schedule`` attributes where they have one.
    """

    def __init__(self, base: Den, refiner: Den, t_switch: float, schedule: Schedule | None = None) -> None:
        if isinstance(t_switch, bool) or not isinstance(t_switch, int | float) or not 0 < t_switch <= 1:
            raise ValueError(f"t_switch must be a time in (0, 1] (t = 0 is data), got {t_switch!r}")
        sb, sr = getattr(base, "schedule", schedule), getattr(refiner, "schedule", schedule)
        check_experts(sb, sr, item_shape(base), item_shape(refiner))
        if schedule is not None:
            check_experts(schedule, sb)
        self.base, self.refiner, self.t_switch = base, refiner, float(t_switch)
        self.schedule = sb if sb is not None else schedule

    def __call__(self, x: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        tb = batch_times(t, x)
        low = tb < self.t_switch
        if bool(low.all()):
            return self.refiner(x, t, **cond)
        if not bool(low.any()):
            return self.base(x, t, **cond)
        # mixed times (a parallel solver's window): each expert on its own samples
        out = torch.empty_like(x)
        for expert, sel in ((self.refiner, low), (self.base, ~low)):
            sub = {
                k: (v[sel] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == x.shape[0] else v)
                for k, v in cond.items()
            }
            out[sel] = expert(x[sel], tb[sel], **sub).to(x.dtype)
        return out
