"""An exponential-integrator multistep solver whose linear part is exact for Gaussian data of
scale ``sigma_data`` (difflab's own; the benchmark's error study, BENCHMARKS.md "samplers").

Where the error of DDIM-family solvers comes from at 5-10 steps: they treat either x0
(DPM-Solver++) or eps (DPM-Solver, DEIS) as slowly varying, but along a trajectory of data with
scale s, x0 - mean ~ e^lambda at high noise while eps ~ e^{-lambda} at low noise: each
parameterisation is far from constant in half of the range, and the multistep extrapolation of
big steps inherits the error.  With y = x / alpha, rho = sigma / alpha the probability-flow ODE
is dy/drho = (y - x0) / rho.  Split x0 = c y + (1 - c) F with c = s^2 / (rho^2 + s^2), the
shrinkage of the posterior mean of N(m, s^2 I) (whose F is the constant m):

    F = x0 - (alpha s^2 / sigma) eps,     d(y w) / dw = F,     w = 1 / sqrt(rho^2 + s^2),

so y_t w_t = y_s w_s + int_{w_s}^{w_t} F dw, exactly.  The solver is Adams-Bashforth in w
(Lagrange interpolation of the last ``order`` F, integrated exactly; Zhang & Chen 2022's DEIS
with this integrating factor), optionally with the Adams-Moulton corrector that reuses the next
step's evaluation (the UniC idea of Zhao et al. 2023: free, one order more).  It is the
linear-term idea of DPM-Solver-v3 (Zheng et al. 2023, eq. 9) with the closed-form statistics of
an isotropic Gaussian of EDM's scale sigma_data (Karras et al. 2022) instead of empirical model
statistics.  As s -> 0 it is Adams-Bashforth in e^lambda on x0 (order 1 is then DDIM).

Choose ``sigma_data`` as the data's per-dimension standard deviation (0.5 for images in [-1, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from difflab.solvers._exponential import (
    Grid,
    History,
    MultistepState,
    OneEvalSolver,
    check_int,
    check_sigma_data,
    combine,
    lagrange_derivs,
    shifted_output,
)
from difflab.solvers.base import Context, register

__all__ = ["GaussEI", "interval_weights"]


def interval_weights(us: list[float]) -> list[float]:
    """int_0^1 l_j(u) du for the Lagrange basis l_j on nodes ``us``."""
    W = lagrange_derivs(us)
    return [sum(W[k][j] / math.factorial(k + 1) for k in range(len(us))) for j in range(len(us))]


@dataclass(frozen=True)
class _State(MultistepState):
    w: tuple[float, ...] = ()


@register
@dataclass(frozen=True)
class GaussEI(OneEvalSolver):
    """Adams-Bashforth(-Moulton) in w = 1/sqrt(rho^2 + sigma_data^2) on F (module docstring).

    Args:
        ab_order: Adams-Bashforth order 1-3, warmed up from 1.  The default 2 reaches its
            asymptotic rate at tens of steps; 3 is better at 5-10 steps but pre-asymptotic up to ~100.
        sigma_data: the Gaussian scale s > 0 of the linear part.
        corrector: Adams-Moulton correction of each point with its own evaluation (no extra
            NFE; the order becomes ``order + 1``).
        lower_order_final: at most ``steps - i`` outputs on step i.
    """

    name: ClassVar[str] = "gauss_ei"
    ab_order: int = 2
    sigma_data: float = 1.0
    corrector: bool = False
    lower_order_final: bool = False

    def __post_init__(self) -> None:
        check_int(self.name, "ab_order", self.ab_order, 1, 3)
        check_sigma_data(self.name, self.sigma_data)
        if self.sigma_data == 0:
            raise ValueError("gauss_ei sigma_data must be > 0 (sigma_data = 0 is dpmpp_2m / dpmpp_3m's setting)")

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.ab_order + (1 if self.corrector else 0)

    def init(self, ctx: Context, x: Tensor) -> _State:
        g = Grid.of(ctx)
        w = tuple(1 / math.hypot(s / a, self.sigma_data) for a, s in zip(g.alpha, g.sigma))
        return _State(g, w=w)

    def advance(self, ctx: Context, i: int, x: Tensor, x0: Tensor, state: _State) -> tuple[Tensor, _State]:
        g, w = state.grid, state.w
        a = g.alpha[i]
        f = shifted_output(x, x0, a, g.sigma[i], self.sigma_data)
        if self.corrector and state.extra is not None:
            z_prev, k_prev = state.extra  # y w at the previous point, order used from there
            nodes = (i, *state.hist.idx[:k_prev])
            dw = w[i] - w[i - 1]
            us = [(w[j] - w[i - 1]) / dw for j in nodes]
            z = combine(1.0, z_prev, [-dw * c for c in interval_weights(us)], (f, *state.hist.out[:k_prev]))
            x = (a / w[i]) * z
        hist: History = state.hist.push(i, f, self.ab_order)
        k = min(self.ab_order, len(hist))
        if self.lower_order_final:
            k = max(1, min(k, g.steps - i))
        dw = w[i + 1] - w[i]
        us = [(w[j] - w[i]) / dw for j in hist.idx[:k]]
        z = x * (w[i] / a)
        z_next = combine(1.0, z, [-dw * c for c in interval_weights(us)], hist.out[:k])
        return (g.alpha[i + 1] / w[i + 1]) * z_next, state.evolve(hist=hist, extra=(z, k))
