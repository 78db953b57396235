"""Machinery shared by the exponential-integrator solvers (DEIS, DPM-Solver, DPM-Solver++,
UniPC, PNDM/PLMS) and by ``parallel``: phi functions, the grid's coefficients computed once
per run, the multistep history, and the one-evaluation-per-step protocol.

The probability-flow ODE in half log-SNR lambda has the exact solution (Lu et al. 2022,
"DPM-Solver", eq. 3.4, and Lu et al. 2022b, "DPM-Solver++", eq. 8)

    noise prediction:  x_t = (alpha_t/alpha_s) x_s - sigma_t int_{lambda_s}^{lambda_t} e^{lambda_t - lambda} eps dlambda
    data prediction:   x_t = (sigma_t/sigma_s) x_s + alpha_t int_{lambda_s}^{lambda_t} e^{lambda - lambda_t} x0 dlambda

Both are one formula with the substitution (alpha, sigma, h) <-> (sigma, alpha, -h) (the
symmetry UniPC's reference code uses): with ``lin = c_t / c_s`` (c = alpha for eps, sigma
for x0), ``c = sigma_t`` (eps) or ``alpha_t`` (x0), ``z = h`` (eps) or ``-h`` (x0) and the
model output m expanded in u = (lambda - lambda_s) / h,

    x_t = lin x_s - c sum_k z phi_{k+1}(z) m^{(k)}(0),   phi_{k+1}(z) = int_0^1 e^{(1-u) z} u^k / k! du

(Hochbruck & Ostermann 2010, eq. 2.10).  ``Kind`` encodes the substitution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from difflab.solvers.base import Context, Solver, StepInfo

__all__ = [
    "PREDICTIONS",
    "Grid",
    "History",
    "Kind",
    "OneEvalSolver",
    "check_choice",
    "check_int",
    "phi",
    "to_model",
]

PREDICTIONS = ("x0", "eps")


# --- validation --------------------------------------------------------------------------
def check_int(solver: str, name: str, value: Any, lo: int, hi: int) -> None:
    """Raise a ValueError naming the option unless ``lo <= value <= hi`` (an int)."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{solver} {name} must be an integer in [{lo}, {hi}], got {value!r}")


def check_sigma_data(solver: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not (0 <= value < math.inf):
        raise ValueError(f"{solver} sigma_data must be a finite number >= 0, got {value!r}")


def check_choice(solver: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{solver} {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# --- phi functions -----------------------------------------------------------------------
def phi(k: int, z: float) -> float:
    """phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1}/(k-1)! du (phi_0 = e^z), accurate for small |z|.

    Recurrence phi_{k+1}(z) = (phi_k(z) - 1/k!) / z where it is stable, else the series
    sum_j z^j / (j + k)!.
    """
    if k == 0:
        return math.exp(z)
    if abs(z) > 0.5:
        v = math.expm1(z) / z
        for j in range(1, k):
            v = (v - 1 / math.factorial(j)) / z
        return v
    term, total, j = 1 / math.factorial(k), 0.0, 0
    while True:
        total += term
        j += 1
        term *= z / (j + k)
        if abs(term) < 1e-18 * max(abs(total), 1e-300) or j > 60:
            return total


# --- the grid's coefficients, once per run ----------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """alpha, sigma, lambda of every grid time as Python floats (one vectorised schedule
    call per run instead of several per step); ``data[i]``: sigma(t_i) = 0."""

    t: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    lam: tuple[float, ...]
    data: tuple[bool, ...]

    @classmethod
    def of(cls, ctx: Context) -> Grid:
        """The run's grid, from the coefficients the Context computed once."""
        return cls(ctx.times, ctx.alphas, ctx.sigmas, ctx.lams, tuple(s == 0 for s in ctx.sigmas))

    @classmethod
    def at(cls, ctx: Context, ts: Tensor) -> Grid:
        """Coefficients at arbitrary times (float64 tensor)."""
        s = ctx.schedule
        ts = torch.as_tensor(ts, dtype=torch.float64)
        la, ls = s.log_alpha(ts), s.log_sigma(ts)
        sig = ls.exp()
        return cls(
            tuple(ts.tolist()),
            tuple(la.exp().tolist()),
            tuple(sig.tolist()),
            tuple((la - ls).tolist()),
            tuple((sig == 0).tolist()),
        )

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def point(self, i: int) -> Point:
        return self.alpha[i], self.sigma[i], self.lam[i]

    def shifted(self, sigma_data: float) -> Grid:
        """The grid seen by a data-prediction solver with a Gaussian prior of scale sigma_data:
        sigma_eff^2 = sigma^2 + alpha^2 sigma_data^2, lambda_eff = log(alpha / sigma_eff)
        (see :func:`shifted_output`); ``data`` flags stay those of the real schedule."""
        if sigma_data == 0:
            return self
        sig = tuple(math.hypot(s, a * sigma_data) for a, s in zip(self.alpha, self.sigma))
        lam = tuple(math.log(a / s) for a, s in zip(self.alpha, sig))
        return Grid(self.t, self.alpha, sig, lam, self.data)


def lam_times(ctx: Context, lams: list[float]) -> Grid:
    """Coefficients at the times where lambda takes the given values (one inversion)."""
    ts = ctx.schedule.t_of_lam(torch.tensor(lams, dtype=torch.float64))
    return Grid.at(ctx, ts)


# --- data / noise parameterisation ------------------------------------------------------
Point = tuple[float, float, float]  # (alpha, sigma, lambda) at one time


@dataclass(frozen=True)
class Kind:
    """The substitution that makes one formula serve noise (``eps``) and data (``x0``) prediction."""

    prediction: str

    @property
    def data(self) -> bool:
        return self.prediction == "x0"

    def lin(self, s: Point, t: Point) -> float:
        """Linear part x_s -> x_t: alpha_t/alpha_s (eps) or sigma_t/sigma_s (x0)."""
        return t[1] / s[1] if self.data else t[0] / s[0]

    def c(self, t: Point) -> float:
        return t[0] if self.data else t[1]

    def z(self, s: Point, t: Point) -> float:
        h = t[2] - s[2]
        return -h if self.data else h


def to_model(prediction: str, x: Tensor, x0: Tensor, alpha: float, sigma: float) -> Tensor:
    """The model output a solver works with: x0 itself or eps = (x - alpha x0) / sigma."""
    return x0 if prediction == "x0" else (x - alpha * x0) / sigma


def shifted_output(x: Tensor, x0: Tensor, alpha: float, sigma: float, sigma_data: float) -> Tensor:
    """F = x0 - (alpha sigma_data^2 / sigma) eps, the model output of the data-prediction
    exponential integrator whose linear part is exact for data N(m, sigma_data^2 I).

    The probability-flow ODE in y = x / alpha, rho = sigma / alpha reads dy/drho = (y - x0) / rho.
    Splitting x0 = c y + (1 - c) F with c = sigma_data^2 / (rho^2 + sigma_data^2) -- the
    posterior-mean shrinkage of that Gaussian, whose F is the constant m -- gives
    d(y w)/dkappa = e^kappa F with kappa = log w = -log sqrt(rho^2 + sigma_data^2): the
    data-prediction ODE of DPM-Solver++ (Lu et al. 2022b, eq. 8) with lambda -> kappa, x0 -> F,
    i.e. on the schedule (alpha, sqrt(sigma^2 + alpha^2 sigma_data^2)) (:meth:`Grid.shifted`).
    sigma_data = 0 is DPM-Solver++ itself.  This is the idea of DPM-Solver-v3 (Zheng et al.
    2023, eq. 9-10: a better linear term makes the remaining model output flatter in time)
    with the linear coefficient of an isotropic Gaussian of EDM's scale sigma_data (Karras et
    al. 2022) instead of empirical model statistics.
    """
    if sigma_data == 0:
        return x0
    eps = (x - alpha * x0) / sigma
    return x0 - (alpha * sigma_data**2 / sigma) * eps


# --- multistep history -------------------------------------------------------------------
@dataclass(frozen=True)
class History:
    """The last model outputs, newest first: ``idx[j]`` is the grid index of ``out[j]``.
    Immutable, so a state can be kept and resumed (``parallel`` relies on this)."""

    idx: tuple[int, ...] = ()
    out: tuple[Tensor, ...] = ()

    def push(self, i: int, m: Tensor, keep: int) -> History:
        return History(((i, *self.idx))[:keep], ((m, *self.out))[:keep])

    def __len__(self) -> int:
        return len(self.idx)


@dataclass(frozen=True)
class MultistepState:
    grid: Grid
    hist: History = History()
    extra: Any = None  # solver-specific (UniPC: the point the last predictor started from)

    def evolve(self, **kw: Any) -> MultistepState:
        return replace(self, **kw)


def step_order(max_order: int, i: int, state: MultistepState, lower_order_final: bool) -> int:
    """Order of step i: warm up from 1 with the history available (the newest output included);
    with ``lower_order_final`` also at most the number of intervals left (DPM-Solver++'s code,
    Lu et al. 2022b, App. D), which keeps the last large steps stable."""
    k = min(max_order, len(state.hist))
    if lower_order_final:
        k = min(k, state.grid.steps - i)
    return max(k, 1)


# --- the one-evaluation-per-step protocol ---------------------------------------------------
class OneEvalSolver(Solver):
    """A solver whose step i evaluates the denoiser once, at (x_i, t_i), and then updates
    without further evaluations: ``x_{i+1}, state = advance(ctx, i, x_i, x0_i, state)``.

    Multistep exponential integrators (DDIM, DPM-Solver++(2M/3M), DEIS, PLMS, UniPC) have
    this form; ``parallel`` batches the evaluations of a window of such steps (ParaDiGMS).
    ``init`` must return a state with a ``grid`` attribute.  The loop here is the base
    loop (a step to sigma = 0 is the final denoising step) without per-step schedule calls.
    """

    evals_per_step: ClassVar[int] = 1

    def advance(self, ctx: Context, i: int, x: Tensor, x0: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def step(self, ctx: Context, i: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        return self.advance(ctx, i, x, ctx.denoise(x, state.grid.t[i]), state)

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        return run_loop(self, ctx, x, progress, callback)


def run_loop(
    solver: Solver, ctx: Context, x: Tensor, progress: bool, callback: Callable[[StepInfo], None] | None
) -> Tensor:
    """Solver.run's loop for solvers whose state carries a :class:`Grid`."""
    state = solver.init(ctx, x)
    g: Grid = state.grid
    for i in tqdm(range(g.steps), desc=solver.name, disable=not progress, leave=False):
        if g.data[i + 1]:
            x = ctx.denoise(x, g.t[i])
        else:
            x, state = solver.step(ctx, i, x, state)
        if callback is not None:
            callback(StepInfo(i, g.t[i + 1], x, ctx.last_x0, ctx.nfe))
    return x


def lagrange_derivs(us: list[float]) -> list[list[float]]:
    """W[k][j] = d^k/du^k of the Lagrange basis polynomial of node j at u = 0, so that the
    interpolant of values m_j at nodes u_j has k-th derivative sum_j W[k][j] m_j at 0."""
    n = len(us)
    W = [[0.0] * n for _ in range(n)]
    for j, uj in enumerate(us):
        poly = [1.0]  # coefficients of prod_{l != j} (u - u_l) / (u_j - u_l), lowest first
        for l, ul in enumerate(us):
            if l == j:
                continue
            d = uj - ul
            poly = [(a - ul * b) / d for a, b in zip([0.0, *poly], [*poly, 0.0])]
            # poly(u) * (u - ul) / d: shift gives u * poly, minus ul * poly
        for k in range(n):
            W[k][j] = poly[k] * math.factorial(k)
    return W


def taylor_weights(kind: Kind, s: Point, t: Point, W: list[list[float]]) -> list[float]:
    """Weights w_j with x_t = lin x_s - sum_j w_j m_j for the exponential integrator of the
    interpolant whose derivatives at u = 0 are sum_j W[k][j] m_j: w_j = c sum_k z phi_{k+1}(z) W[k][j]."""
    z, c = kind.z(s, t), kind.c(t)
    coef = [c * z * phi(k + 1, z) for k in range(len(W))]
    return [sum(coef[k] * W[k][j] for k in range(len(W))) for j in range(len(W[0]))]


def combine(lin: float, x: Tensor, weights: list[float], ms: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    """lin x - sum_j w_j m_j."""
    out = lin * x
    for w, m in zip(weights, ms):
        out = out - w * m
    return out
