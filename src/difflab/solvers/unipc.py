"""UniPC: unified predictor-corrector (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models", Alg. 1-3 and eq. 8-9, B(h) variants of
Sec. 3.3 / App. C).

With h = lambda_t - lambda_s, the model output m (x0 by default, or eps), hh = -h for x0
(h for eps, the substitution of :mod:`._exponential`), r_k = (lambda_{s_k} - lambda_s)/h of the
previous outputs and D_k = (m_{s_k} - m_s) / r_k:

    UniP-p:  x_t = lin x_s - c (e^{hh} - 1) m_s - c B(h) sum_{k<p} a_k D_k
    UniC-p:  x_t^c = lin x_s - c (e^{hh} - 1) m_s - c B(h) (sum_{k<p} a_k D_k + a_p (m_t - m_s))

where the a solve R a = g with R_{ik} = r_k^{i-1}, g_i = (i-1)! hh phi_{i+1}(hh) ... / B(h)
(the h_phi_k recursion of the reference code), B(h) = hh (``bh1``) or e^{hh} - 1 (``bh2``);
order 2 predictor and order 1 corrector use a = 1/2 as the reference code does.  The corrector
reuses the evaluation at the predicted point (no extra NFE) and raises the order by one:
UniPC-p is of order p + 1.  The last step has no corrector (its evaluation would be the next step's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import Tensor

from difflab.solvers._exponential import (
    PREDICTIONS,
    Grid,
    History,
    Kind,
    MultistepState,
    OneEvalSolver,
    check_choice,
    check_int,
    check_sigma_data,
    shifted_output,
    step_order,
    to_model,
)
from difflab.solvers.base import Context, register

__all__ = ["UniPC", "unipc_update"]


def unipc_update(
    kind: Kind,
    g: Grid,
    s: int,
    x: Tensor,
    hist: History,
    order: int,
    variant: str,
    m_t: Tensor | None = None,
) -> Tensor:
    """UniP-``order`` from grid point s to s + 1 with ``hist`` (newest first, hist.idx[0] = s);
    with ``m_t`` (the output at the predicted point s + 1) UniC-``order`` instead."""
    ps, pt = g.point(s), g.point(s + 1)
    h = pt[2] - ps[2]
    hh = kind.z(ps, pt)
    m0 = hist.out[0]
    rks = [(g.lam[j] - ps[2]) / h for j in hist.idx[1:order]]
    d1s = [(m - m0) / r for m, r in zip(hist.out[1:order], rks)]
    rks.append(1.0)
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    R, b = [], []
    h_phi_k, fact = h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    c = kind.c(pt)
    out = kind.lin(ps, pt) * x - (c * h_phi_1) * m0
    if m_t is None:  # predictor
        if order == 1:
            return out
        rhos = [0.5] if order == 2 else np.linalg.solve(np.array(R)[:-1, :-1], np.array(b[:-1])).tolist()
        terms = list(zip(rhos, d1s))
    else:  # corrector
        rhos = [0.5] if order == 1 else np.linalg.solve(np.array(R), np.array(b)).tolist()
        terms = [*zip(rhos[:-1], d1s), (rhos[-1], m_t - m0)]
    for a, d in terms:
        out = out - (c * b_h * a) * d
    return out


@dataclass(frozen=True)
class _UniPCState(MultistepState):
    eff: Grid | None = None  # the grid the formulas use (shifted by sigma_data)


@register
@dataclass(frozen=True)
class UniPC(OneEvalSolver):
    """UniPC-p: multistep UniP-p predictor with the UniC corrector, one evaluation per step.

    Args:
        predictor_order: p in 1..3; the solver's order is p + 1 with the corrector, p without.
        variant: ``'bh1'`` (B(h) = h, recommended by the paper for unconditional sampling) or
            ``'bh2'`` (B(h) = e^h - 1, for guided sampling).
        prediction: ``'x0'`` (data prediction, default) or ``'eps'``.
        corrector: apply UniC (free: it reuses the next step's evaluation).
        lower_order_final: at most ``steps - i`` outputs on step i.
        sigma_data: > 0 makes the linear part exact for Gaussian data of that scale (see
            :func:`~difflab.solvers._exponential.shifted_output`; x0 prediction only).
    """

    name: ClassVar[str] = "unipc"
    predictor_order: int = 2
    variant: str = "bh1"
    prediction: str = "x0"
    corrector: bool = True
    lower_order_final: bool = False
    sigma_data: float = 0.0

    def __post_init__(self) -> None:
        check_int(self.name, "predictor_order", self.predictor_order, 1, 3)
        check_sigma_data(self.name, self.sigma_data)
        if self.sigma_data and self.prediction != "x0":
            raise ValueError(f"unipc sigma_data={self.sigma_data} needs prediction='x0', got {self.prediction!r}")
        check_choice(self.name, "variant", self.variant, ("bh1", "bh2"))
        check_choice(self.name, "prediction", self.prediction, PREDICTIONS)

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.predictor_order + (1 if self.corrector else 0)

    def init(self, ctx: Context, x: Tensor) -> _UniPCState:
        g = Grid.of(ctx)
        return _UniPCState(g, eff=g.shifted(self.sigma_data))

    def advance(self, ctx: Context, i: int, x: Tensor, x0: Tensor, state: _UniPCState) -> tuple[Tensor, _UniPCState]:
        g, kind = state.eff, Kind(self.prediction)
        a, s = state.grid.alpha[i], state.grid.sigma[i]
        if self.sigma_data:
            m = shifted_output(x, x0, a, s, self.sigma_data)
        else:
            m = to_model(self.prediction, x, x0, a, s)
        if self.corrector and state.extra is not None:
            x_start, k_prev = state.extra
            x = unipc_update(kind, g, i - 1, x_start, state.hist, k_prev, self.variant, m_t=m)
        hist = state.hist.push(i, m, self.predictor_order)
        state = state.evolve(hist=hist)
        k = step_order(self.predictor_order, i, state, self.lower_order_final)
        x_next = unipc_update(kind, g, i, x, hist, k, self.variant)
        return x_next, state.evolve(extra=(x, k))
