"""DEIS, the diffusion exponential integrator sampler with time-domain Adams-Bashforth
coefficients, tAB-DEIS (Zhang & Chen 2022, "Fast Sampling of Diffusion Models with
Exponential Integrator", eq. 13-15 and Alg. 1).

In the scale-free coordinates y = x / alpha, rho = sigma / alpha the probability-flow ODE is
dy = eps(x, t) drho (eq. 11 after the exponential-integrator change of variables).  tAB-DEIS
fits a polynomial in t through the last r + 1 noise predictions and integrates it exactly
against drho:

    x_{i+1} = (alpha_{i+1} / alpha_i) x_i + alpha_{i+1} sum_{j=0}^{r} C_{ij} eps_{i-j},
    C_{ij} = int_{t_i}^{t_{i+1}} prod_{k != j} (tau - t_{i-k}) / (t_{i-j} - t_{i-k}) drho(tau).

The C_{ij} are computed once per run by 16-point Gauss-Legendre quadrature in log rho (the
integrand is smooth there; the paper integrates them numerically too).  ``order`` = r + 1,
warmed up from first order (= DDIM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from difflab.solvers._exponential import (
    Grid,
    MultistepState,
    OneEvalSolver,
    check_int,
    combine,
)
from difflab.solvers.base import Context, register

__all__ = ["DEIS", "tab_coefficients"]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


def tab_coefficients(ctx: Context, g: Grid, orders: list[int]) -> list[list[float]]:
    """C[i][j] of every step (module docstring), orders[i] nodes t_i, t_{i-1}, ... for step i."""
    us, spans = [], []
    for i, _ in enumerate(orders):
        if g.data[i + 1]:
            spans.append(None)
            continue
        u0, u1 = -g.lam[i], -g.lam[i + 1]  # log rho
        mid, half = (u0 + u1) / 2, (u1 - u0) / 2
        spans.append((len(us), half))
        us.extend((mid + half * _GL_NODES).tolist())
    taus = ctx.schedule.t_of_lam(-torch.tensor(us, dtype=torch.float64)).tolist() if us else []
    coefs: list[list[float]] = []
    for i, k in enumerate(orders):
        if spans[i] is None:
            coefs.append([])
            continue
        start, half = spans[i]
        nodes = [g.t[i - j] for j in range(k)]
        row = [0.0] * k
        for q in range(len(_GL_NODES)):
            tau, u = taus[start + q], us[start + q]
            w = half * _GL_WEIGHTS[q] * np.exp(u)  # drho = rho du
            for j in range(k):
                ell = 1.0
                for l in range(k):
                    if l != j:
                        ell *= (tau - nodes[l]) / (nodes[j] - nodes[l])
                row[j] += w * ell
        coefs.append(row)
    return coefs


@dataclass(frozen=True)
class _DEISState(MultistepState):
    coefs: tuple[tuple[float, ...], ...] = ()


@register
@dataclass(frozen=True)
class DEIS(OneEvalSolver):
    """tAB-DEIS of order 1-3 (Zhang & Chen 2022), one evaluation per step.

    Args:
        order: 1 (DDIM), 2 or 3 -- polynomial degree + 1 and global order of accuracy.
        lower_order_final: at most ``steps - i`` nodes on step i (lower orders at the end).
    """

    name: ClassVar[str] = "deis"
    order: int = 3
    lower_order_final: bool = False

    def __post_init__(self) -> None:
        check_int(self.name, "order", self.order, 1, 3)

    def init(self, ctx: Context, x: Tensor) -> _DEISState:
        g = Grid.of(ctx)
        orders = [min(self.order, i + 1) for i in range(g.steps)]
        if self.lower_order_final:
            orders = [min(k, g.steps - i) for i, k in enumerate(orders)]
        coefs = tab_coefficients(ctx, g, orders)
        return _DEISState(g, coefs=tuple(tuple(c) for c in coefs))

    def advance(self, ctx: Context, i: int, x: Tensor, x0: Tensor, state: _DEISState) -> tuple[Tensor, _DEISState]:
        g = state.grid
        a, s, _ = g.point(i)
        hist = state.hist.push(i, (x - a * x0) / s, self.order)
        c = state.coefs[i]
        a_n = g.alpha[i + 1]
        out = combine(a_n / a, x, [-a_n * cj for cj in c], hist.out[: len(c)])
        return out, state.evolve(hist=hist)
