"""Pseudo numerical methods: PNDM and PLMS (Liu et al. 2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds").

Both combine noise predictions like a classical method and move with the DDIM transfer
(eq. 11, written for any schedule):

    phi(x_s, e, s -> t) = (alpha_t / alpha_s) x_s + (sigma_t - alpha_t sigma_s / alpha_s) e.

- pseudo Runge-Kutta (PRK, eq. 13), four evaluations per step, with the midpoint m of [s, t]:
  e1 = eps(x, s), x1 = phi(x, e1, s -> m), e2 = eps(x1, m), x2 = phi(x, e2, s -> m),
  e3 = eps(x2, m), x3 = phi(x, e3, s -> t), e4 = eps(x3, t), x_t = phi(x, (e1 + 2 e2 + 2 e3 + e4)/6, s -> t);
- pseudo linear multistep (PLMS, eq. 12): e' = (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24.

``pndm`` is the paper's method: three PRK steps, then PLMS.  ``plms`` warms up with the
lower-order pseudo Adams-Bashforth combinations instead (one evaluation per step; order 1 is
DDIM).  The combinations assume equal steps in t, and the transfer weights the noise by
e^{-lambda} rather than uniformly in t, so the error of e' against the exact weighted mean
of eps over the step is O(delta^2): local error O(delta^3), global order 2 whatever the
combination order >= 2 (measured in ``tests/test_fast_solvers.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from difflab.solvers._exponential import (
    Grid,
    MultistepState,
    OneEvalSolver,
    Point,
    check_int,
    combine,
    run_loop,
)
from difflab.solvers.base import Context, Solver, StepInfo, register

__all__ = ["PLMS", "PNDM", "ab_eps", "transfer"]

#: Adams-Bashforth weights for equal steps, newest first (orders 1-4)
_AB = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def transfer(x: Tensor, e: Tensor, s: Point, t: Point) -> Tensor:
    """The DDIM transfer phi(x, e, s -> t) (Liu et al. 2022, eq. 11)."""
    return (t[0] / s[0]) * x + (t[1] - t[0] * s[1] / s[0]) * e


def ab_eps(outs: tuple[Tensor, ...], order: int) -> Tensor:
    """Pseudo linear multistep noise e' from the newest ``order`` predictions (eq. 12)."""
    w = _AB[order]
    out = w[0] * outs[0]
    for wj, ej in zip(w[1:], outs[1:order]):
        out = out + wj * ej
    return out


def _eps(ctx: Context, x: Tensor, t: float, p: Point) -> Tensor:
    return (x - p[0] * ctx.denoise(x, t)) / p[1]


@register
@dataclass(frozen=True)
class PLMS(OneEvalSolver):
    """Pseudo linear multistep with lower-order warm-up (Liu et al. 2022, eq. 12).

    Args:
        ab_order: order of the Adams-Bashforth combination (1 = DDIM, 4 = the paper's PLMS).
            The method's global order is min(ab_order, 2) (see the module docstring).
    """

    name: ClassVar[str] = "plms"
    ab_order: int = 4

    def __post_init__(self) -> None:
        check_int(self.name, "ab_order", self.ab_order, 1, 4)

    @property
    def order(self) -> int:  # type: ignore[override]
        return min(self.ab_order, 2)

    def init(self, ctx: Context, x: Tensor) -> MultistepState:
        return MultistepState(Grid.of(ctx))

    def advance(
        self, ctx: Context, i: int, x: Tensor, x0: Tensor, state: MultistepState
    ) -> tuple[Tensor, MultistepState]:
        g = state.grid
        s = g.point(i)
        hist = state.hist.push(i, (x - s[0] * x0) / s[1], self.ab_order)
        e = ab_eps(hist.out, min(self.ab_order, len(hist)))
        return transfer(x, e, s, g.point(i + 1)), state.evolve(hist=hist)


@dataclass(frozen=True)
class _PNDMState(MultistepState):
    mids: Grid | None = None


@register
@dataclass(frozen=True)
class PNDM(Solver):
    """PNDM (Liu et al. 2022, Alg. 2, "F-PNDM"): ``prk_steps`` pseudo Runge-Kutta steps (four
    evaluations each), then PLMS.  Global order 2 (module docstring)."""

    name: ClassVar[str] = "pndm"
    order: ClassVar[int] = 2
    prk_steps: int = 3

    def __post_init__(self) -> None:
        check_int(self.name, "prk_steps", self.prk_steps, 0, 3)

    def init(self, ctx: Context, x: Tensor) -> _PNDMState:
        g = Grid.of(ctx)
        n = min(self.prk_steps, g.steps)
        mids = Grid.at(ctx, (ctx.ts[:n] + ctx.ts[1 : n + 1]) / 2) if n else None
        return _PNDMState(g, mids=mids)

    def step(self, ctx: Context, i: int, x: Tensor, state: _PNDMState) -> tuple[Tensor, _PNDMState]:
        g = state.grid
        s, t = g.point(i), g.point(i + 1)
        e1 = _eps(ctx, x, g.t[i], s)
        hist = state.hist.push(i, e1, 4)
        if i < self.prk_steps:
            tm, m = state.mids.t[i], state.mids.point(i)
            e2 = _eps(ctx, transfer(x, e1, s, m), tm, m)
            e3 = _eps(ctx, transfer(x, e2, s, m), tm, m)
            e4 = _eps(ctx, transfer(x, e3, s, t), g.t[i + 1], t)
            e = combine(0.0, e1, [-1 / 6, -1 / 3, -1 / 3, -1 / 6], [e1, e2, e3, e4])
        else:
            e = ab_eps(hist.out, 4)
        return transfer(x, e, s, t), state.evolve(hist=hist)

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        return run_loop(self, ctx, x, progress, callback)
