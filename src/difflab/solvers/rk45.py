"""Adaptive Dormand-Prince RK5(4) on the probability-flow ODE (Dormand & Prince 1980; step
control of Hairer, Norsett & Wanner 1993, Sec. II.4), the black-box sampler of Song et al.
(2021, Sec. 4.3, "RK45 with rtol = atol = 1e-5").

It integrates in y = x / alpha against v = log(sigma / alpha) = -lambda, where the ODE reads

    dy/dv = y - x0_hat(alpha y, t(v))

(the scale-free form of Karras et al. 2022, eq. 4, with sigma = e^v): its Jacobian has
eigenvalues in [0, 1] for any data, so steps are limited by accuracy, never by stability.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from difflab.solvers._exponential import Grid
from difflab.solvers.base import Context, Solver, StepInfo, register

__all__ = ["RK45"]

# Dormand-Prince 5(4) tableau (Hairer et al. 1993, Table 5.2)
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# fifth-order weights minus the embedded fourth-order ones
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _lincomb(y: Tensor, h: float, coefs: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    out = y
    for a, k in zip(coefs, ks):
        if a != 0.0:
            out = out + (h * a) * k
    return out


def _norm(e: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float) -> float:
    """max over samples of RMS(e / (atol + rtol max(|y0|, |y1|)))."""
    sc = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    return float((e / sc).reshape(e.shape[0], -1).pow(2).mean(1).sqrt().max())


@register
@dataclass(frozen=True)
class RK45(Solver):
    """Dormand-Prince RK5(4) with adaptive steps, FSAL (six evaluations per accepted step) and
    Hairer's initial step.  Only the end points of the time grid are used; a grid ending at
    sigma = 0 denoises at its last positive time.  ``sample(..., return_nfe=True)`` reports the
    evaluations used.

    Args:
        rtol, atol: local error tolerances on y = x / alpha (per sample, RMS over dimensions).
        max_steps: RuntimeError after this many trial steps.
    """

    name: ClassVar[str] = "rk45"
    order: ClassVar[int] = 5
    adaptive: ClassVar[bool] = True
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 100_000

    def __post_init__(self) -> None:
        for k in ("rtol", "atol"):
            if not getattr(self, k) > 0:
                raise ValueError(f"rk45 {k} must be positive, got {getattr(self, k)!r}")

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        g = Grid.of(ctx)
        end = g.steps - 1 if g.data[-1] else g.steps
        v0, v1 = -g.lam[0], -g.lam[end]
        t_end = g.t[end]

        def times(vs: list[float]) -> tuple[list[float], list[float]]:
            ts = ctx.schedule.t_of_lam(-torch.tensor(vs, dtype=torch.float64))
            return ts.tolist(), ctx.schedule.alpha(ts).tolist()

        def f(y: Tensor, t: float, a: float) -> Tensor:
            return y - ctx.denoise(a * y, t)

        y = x / g.alpha[0]
        k1 = f(y, g.t[0], g.alpha[0])
        h = self._initial_step(y, k1, v0, v1, f, times)
        v, n, accepted = v0, 0, 0
        direction = math.copysign(1.0, v1 - v0)
        while (v1 - v) * direction > 1e-12 * max(1.0, abs(v1)):
            n += 1
            if n > self.max_steps:
                raise RuntimeError(f"rk45 did not reach the end within max_steps={self.max_steps} trial steps")
            h = direction * min(abs(h), abs(v1 - v))
            last = abs(v1 - v - h) <= 1e-12 * max(1.0, abs(v1))
            ts, als = times([v + c * h for c in _C[1:]])
            if last:
                ts[-1], ts[-2] = t_end, t_end
            ks = [k1]
            for j in range(1, 7):
                yj = _lincomb(y, h, _A[j], ks)
                if j == 6:
                    y_new = yj
                ks.append(f(yj, ts[j - 1], als[j - 1]))
            err = _norm(_lincomb(torch.zeros_like(y), h, _E, ks), y, y_new, self.rtol, self.atol)
            if err <= 1.0:
                v = v1 if last else v + h
                y, k1 = y_new, ks[6]
                accepted += 1
                fac = 10.0 if err == 0 else min(10.0, max(0.2, 0.9 * err ** (-1 / 5)))
                if callback is not None:
                    callback(StepInfo(accepted - 1, ts[-1], y * als[-1], ctx.last_x0, ctx.nfe))
            else:
                fac = max(0.2, 0.9 * err ** (-1 / 5))
            h = h * fac
        x = y * g.alpha[end]
        if g.data[-1]:
            x = ctx.denoise(x, g.t[end])
        return x

    def _initial_step(self, y: Tensor, f0: Tensor, v0: float, v1: float, f, times) -> float:
        """Hairer et al. (1993), Sec. II.4, p. 169: one extra evaluation."""
        sc = self.atol + self.rtol * y.abs()
        d0 = float((y / sc).pow(2).mean().sqrt())
        d1 = float((f0 / sc).pow(2).mean().sqrt())
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, abs(v1 - v0))
        direction = math.copysign(1.0, v1 - v0)
        ts, als = times([v0 + direction * h0])
        f1 = f(y + direction * h0 * f0, ts[0], als[0])
        d2 = float(((f1 - f0) / sc).pow(2).mean().sqrt()) / h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
        return direction * min(100 * h0, h1, abs(v1 - v0))
