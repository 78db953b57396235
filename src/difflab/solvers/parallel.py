"""Parallel sampling by Picard iteration over a sliding window, after ParaDiGMS (Shih et al.
2023, "Parallel Sampling of Diffusion Models", Alg. 1).

A deterministic one-evaluation-per-step solver (``OneEvalSolver``: its step is x_{i+1} =
advance(x_i, den(x_i, t_i), history)) defines the sequence x_0 .. x_N.  Instead of N sequential
evaluations, every round evaluates the denoiser at all points of a window [a, a + p) at once
(one batched call) using the previous iterate, then sweeps the cheap updates through the
window from the converged point x_a:

    x_{i+1}^{k+1} = advance(x_i^{k+1}, den(x_i^k, t_i), history^{k+1}).

This is Picard iteration on the exponential-integrator (variation-of-constants) form of the
ODE: the linear part is applied exactly and only the denoiser term lags one round; its fixed
point is the sequential solution, and x_{a+1} is exact after every round, so at most N rounds
are ever needed.  The window slides past every point whose change in the round,
RMS(x_i^{k+1} - x_i^k) per sample, is at most ``tol`` times the noise level sigma(t_i)
(ParaDiGMS' tolerance on the noise scale), and new points enter initialised with the last
iterate.  ``sample(..., return_nfe=True)`` then counts rounds (sequential batched calls);
:meth:`Parallel.solve` also returns the total number of evaluations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from difflab.solvers._exponential import OneEvalSolver
from difflab.solvers.base import Context, Solver, StepInfo, get, register

__all__ = ["Parallel", "ParallelResult"]


class ParallelResult(NamedTuple):
    x: Tensor
    rounds: int
    evals: int


def _inner(solver: Solver | str) -> OneEvalSolver:
    s = get(solver) if isinstance(solver, str) else solver
    if s.name == "ddim" and not s.stochastic:
        s = get("plms", ab_order=1)  # deterministic DDIM is PLMS of order 1 (same update)
    if not isinstance(s, OneEvalSolver) or s.stochastic:
        raise ValueError(
            f"parallel needs a deterministic one-evaluation-per-step solver (ddim, plms, deis, dpmpp_2m, "
            f"dpmpp_3m, unipc), got {s!r}"
        )
    return s


def _repeat_cond(cond: dict[str, Any], batch: int, times: int) -> dict[str, Any]:
    """Conditioning tensors with a batch dimension, repeated for a window of ``times`` copies."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch:
            v = v.repeat(times, *([1] * (v.dim() - 1)))
        out[k] = v
    return out


@register
@dataclass(frozen=True)
class Parallel(Solver):
    """ParaDiGMS-style parallel sampler around a deterministic solver.

    Args:
        solver: the sequential solver (a name or instance; one evaluation per step).
        window: points evaluated per round (batch size = window x samples).
        tol: convergence tolerance relative to sigma(t_i) (module docstring).
        max_rounds: RuntimeError if not converged after this many rounds (default: steps).
    """

    name: ClassVar[str] = "parallel"
    solver: Any = "dpmpp_2m"
    window: int = 8
    tol: float = 1e-5
    max_rounds: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "solver", _inner(self.solver))
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"parallel window must be a positive integer, got {self.window!r}")
        if not self.tol >= 0:
            raise ValueError(f"parallel tol must be >= 0, got {self.tol!r}")

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.solver.order

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        return self.solve(ctx, x, callback).x

    def solve(self, ctx: Context, x: Tensor, callback: Callable[[StepInfo], None] | None = None) -> ParallelResult:
        inner = self.solver
        state0 = inner.init(ctx, x)
        g = state0.grid
        n, b = g.steps, x.shape[0]
        positive = [s for s in g.sigma if s > 0]
        scale = [s if s > 0 else min(positive) for s in g.sigma]
        pts: list[Tensor] = [x]
        states: list[Any] = [state0]
        start, rounds, evals = 0, 0, 0
        limit = self.max_rounds if self.max_rounds is not None else n
        while start < n:
            if rounds >= limit:
                raise RuntimeError(f"parallel did not converge within {limit} rounds (tol={self.tol})")
            end = min(start + self.window, n)
            while len(pts) < end:
                pts.append(pts[-1])  # new points start from the latest iterate
            idx = range(start, end)
            xb = torch.cat([pts[i] for i in idx])
            tb = torch.tensor([g.t[i] for i in idx], dtype=torch.float64).repeat_interleave(b)
            wctx = dataclasses.replace(ctx, cond=_repeat_cond(ctx.cond, b, len(idx)), nfe=0)
            x0s = wctx.denoise(xb, tb).split(b)
            ctx.nfe += 1
            ctx.last_x0 = x0s[-1]
            rounds, evals = rounds + 1, evals + len(idx)
            cur, st = pts[start], states[start]
            errs = []
            for j, i in enumerate(idx):
                if g.data[i + 1]:
                    nxt = x0s[j]
                else:
                    nxt, st = inner.advance(ctx, i, cur, x0s[j], st)
                old = pts[i + 1] if i + 1 < len(pts) else None
                errs.append(
                    float("inf")
                    if old is None
                    else float((nxt - old).reshape(b, -1).pow(2).mean(1).sqrt().max()) / scale[i + 1]
                )
                if i + 1 < len(pts):
                    pts[i + 1] = nxt
                else:
                    pts.append(nxt)
                if i + 1 < len(states):
                    states[i + 1] = st
                else:
                    states.append(st)
                cur = nxt
            new_start = start + 1  # x_{start+1} is exact after any round
            while new_start < end and errs[new_start - start] <= self.tol:
                new_start += 1
            if callback is not None:
                callback(StepInfo(new_start - 1, g.t[new_start], pts[new_start], ctx.last_x0, ctx.nfe))
            start = new_start
        return ParallelResult(pts[n], rounds, evals)
