"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2).

Each step draws x_n ~ N(mu~(x_t, x0_hat), sigma_t^2 I) with the posterior mean mu~ of
q(x_n | x_t, x_0) (eq. 7) and either of the paper's two variances (Sec. 3.2):
``beta_tilde`` (the posterior variance, optimal for deterministic x_0) or ``beta``
(the forward variance sigma_{t|n}^2, optimal for x_0 ~ N(0, I)).  On any grid, with
h = lambda_n - lambda_t, beta-tilde = sigma_n^2 (1 - e^{-2h}) and beta = (sigma_t/sigma_n)^2
beta-tilde, so the mean and beta-tilde step is exactly DDIM with eta = 1.

``learned``: the network's variance output interpolates log beta and log beta-tilde
(Nichol & Dhariwal 2021, eq. 15), with the respaced chain's beta and beta-tilde on a
coarser grid (their Sec. 4); needs a ``Denoiser(..., learned_variance=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from difflab.solvers.base import Context, Solver, register
from difflab.solvers.ddim import ddim_mean, ddim_update

VARIANCES = ("beta_tilde", "beta", "learned")


@register
@dataclass(frozen=True)
class DDPM(Solver):
    """Ancestral sampling with variance ``beta_tilde`` (default), ``beta`` or ``learned``."""

    name: ClassVar[str] = "ddpm"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True
    variance: str = "beta_tilde"

    def __post_init__(self) -> None:
        if self.variance not in VARIANCES:
            raise ValueError(f"ddpm variance must be one of {VARIANCES}, got {self.variance!r}")

    def step(self, ctx: Context, i: int, x: Tensor, state: None) -> tuple[Tensor, None]:
        if self.variance == "learned":
            x0, frac = ctx.denoise_with_variance(x, ctx.t(i))
            mean, beta_tilde = ddim_mean(ctx, i, x, x0, eta=1.0)
            beta = beta_tilde * (ctx.at(i)[1] / ctx.at(i + 1)[1]) ** 2
            logvar = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
            return mean + (0.5 * logvar).exp() * ctx.randn_like(x), None
        x0 = ctx.denoise(x, ctx.t(i))
        scale = 1.0
        if self.variance == "beta":
            scale = (ctx.at(i)[1] / ctx.at(i + 1)[1]) ** 2
        return ddim_update(ctx, i, x, x0, eta=1.0, var_scale=scale), None
