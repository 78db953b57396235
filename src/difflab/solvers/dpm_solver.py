"""Singlestep DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps") and its adaptive-step version.

One step from s to t (h = lambda_t - lambda_s) in the noise-prediction form, eq. 3.7-3.9 and
Algorithms 1 and 2 (``prediction='x0'`` gives the data-prediction DPM-Solver++ singlestep
updates of Lu et al. 2022b, Alg. 1, by the substitution in :mod:`._exponential`):

    order 1:  x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s                       (= DDIM)
    order 2:  u   = (alpha_{s1}/alpha_s) x_s - sigma_{s1} (e^{r1 h} - 1) eps_s,  r1 = 1/2
              x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s - sigma_t/(2 r1) (e^h - 1)(eps(u, s1) - eps_s)
    order 3:  r1 = 1/3, r2 = 2/3, u1 as above, D1 = eps(u1, s1) - eps_s,
              u2  = (alpha_{s2}/alpha_s) x_s - sigma_{s2} (e^{r2 h} - 1) eps_s
                    - sigma_{s2} r2/r1 ((e^{r2 h} - 1)/(r2 h) - 1) D1
              x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s - sigma_t/r2 ((e^h - 1)/h - 1)(eps(u2, s2) - eps_s)

with s_k the time where lambda = lambda_s + r_k h.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from difflab.solvers._exponential import (
    PREDICTIONS,
    Grid,
    Kind,
    Point,
    check_choice,
    check_int,
    lam_times,
    run_loop,
    to_model,
)
from difflab.solvers.base import Context, Solver, StepInfo, register

__all__ = ["DPMSolver", "DPMSolverAdaptive", "singlestep_orders", "singlestep_update"]

#: intermediate fractions r of the step for each order (Lu et al. 2022, Alg. 1 and 2)
_R = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}


def singlestep_orders(nfe: int, order: int = 3) -> list[int]:
    """Per-step orders spending exactly ``nfe`` evaluations ("DPM-Solver-fast", Lu et al. 2022,
    Sec. 3.4): order-3 steps and one lower-order step at the end (orders 3..3,2,1 when
    nfe % 3 == 0, 3..3,1 when 1, 3..3,2 when 2); for order 2: 2..2 and a final 1 if odd."""
    check_int("singlestep_orders", "order", order, 1, 3)
    check_int("singlestep_orders", "nfe", nfe, 1, 10**6)
    if order == 1:
        return [1] * nfe
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    k, rem = divmod(nfe, 3)
    if rem == 0:
        return [3] * (k - 1) + [2, 1] if k > 1 else [2, 1]
    return [3] * k + [rem]


def _model(ctx: Context, kind: Kind, x: Tensor, t: float, p: Point) -> Tensor:
    return to_model(kind.prediction, x, ctx.denoise(x, t), p[0], p[1])


def singlestep_update(
    ctx: Context,
    kind: Kind,
    x: Tensor,
    m_s: Tensor,
    s: Point,
    t: Point,
    order: int,
    mids: list[tuple[float, Point]],
    lower: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """One DPM-Solver-``order`` step (module docstring) given m_s = model output at s and the
    (time, coefficients) of the intermediate points.  With ``lower`` also return the
    order-(k-1) solution built from the same evaluations (DPM-Solver-12 / -23, Lu et al. 2022,
    Alg. 4/5, for step-size control)."""
    z = kind.z(s, t)
    c = kind.c(t)
    e = math.expm1(z)
    base = kind.lin(s, t) * x - (c * e) * m_s
    if order == 1:
        return base, None
    r1 = _R[order][0]
    t1, p1 = mids[0]
    u1 = kind.lin(s, p1) * x - (kind.c(p1) * math.expm1(r1 * z)) * m_s
    d1 = _model(ctx, kind, u1, t1, p1) - m_s
    if order == 2:
        out = base - (c * e / (2 * r1)) * d1
        return out, (base if lower else None)
    r2 = _R[3][1]
    t2, p2 = mids[1]
    e2 = math.expm1(r2 * z)
    u2 = kind.lin(s, p2) * x - (kind.c(p2) * e2) * m_s - (kind.c(p2) * r2 / r1 * (e2 / (r2 * z) - 1)) * d1
    d2 = _model(ctx, kind, u2, t2, p2) - m_s
    out = base - (c / r2 * (e / z - 1)) * d2
    return out, (base - (c * e / (2 * r1)) * d1 if lower else None)


@dataclass(frozen=True)
class _SingleState:
    grid: Grid
    orders: tuple[int, ...]
    mids: tuple[tuple[tuple[float, Point], ...], ...]


def _mid_points(ctx: Context, g: Grid, orders: tuple[int, ...]) -> tuple[tuple[tuple[float, Point], ...], ...]:
    """(time, coefficients) of every intermediate stage of the run, from one schedule inversion."""
    lams, where = [], []
    for i, k in enumerate(orders):
        if g.data[i + 1]:
            continue
        h = g.lam[i + 1] - g.lam[i]
        for r in _R[k]:
            where.append(i)
            lams.append(g.lam[i] + r * h)
    mids: list[list[tuple[float, Point]]] = [[] for _ in orders]
    if lams:
        m = lam_times(ctx, lams)
        for j, i in enumerate(where):
            mids[i].append((m.t[j], m.point(j)))
    return tuple(tuple(x) for x in mids)


@register
@dataclass(frozen=True)
class DPMSolver(Solver):
    """Singlestep DPM-Solver-1/2/3 (Lu et al. 2022, Alg. 1-2): ``order`` evaluations per step.

    Args:
        order: 1, 2 or 3 (global order of accuracy).
        prediction: ``'eps'`` (DPM-Solver) or ``'x0'`` (DPM-Solver++ singlestep, Lu et al. 2022b).
        orders: optional order of every step (length = number of grid intervals), e.g.
            ``singlestep_orders(nfe)`` for DPM-Solver-fast's budget split.
    """

    name: ClassVar[str] = "dpm_solver"
    order: int = 3
    prediction: str = "eps"
    orders: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        check_int(self.name, "order", self.order, 1, 3)
        check_choice(self.name, "prediction", self.prediction, PREDICTIONS)
        for k in self.orders:
            check_int(self.name, "orders entry", k, 1, 3)
        object.__setattr__(self, "orders", tuple(self.orders))

    @property
    def evals_per_step(self) -> int:  # type: ignore[override]
        return self.order

    def init(self, ctx: Context, x: Tensor) -> _SingleState:
        g = Grid.of(ctx)
        orders = self.orders or (self.order,) * g.steps
        if len(orders) != g.steps:
            raise ValueError(f"dpm_solver got orders for {len(orders)} steps but the time grid has {g.steps}")
        return _SingleState(g, orders, _mid_points(ctx, g, orders))

    def step(self, ctx: Context, i: int, x: Tensor, state: _SingleState) -> tuple[Tensor, _SingleState]:
        g, kind = state.grid, Kind(self.prediction)
        s = g.point(i)
        m_s = _model(ctx, kind, x, g.t[i], s)
        out, _ = singlestep_update(ctx, kind, x, m_s, s, g.point(i + 1), state.orders[i], list(state.mids[i]))
        return out, state

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        return run_loop(self, ctx, x, progress, callback)


def rms_error(x_hi: Tensor, x_lo: Tensor, x_prev: Tensor, rtol: float, atol: float) -> float:
    """max over samples of RMS((x_hi - x_lo) / max(atol, rtol max(|x_lo|, |x_prev|))) (Lu et al.
    2022, Alg. 4 / Sec. 4.2; Hairer et al. 1993, II.4 use atol + rtol |x|)."""
    delta = torch.maximum(torch.full_like(x_lo, atol), rtol * torch.maximum(x_lo.abs(), x_prev.abs()))
    e = ((x_hi - x_lo) / delta).reshape(x_lo.shape[0], -1)
    return float(e.pow(2).mean(1).sqrt().max())


@register
@dataclass(frozen=True)
class DPMSolverAdaptive(Solver):
    """Adaptive step size DPM-Solver-12 / DPM-Solver-23 (Lu et al. 2022, Sec. 4.2 and Alg. 4-5).

    Each trial step from lambda_s by h computes the order-k and order-(k-1) solutions from the
    same k evaluations, E = max over samples of RMS((x_k - x_{k-1}) / max(atol, rtol max(|x_{k-1}|,
    |x_prev|))); accepts when E <= 1; the next h = min(theta h E^{-1/k}, lambda_end - lambda_s).
    Only the end points of the time grid are used (a grid ending at sigma = 0 denoises at its
    last positive time).  The evaluations spent are ``sample(..., return_nfe=True)``'s count.

    Args:
        order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23).
        rtol, atol: tolerances (defaults of the paper, for data scaled to [-1, 1]).
        h_init: first trial step in lambda; theta: safety factor.
        prediction: ``'eps'`` (paper) or ``'x0'`` (DPM-Solver++).
        max_steps: give up (RuntimeError) after this many trial steps.
    """

    name: ClassVar[str] = "dpm_solver_adaptive"
    adaptive: ClassVar[bool] = True
    order: int = 3
    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    theta: float = 0.9
    prediction: str = "eps"
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        check_int(self.name, "order", self.order, 2, 3)
        check_choice(self.name, "prediction", self.prediction, PREDICTIONS)
        for k in ("rtol", "atol", "h_init"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{self.name} {k} must be positive, got {getattr(self, k)!r}")
        if not 0 < self.theta <= 1:
            raise ValueError(f"{self.name} theta must be in (0, 1], got {self.theta!r}")

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        g = Grid.of(ctx)
        end = g.steps - 1 if g.data[-1] else g.steps
        kind = Kind(self.prediction)
        s_t, s_p = g.t[0], g.point(0)
        lam_end = g.lam[end]
        h, x_prev, n = self.h_init, x, 0
        while lam_end - s_p[2] > 1e-9 * max(1.0, abs(lam_end)):
            n += 1
            if n > self.max_steps:
                raise RuntimeError(f"{self.name} did not reach the end within max_steps={self.max_steps} trial steps")
            h = min(h, lam_end - s_p[2])
            lams = [s_p[2] + h] + [s_p[2] + r * h for r in _R[self.order]]
            pts = lam_times(ctx, lams)
            t_t = g.t[end] if lams[0] >= lam_end else pts.t[0]
            t_p = g.point(end) if lams[0] >= lam_end else pts.point(0)
            mids = [(pts.t[j], pts.point(j)) for j in range(1, len(lams))]
            m_s = _model(ctx, kind, x, s_t, s_p)
            x_hi, x_lo = singlestep_update(ctx, kind, x, m_s, s_p, t_p, self.order, mids, lower=True)
            err = rms_error(x_hi, x_lo, x_prev, self.rtol, self.atol)
            if err <= 1:
                x_prev, x, s_t, s_p = x_lo, x_hi, t_t, t_p
                if callback is not None:
                    callback(StepInfo(n - 1, s_t, x, ctx.last_x0, ctx.nfe))
            h = min(self.theta * h * max(err, 1e-10) ** (-1 / self.order), lam_end - s_p[2])
        if g.data[-1]:
            x = ctx.denoise(x, g.t[end])
        return x
