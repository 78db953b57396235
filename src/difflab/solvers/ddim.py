"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12).

From time t to the next time n < t, with x0 = den(x, t) and eps = (x - alpha_t x0) / sigma_t:

    x_n = alpha_n x0 + sqrt(sigma_n^2 - c^2) eps + c z,
    c = eta sigma_n sqrt(1 - e^{-2h}),  h = lambda_n - lambda_t,

which is eq. 12/16 written for any schedule: c^2 is eta^2 times the DDPM posterior
variance beta-tilde (Ho et al. 2020, eq. 7).  eta = 0 is the deterministic DDIM (the
first-order exponential integrator of the probability-flow ODE, Lu et al. 2022);
eta = 1 is DDPM ancestral sampling with the beta-tilde variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from difflab.solvers.base import Context, Solver, register


def ddim_mean(ctx: Context, i: int, x: Tensor, x0: Tensor, eta: float) -> tuple[Tensor, float]:
    """The mean of a DDIM step from ts[i] to ts[i+1] given x0_hat at ts[i], and the variance
    c^2 = eta^2 beta-tilde it leaves for fresh noise."""
    a_t, s_t, l_t = ctx.at(i)
    a_n, s_n, l_n = ctx.at(i + 1)
    h = l_n - l_t
    eps = (x - a_t * x0) / s_t
    c2 = (eta * s_n) ** 2 * -math.expm1(-2 * h)
    return a_n * x0 + math.sqrt(max(s_n**2 - c2, 0.0)) * eps, c2


def ddim_update(ctx: Context, i: int, x: Tensor, x0: Tensor, eta: float, var_scale: float = 1.0) -> Tensor:
    """One DDIM step from ts[i] to ts[i+1] given x0_hat at ts[i].

    ``var_scale`` multiplies the injected variance c^2 while the mean stays the posterior
    mean; DDPM's 'large' variance choice (sigma^2 = beta) uses it.
    """
    mean, c2 = ddim_mean(ctx, i, x, x0, eta)
    if c2 > 0:
        mean = mean + math.sqrt(c2 * var_scale) * ctx.randn_like(x)
    return mean


@register
@dataclass(frozen=True)
class DDIM(Solver):
    """DDIM with stochasticity ``eta`` in [0, 1] (eta = 0: deterministic)."""

    name: ClassVar[str] = "ddim"
    order: ClassVar[int] = 1
    eta: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.eta <= 1.0):
            raise ValueError(f"ddim eta must be in [0, 1], got {self.eta}")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def step(self, ctx: Context, i: int, x: Tensor, state: None) -> tuple[Tensor, None]:
        return ddim_update(ctx, i, x, ctx.denoise(x, ctx.t(i)), self.eta), None
