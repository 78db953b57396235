"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6):

    dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dw-bar,

stepping backwards in t: x_n = x + (f x - g^2 score)(t_n - t) + g sqrt(t - t_n) z.
Strong order 1/2, weak order 1 (``order`` is the weak order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from difflab.solvers.base import Context, Solver, register


def reverse_sde_drift(ctx: Context, x: Tensor, t: float) -> Tensor:
    """f(t) x - g(t)^2 score(x, t) (one network evaluation)."""
    f, g2 = float(ctx.schedule.f(t)), float(ctx.schedule.g2(t))
    return f * x - g2 * ctx.score(x, t)


def euler_maruyama_step(ctx: Context, x: Tensor, t: float, t_next: float) -> Tensor:
    """x + (f x - g^2 score)(t_next - t) + g sqrt(t - t_next) z."""
    dt = t_next - t
    g = math.sqrt(float(ctx.schedule.g2(t)))
    return x + reverse_sde_drift(ctx, x, t) * dt + g * math.sqrt(-dt) * ctx.randn_like(x)


@register
@dataclass(frozen=True)
class EulerMaruyama(Solver):
    name: ClassVar[str] = "euler_maruyama"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True

    def step(self, ctx: Context, i: int, x: Tensor, state: None) -> tuple[Tensor, None]:
        return euler_maruyama_step(ctx, x, ctx.t(i), ctx.t(i + 1)), None
