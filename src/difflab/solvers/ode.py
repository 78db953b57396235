"""Classic Runge-Kutta solvers on the probability-flow ODE (Song et al. 2021, eq. 13).

They integrate in Karras et al.'s (2022, eq. 4 and Alg. 1) scale-free coordinates

    y = x / alpha,  s = sigma / alpha = e^{-lambda},  dy/ds = (y - x0_hat(x, t)) / s,

the same ODE as dx/dt = f x - g^2/2 grad log p_t, rewritten so that it is nearly
linear; this is what makes Euler here coincide with deterministic DDIM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from difflab.solvers.base import Context, Solver, register


def _s_of(ctx: Context, t: float) -> tuple[float, float]:
    a, s, _ = ctx.coefs(t)
    return a, s / a


def _t_of_s(ctx: Context, s: float) -> float:
    return float(ctx.schedule.t_of_lam(-math.log(s)))


def _dyds(ctx: Context, y: Tensor, t: float) -> Tensor:
    a, s = _s_of(ctx, t)
    return (y - ctx.denoise(a * y, t)) / s


def _rk_step(
    ctx: Context, i: int, x: Tensor, tableau: tuple[tuple[float, ...], ...], weights: tuple[float, ...]
) -> Tensor:
    """Explicit Runge-Kutta step in s with Butcher tableau rows (c, a_1..a_{k-1})."""
    t0, t1 = ctx.t(i), ctx.t(i + 1)
    a0, s0 = _s_of(ctx, t0)
    a1, s1 = _s_of(ctx, t1)
    ds = s1 - s0
    y = x / a0
    ks: list[Tensor] = []
    for c, *coef in tableau:
        yi = y + ds * sum(aj * kj for aj, kj in zip(coef, ks)) if ks else y
        ti = t0 if c == 0 else (t1 if c == 1 else _t_of_s(ctx, s0 + c * ds))
        ks.append(_dyds(ctx, yi, ti))
    return a1 * (y + ds * sum(w * k for w, k in zip(weights, ks)))


@register
@dataclass(frozen=True)
class Euler(Solver):
    """Euler's method (first order)."""

    name: ClassVar[str] = "euler"
    order: ClassVar[int] = 1

    def step(self, ctx: Context, i: int, x: Tensor, state: None) -> tuple[Tensor, None]:
        return _rk_step(ctx, i, x, ((0.0,),), (1.0,)), None


@register
@dataclass(frozen=True)
class Heun(Solver):
    """Heun's method (second order; Karras et al. 2022, Alg. 1 without churn)."""

    name: ClassVar[str] = "heun"
    order: ClassVar[int] = 2
    evals_per_step: ClassVar[int] = 2

    def step(self, ctx: Context, i: int, x: Tensor, state: None) -> tuple[Tensor, None]:
        return _rk_step(ctx, i, x, ((0.0,), (1.0, 1.0)), (0.5, 0.5)), None


@register
@dataclass(frozen=True)
class RK4(Solver):
    """The classical fourth-order Runge-Kutta method."""

    name: ClassVar[str] = "rk4"
    order: ClassVar[int] = 4
    evals_per_step: ClassVar[int] = 4

    def step(self, ctx: Context, i: int, x: Tensor, state: None) -> tuple[Tensor, None]:
        tab = ((0.0,), (0.5, 0.5), (0.5, 0.0, 0.5), (1.0, 0.0, 0.0, 1.0))
        return _rk_step(ctx, i, x, tab, (1 / 6, 1 / 3, 1 / 3, 1 / 6)), None
