"""Exact log-likelihood through the probability-flow ODE, bits/dim, and DDPM's variational bound.

**ODE estimator** (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 4.3
and App. D.2; Chen et al. 2018 / Grathwohl et al. 2019 for the instantaneous change of
variables).  The probability-flow ODE

    dx/dt = f(t) x - g(t)^2 / 2 * score(x, t),   score = (alpha x0_hat - x) / sigma^2     (eq. 13)

carries p_{t_0} to p_{t_1}, and along its solution d log p_t(x_t) / dt = -div(drift), so

    log p_{t_0}(x_{t_0}) = log p_{t_1}(x_{t_1}) + int_{t_0}^{t_1} div(drift)(x_t, t) dt      (eq. 39)

with p_{t_1} replaced by the prior N(0, sigma(t_max)^2 I).  The result is the density of
the data *noised to* t_0 = ``t_start`` (the schedule's t_min by default; sigma must be
positive there), exactly what e.g. ``GaussianMixture.log_prob_t(x, t_start, schedule)`` gives.

By default the ODE is integrated in the scale-free coordinates of Karras et al. (2022,
eq. 4) and Lu et al. (2022): y = x / alpha against u = -lambda = log(sigma / alpha), where

    dy/du = y - x0_hat(alpha y, t(u)),   div = D - tr d x0_hat / dy,

a nearly linear, smooth system even for DDPM's piecewise-linear discrete schedule, whose
f(t) jumps at every step (``coords="t"`` integrates eq. 13 literally, for comparison).  The
change x = alpha y adds -D log alpha at each end.  The divergence is exact (one
vector-Jacobian product per dimension) or Hutchinson's estimate eps^T (dF/dx) eps
(Hutchinson 1989; Grathwohl et al. 2019) with Rademacher or Gaussian eps drawn once per
solve, which keeps the log-likelihood estimate unbiased.  Integration is adaptive
(scipy's ``solve_ivp``, RK45 by default) on the flattened batch.

**bits/dim** with uniform dequantisation of 8-bit data (Theis et al. 2016; Ho et al. 2020,
Sec. 4; Song et al. 2021, App. D.2): z = 2 (k + u) / 256 - 1, u ~ U[0, 1)^D, and
bpd = -log p(z) / (D ln 2) + 7 bounds the discrete model's bits/dim from above
(the 7 = log2(256/2): bins of width 2/256).

**DDPM variational bound** (Ho et al. 2020, eq. 5 and 13; Sohl-Dickstein et al. 2015):
L = KL(q(x_T|x_0) || N(0, I)) + sum_{t>1} KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t)) - log p(x_0|x_1),
the reverse means from the denoiser, fixed variances, and a discretised Gaussian decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from difflab.schedules import DiscreteVP, Schedule, _log1mexp

__all__ = [
    "LikelihoodResult",
    "bits_per_dim",
    "ddpm_bits_per_dim",
    "ddpm_vlb_terms",
    "dequantize",
    "log_likelihood",
    "nats_to_bpd",
    "ode_flow",
    "pf_ode_drift",
]

_F64 = torch.float64
DIVERGENCES = ("auto", "exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
COORDS = ("log_snr", "t")
#: the largest dimension for which divergence="auto" takes the exact trace
AUTO_EXACT_MAX_DIM = 32


@dataclass
class LikelihoodResult:
    """What :func:`log_likelihood` computed, per sample (float64 tensors of shape (B,)).

    ``logp = prior_logp + delta_logp`` is log p_{t_start}(x) in nats; ``z`` is the encoded
    point at ``t_end``; ``nfe`` the number of denoiser evaluations; ``nsteps`` the accepted
    plus rejected solver steps.
    """

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    t_start: float
    t_end: float


def pf_ode_drift(den: Callable[..., Tensor], schedule: Schedule, x: Tensor, t: float, **cond: Any) -> Tensor:
    """The probability-flow drift f(t) x - g(t)^2/2 (alpha x0_hat - x) / sigma^2 (Song et al. 2021, eq. 13)."""
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    f, g2 = float(schedule.f(t)), float(schedule.g2(t))
    return f * x - 0.5 * g2 * (a * den(x, t, **cond) - x) / s**2


def _divergence(F: Tensor, state: Tensor, probes: Tensor | None) -> Tensor:
    """div F = tr dF/dstate per sample (B,): exact, or Hutchinson's average over ``probes``."""
    B = state.shape[0]
    Ff = F.reshape(B, -1)
    if probes is None:  # exact: one vector-Jacobian product per dimension
        div = torch.zeros(B, dtype=F.dtype, device=F.device)
        for j in range(Ff.shape[1]):
            (gj,) = torch.autograd.grad(Ff[:, j].sum(), state, retain_graph=True)
            div = div + gj.reshape(B, -1)[:, j]
        return div
    est = torch.zeros(B, dtype=F.dtype, device=F.device)
    for eps in probes:  # Hutchinson: E[eps^T J eps] = tr J
        (vjp,) = torch.autograd.grad(Ff, state, grad_outputs=eps, retain_graph=True)
        est = est + (vjp.reshape(B, -1) * eps).sum(1)
    return est / probes.shape[0]


def _probes(
    noise: str, n_probes: int, B: int, D: int, generator: int | torch.Generator | None, dtype: torch.dtype
) -> Tensor:
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    eps = torch.randn(n_probes, B, D, generator=g, dtype=dtype)
    return eps.sign() if noise == "rademacher" else eps


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch (B, ...) of data, got {getattr(x, 'shape', type(x).__name__)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values")


def log_likelihood(
    den: Callable[..., Tensor],
    schedule: Schedule,
    x: Tensor,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    divergence: str = "auto",
    noise: str = "rademacher",
    n_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    coords: str = "log_snr",
    generator: int | torch.Generator | None = 0,
    dtype: torch.dtype = _F64,
    return_details: bool = False,
    **cond: Any,
) -> Tensor | LikelihoodResult:
    """Per-sample log p_{t_start}(x) in nats through the probability-flow ODE.

    Args:
        den: the denoiser ``den(x, t, **cond) -> x0_hat``; it must be differentiable in x.
        schedule: its schedule.
        x: data (B, ...), in the model's data space (e.g. [-1, 1] images).
        t_start: where the data sits (default ``schedule.t_min``; needs sigma(t_start) > 0).
        t_end: where the prior takes over (default ``schedule.t_max``).
        divergence: ``exact``, ``hutchinson`` or ``auto`` (exact for at most
            ``AUTO_EXACT_MAX_DIM`` dimensions).
        noise: Hutchinson probes, ``rademacher`` or ``gaussian``; ``n_probes`` per sample.
        rtol, atol, method: passed to ``scipy.integrate.solve_ivp`` (an adaptive method:
            RK45, DOP853, ...).
        coords: ``log_snr`` (default; see the module docstring) or ``t`` (eq. 13 as written).
        generator: seed or generator for the probes.
        dtype: dtype of the integration state (float64 default).
        return_details: return a :class:`LikelihoodResult` instead of the (B,) tensor.
        **cond: conditioning passed to ``den``.
    """
    _check_x(x)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if n_probes < 1:
        raise ValueError(f"n_probes must be positive, got {n_probes}")
    t0 = schedule.t_min if t_start is None else float(t_start)
    t1 = schedule.t_max if t_end is None else float(t_end)
    schedule.check_times(torch.tensor([t0, t1]), "likelihood interval")
    if not t0 < t1:
        raise ValueError(f"need t_start < t_end, got {t0} and {t1}")
    if float(schedule.sigma(t0)) <= 0:
        raise ValueError(f"sigma(t_start) = 0 at t_start = {t0}: the density is singular there; use t_start > 0")

    B, shape, D = x.shape[0], x.shape, x[0].numel()
    exact = divergence == "exact" or (divergence == "auto" and D <= AUTO_EXACT_MAX_DIM)
    probes = None if exact else _probes(noise, n_probes, B, D, generator, dtype)
    ode = _PFODE(den, schedule, coords, cond)

    def rhs(tau: float, flat: np.ndarray) -> np.ndarray:
        s = torch.from_numpy(flat[: B * D]).to(dtype).reshape(shape).requires_grad_(True)
        with torch.enable_grad():
            c1, c2, x0 = ode.parts(s, float(tau))
            F = c1 * s + c2 * x0
            div = c1 * D + c2 * _divergence(x0, s, probes)
        return np.concatenate([F.detach().reshape(-1).double().numpy(), div.detach().double().numpy()])

    state0 = ode.to_state(x.to(dtype), t0)
    y0 = np.concatenate([state0.detach().reshape(-1).double().numpy(), np.zeros(B)])
    end = _solve(rhs, ode.tau(t0), ode.tau(t1), y0, method, rtol, atol)
    z = ode.from_state(end[: B * D].reshape(shape), t1)
    # x = alpha y: log p_x = log p_y - D log alpha at both ends (zero in t coordinates)
    prior = schedule.prior_logp(z)
    delta = end[B * D :] + D * (ode.log_jac(t1) - ode.log_jac(t0))
    logp = prior + delta
    if return_details:
        return LikelihoodResult(logp, prior, delta, z, ode.nfe, t0, t1)
    return logp


class _PFODE:
    """The probability-flow ODE in coordinates ``t`` (state x, time t) or ``log_snr``
    (state y = x / alpha, time u = -lambda(t)); ``log_jac(t)`` = log |dx/dstate| per dimension."""

    def __init__(self, den: Callable[..., Tensor], schedule: Schedule, coords: str, cond: dict[str, Any]) -> None:
        if coords not in COORDS:
            raise ValueError(f"coords must be one of {COORDS}, got {coords!r}")
        self.den, self.schedule, self.coords, self.cond, self.nfe = den, schedule, coords, cond, 0

    def denoise(self, x: Tensor, t: float) -> Tensor:
        self.nfe += 1
        out = self.den(x, t, **self.cond)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise ValueError(f"denoiser returned {getattr(out, 'shape', out)} for input of shape {tuple(x.shape)}")
        return out.to(x.dtype)

    def tau(self, t: float) -> float:
        return t if self.coords == "t" else -float(self.schedule.lam(t))

    def log_jac(self, t: float) -> float:
        return 0.0 if self.coords == "t" else float(self.schedule.log_alpha(t))

    def to_state(self, x: Tensor, t: float) -> Tensor:
        return x if self.coords == "t" else x / float(self.schedule.alpha(t))

    def from_state(self, s: Tensor, t: float) -> Tensor:
        return s if self.coords == "t" else s * float(self.schedule.alpha(t))

    def parts(self, s: Tensor, tau: float) -> tuple[float, float, Tensor]:
        """The field is linear in the state plus a denoiser term: F(s) = c1 s + c2 x0_hat(c3 s, t).
        Returns (c1, c2, x0_hat); the divergence is c1 D + c2 tr(d x0_hat / ds), so only the
        denoiser's Jacobian needs a trace estimate (the identity part is exact, which keeps
        Hutchinson's variance, Gaussian probes especially, small)."""
        if self.coords == "t":  # eq. 13: (f + g^2 / 2 sigma^2) x - g^2 alpha / (2 sigma^2) x0_hat(x)
            sch = self.schedule
            a, sg, f, g2 = (float(c) for c in (sch.alpha(tau), sch.sigma(tau), sch.f(tau), sch.g2(tau)))
            return f + 0.5 * g2 / sg**2, -0.5 * g2 * a / sg**2, self.denoise(s, tau)
        t = float(self.schedule.t_of_lam(-tau))  # y - x0_hat(alpha y)
        return 1.0, -1.0, self.denoise(float(self.schedule.alpha(t)) * s, t)

    def field(self, s: Tensor, tau: float) -> Tensor:
        c1, c2, x0 = self.parts(s, tau)
        return c1 * s + c2 * x0


def _solve(
    rhs: Callable[[float, np.ndarray], np.ndarray],
    tau0: float,
    tau1: float,
    y0: np.ndarray,
    method: str,
    rtol: float,
    atol: float,
) -> Tensor:
    sol = solve_ivp(rhs, (tau0, tau1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1])


def ode_flow(
    den: Callable[..., Tensor],
    schedule: Schedule,
    x: Tensor,
    t_from: float,
    t_to: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    coords: str = "log_snr",
    return_nfe: bool = False,
    **cond: Any,
) -> Tensor | tuple[Tensor, int]:
    """Carry x from time ``t_from`` to ``t_to`` (either direction) along the probability-flow
    ODE with an adaptive solver, to tolerance; float64.  Both times need sigma > 0."""
    _check_x(x)
    schedule.check_times(torch.tensor([t_from, t_to]), "ODE interval")
    if min(float(schedule.sigma(t_from)), float(schedule.sigma(t_to))) <= 0:
        raise ValueError(f"the ODE is singular where sigma = 0; got t_from={t_from}, t_to={t_to}")
    ode = _PFODE(den, schedule, coords, cond)
    shape = x.shape

    def rhs(tau: float, flat: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ode.field(torch.from_numpy(flat).reshape(shape), float(tau)).reshape(-1).double().numpy()

    y0 = ode.to_state(x.to(_F64), t_from).reshape(-1).numpy()
    out = ode.from_state(_solve(rhs, ode.tau(t_from), ode.tau(t_to), y0, method, rtol, atol).reshape(shape), t_to)
    return (out, ode.nfe) if return_nfe else out


# --- bits per dimension -------------------------------------------------------------------
def _check_uint8(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    xi = x.to(_F64)
    if (x.dtype.is_floating_point and bool((xi != xi.round()).any())) or float(xi.min()) < 0 or float(xi.max()) > 255:
        raise ValueError(
            "bits/dim needs 8-bit images: integer values 0..255 (uint8); convert images in [-1, 1] with "
            "((x + 1) * 127.5).round().to(torch.uint8)"
        )
    return xi


def dequantize(x_uint8: Tensor, generator: int | torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation into [-1, 1]: z = 2 (k + u) / 256 - 1, u ~ U[0, 1)."""
    k = _check_uint8(x_uint8)
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    return 2 * (k + torch.rand(k.shape, generator=g, dtype=_F64)) / 256 - 1


def nats_to_bpd(nll_nats: Tensor, dims: int, offset: float = 0.0) -> Tensor:
    """bits/dim = nll / (D ln 2) + offset."""
    return nll_nats / (dims * math.log(2)) + offset


def bits_per_dim(
    den: Callable[..., Tensor],
    schedule: Schedule,
    x_uint8: Tensor,
    *,
    n_dequant: int = 1,
    generator: int | torch.Generator | None = 0,
    **kwargs: Any,
) -> Tensor:
    """Per-image bits/dim of 8-bit images (B, C, H, W), an upper bound through uniform
    dequantisation, averaged over ``n_dequant`` draws; ``kwargs`` go to :func:`log_likelihood`."""
    if n_dequant < 1:
        raise ValueError(f"n_dequant must be positive, got {n_dequant}")
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    D = x_uint8[0].numel()
    bpd = torch.zeros(x_uint8.shape[0], dtype=_F64)
    for _ in range(n_dequant):
        z = dequantize(x_uint8, g)
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        logp = log_likelihood(den, schedule, z, generator=seed, **kwargs)
        bpd += nats_to_bpd(-logp, D, offset=7.0)  # log2(256 / 2): z has bins of width 2/256
    return bpd / n_dequant


# --- DDPM's discrete variational bound ----------------------------------------------------
def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (log_ndtr and log1mexp)."""
    lo = torch.where(b <= 0, a, -b)  # reflect intervals in the upper tail: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    hi = torch.where(b <= 0, b, -a)
    tail = torch.special.log_ndtr(hi) + _log1mexp(torch.special.log_ndtr(lo) - torch.special.log_ndtr(hi))
    straddle = torch.log((torch.special.ndtr(b) - torch.special.ndtr(a)).clamp_min(1e-300))
    return torch.where((a < 0) & (b > 0), straddle, tail)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor | float, bins: int = 256) -> Tensor:
    """log P(x) of data on the grid of ``bins`` values in [-1, 1] under N(mean, e^{2 log_scale})
    integrated over each bin, edge bins extended to +-inf (Ho et al. 2020, eq. 13); computed
    with log-cdfs, so it stays exact far in the tails."""
    half = 1.0 / (bins - 1)
    inv = torch.exp(-torch.as_tensor(log_scale, dtype=x.dtype))
    a, b = inv * (x - mean - half), inv * (x - mean + half)
    first, last = torch.special.log_ndtr(b), torch.special.log_ndtr(-a)
    return torch.where(x < -1 + half, first, torch.where(x > 1 - half, last, _log_diff_ndtr(a, b)))


@torch.no_grad()
def ddpm_vlb_terms(
    den: Callable[..., Tensor],
    schedule: DiscreteVP,
    x0: Tensor,
    *,
    variance: str = "small",
    n_terms: int | None = None,
    generator: int | torch.Generator | None = 0,
    **cond: Any,
) -> dict[str, Tensor]:
    """The terms of DDPM's variational bound in nats per sample (Ho et al. 2020, eq. 5).

    With Ho's 1-based steps t = 1..T (index i = t - 1 of ``schedule.alphas_cumprod``):

    - ``prior``: L_T = KL(q(x_T | x_0) || N(0, I)), exact;
    - ``kl``: sum_{t=2}^T L_{t-1}, L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu~(x_t, x0_hat), s_t^2 I))
      = D/2 (log(s_t^2 / beta~_t) + beta~_t / s_t^2 - 1) + c_t^2 |x_0 - x0_hat|^2 / (2 s_t^2),
      c_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) (Ho et al., eq. 6-7), with x_t ~ q(x_t | x_0);
      all T - 1 terms, or (``n_terms``) an unbiased estimate from that many uniformly drawn t;
    - ``decoder``: L_0 = -log p(x_0 | x_1), the discretised Gaussian (eq. 13) with mean x0_hat(x_1);
    - ``total``: their sum.

    ``variance``: ``small`` (s_t^2 = beta~_t; for t = 1, where beta~_1 = 0, beta~_2 as in
    Nichol & Dhariwal's code) or ``large`` (s_t^2 = beta_t).
    """
    if not isinstance(schedule, DiscreteVP):
        raise TypeError(f"the DDPM bound needs a DiscreteVP schedule, got {schedule!r}")
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    _check_x(x0)
    T = schedule.T
    if T < 2:
        raise ValueError("the DDPM bound needs T >= 2")
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    x0 = x0.to(_F64)
    B, D = x0.shape[0], x0[0].numel()
    abar, betas, bt = schedule.alphas_cumprod, schedule.betas, schedule.beta_tilde()
    var = bt.clone() if variance == "small" else betas.clone()
    if variance == "small":
        var[0] = bt[1]
    prev = torch.cat([torch.ones(1, dtype=_F64), abar[:-1]])
    coef = prev.sqrt() * betas / (1 - abar)  # weight of x0 in the posterior mean (Ho et al., eq. 7)
    const = 0.5 * D * ((var / bt).log() + bt / var - 1)  # KL of the variances (0 for 'small'; nan at i = 0, unused)

    def sumd(v: Tensor) -> Tensor:
        return v.reshape(B, -1).sum(1)

    def denoise_at(i: Tensor) -> Tensor:  # x0_hat(x_i) with x_i ~ q(x_i | x0), step index i of shape (B,)
        a = abar[i].reshape(B, *[1] * (x0.dim() - 1))
        x_i = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g, dtype=_F64)
        out = den(x_i, (i.to(_F64) + 1) / T, **cond)
        if out.shape != x_i.shape:
            raise ValueError(f"denoiser returned shape {tuple(out.shape)} for input {tuple(x_i.shape)}")
        return out.to(_F64)

    aT = float(abar[-1])
    prior = 0.5 * sumd(aT * x0**2) + 0.5 * D * (1 - aT - 1 - math.log(1 - aT))
    if n_terms is not None and n_terms < 1:
        raise ValueError(f"n_terms must be positive, got {n_terms}")
    # every term once, or n_terms indices drawn uniformly and independently per sample (unbiased)
    rounds = [torch.full((B,), i) for i in range(1, T)] if n_terms is None else None
    n_rounds = T - 1 if n_terms is None else n_terms
    kl = torch.zeros(B, dtype=_F64)
    for r in range(n_rounds):
        i = rounds[r] if rounds is not None else torch.randint(1, T, (B,), generator=g)
        kl += const[i] + coef[i] ** 2 * sumd((x0 - denoise_at(i)) ** 2) / (2 * var[i])
    kl = kl * ((T - 1) / n_rounds)
    x0_hat = denoise_at(torch.zeros(B, dtype=torch.long))
    decoder = -sumd(discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * math.log(float(var[0]))))
    return {"prior": prior, "kl": kl, "decoder": decoder, "total": prior + kl + decoder}


def ddpm_bits_per_dim(
    den: Callable[..., Tensor],
    schedule: DiscreteVP,
    x_uint8: Tensor,
    **kwargs: Any,
) -> Tensor:
    """Per-image bits/dim of 8-bit images under DDPM's discrete bound (:func:`ddpm_vlb_terms`),
    data scaled as x = k / 127.5 - 1 (Ho et al. 2020, Sec. 3.3)."""
    x0 = _check_uint8(x_uint8) / 127.5 - 1
    return nats_to_bpd(ddpm_vlb_terms(den, schedule, x0, **kwargs)["total"], x0[0].numel())
