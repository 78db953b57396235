"""Langevin samplers: plain and annealed Langevin dynamics (Song & Ermon 2019, "NCSN") and
predictor-corrector sampling (Song et al. 2021, Alg. 1-3, 5).

A Langevin step at noise level t is x <- x + (eps/2) score(x, t) + sqrt(eps) z (Song &
Ermon 2019, eq. 4); the score comes from the denoiser, score = (alpha x0_hat - x)/sigma^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from difflab.solvers.base import Context, Solver, StepInfo, register
from difflab.solvers.sde import euler_maruyama_step


def _langevin_levels(
    solver: Solver,
    ctx: Context,
    x: Tensor,
    levels: list[int],
    n_steps: int,
    step_of: Callable[[float], float],
    progress: bool,
    callback: Callable[[StepInfo], None] | None,
) -> Tensor:
    """``n_steps`` Langevin steps x <- x + (eps/2) score + sqrt(eps) z at each grid level, with
    eps = step_of(t) (Song & Ermon 2019, eq. 4 and Alg. 1)."""
    bar = tqdm(total=len(levels) * n_steps, desc=solver.name, disable=not progress, leave=False)
    for i in levels:
        t = ctx.t(i)
        step = step_of(t)
        for _ in range(n_steps):
            x = x + 0.5 * step * ctx.score(x, t) + math.sqrt(step) * ctx.randn_like(x)
            bar.update()
        if callback is not None:
            callback(StepInfo(i, t, x, ctx.last_x0, ctx.nfe))
    bar.close()
    return x


def _per_sample_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1))


STEP_RULES = ("norms", "sigma")


def langevin_corrector(
    ctx: Context, x: Tensor, t: float, snr: float, n: int, alpha: float = 1.0, rule: str = "norms"
) -> Tensor:
    """Song et al. (2021) Alg. 4/5: x <- x + eps score + sqrt(2 eps) z with

    - ``rule='norms'``: eps = 2 alpha (r ||z|| / ||score||)^2, norms per sample (the reference
      code averages them over the batch, which would make a sample depend on its
      batch-mates);
    - ``rule='sigma'``: eps = 2 alpha r^2 sigma_t^2, the value 'norms' concentrates on in high
      dimension (||z||^2 ~ d, ||score||^2 ~ d / sigma^2), stable in any dimension -- in 2-D
      the norm ratio is unbounded near a mode, where ||score|| -> 0.
    """
    sig = ctx.coefs(t)[1]
    for _ in range(n):
        g = ctx.score(x, t)
        z = ctx.randn_like(x)
        if rule == "sigma":
            eps = torch.as_tensor(2 * alpha * (snr * sig) ** 2, dtype=x.dtype)
        else:
            eps = 2 * alpha * (snr * _per_sample_norm(z) / _per_sample_norm(g).clamp_min(1e-30)) ** 2
        x = x + eps * g + torch.sqrt(2 * eps) * z
    return x


@register
@dataclass(frozen=True)
class Langevin(Solver):
    """Plain Langevin dynamics on the score of p_t at the grid's last time ``ts[-1]``
    (the other grid points are ignored): ``n_steps`` steps of size ``step_size``."""

    name: ClassVar[str] = "langevin"
    stochastic: ClassVar[bool] = True
    n_steps: int = 1000
    step_size: float = 1e-2

    def __post_init__(self) -> None:
        if self.n_steps < 1 or not self.step_size > 0:
            raise ValueError(f"langevin needs n_steps >= 1 and step_size > 0, got {self.n_steps}, {self.step_size}")

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        last = len(ctx.ts) - 1
        if ctx.is_data(last):
            raise ValueError("langevin needs a final time with sigma > 0 (the score is undefined at sigma = 0)")
        return _langevin_levels(self, ctx, x, [last], self.n_steps, lambda t: self.step_size, progress, callback)


@register
@dataclass(frozen=True)
class AnnealedLangevin(Solver):
    """NCSN annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): for every grid level
    t_i, including ts[0], ``n_steps`` Langevin steps of size alpha_i = eps sigma_i^2 / sigma_L^2
    with sigma_L the noise level of the last grid point.  A last grid point with sigma = 0
    is reached by the final denoising step (Song & Ermon 2020) instead."""

    name: ClassVar[str] = "annealed_langevin"
    stochastic: ClassVar[bool] = True
    n_steps: int = 100
    eps: float = 2e-5

    def __post_init__(self) -> None:
        if self.n_steps < 1 or not self.eps > 0:
            raise ValueError(f"annealed_langevin needs n_steps >= 1 and eps > 0, got {self.n_steps}, {self.eps}")

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        levels = [i for i in range(len(ctx.ts)) if not ctx.is_data(i)]
        s_last = ctx.coefs(ctx.t(levels[-1]))[1]
        step_of = lambda t: self.eps * (ctx.coefs(t)[1] / s_last) ** 2  # noqa: E731
        x = _langevin_levels(self, ctx, x, levels, self.n_steps, step_of, progress, callback)
        if len(levels) < len(ctx.ts):  # final denoising step
            x = ctx.denoise(x, ctx.t(levels[-1]))
        return x


PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")
CORRECTORS = ("langevin", "none")


@register
@dataclass(frozen=True)
class PC(Solver):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1).

    predictor: ``reverse_diffusion`` (Alg. 2/3, the reverse of the forward discretisation
    x_t = (alpha_t/alpha_n) x_n + sigma_{t|n} z: x_n = x_t - (alpha_t/alpha_n - 1) x_t +
    sigma_{t|n}^2 score + sigma_{t|n} z), ``euler_maruyama`` or ``none``;
    corrector: ``langevin`` with signal-to-noise ratio ``snr`` and ``n_corrector`` steps
    at the new level (Alg. 4/5, alpha_i = (alpha_t/alpha_n)^2 = 1 - beta_i for VP), or ``none``;
    ``step_rule`` picks the corrector's step size (see :func:`langevin_corrector`; use
    ``sigma`` in low dimension).
    """

    name: ClassVar[str] = "pc"
    stochastic: ClassVar[bool] = True
    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    snr: float = 0.16
    n_corrector: int = 1
    step_rule: str = "norms"

    def __post_init__(self) -> None:
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"pc step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"pc predictor must be one of {PREDICTORS}, got {self.predictor!r}")
        if self.corrector not in CORRECTORS:
            raise ValueError(f"pc corrector must be one of {CORRECTORS}, got {self.corrector!r}")
        if self.predictor == "none" and self.corrector == "none":
            raise ValueError("pc needs a predictor or a corrector")
        if self.n_corrector < 0 or not self.snr > 0:
            raise ValueError(f"pc needs n_corrector >= 0 and snr > 0, got {self.n_corrector}, {self.snr}")

    @property
    def evals_per_step(self) -> int:  # type: ignore[override]
        return (self.predictor != "none") + (self.corrector != "none") * self.n_corrector

    def step(self, ctx: Context, i: int, x: Tensor, state: None) -> tuple[Tensor, None]:
        t, tn = ctx.t(i), ctx.t(i + 1)
        a_t, s_t, _ = ctx.at(i)
        a_n, s_n, _ = ctx.at(i + 1)
        ratio = a_t / a_n
        if self.predictor == "reverse_diffusion":
            g2 = max(s_t**2 - ratio**2 * s_n**2, 0.0)  # sigma_{t|n}^2
            x = x - (ratio - 1) * x + g2 * ctx.score(x, t) + math.sqrt(g2) * ctx.randn_like(x)
        elif self.predictor == "euler_maruyama":
            x = euler_maruyama_step(ctx, x, t, tn)
        if self.corrector == "langevin":
            x = langevin_corrector(ctx, x, tn, self.snr, self.n_corrector, ratio**2, self.step_rule)
        return x, None
