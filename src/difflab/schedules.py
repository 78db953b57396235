"""Noise schedules: the pair (alpha(t), sigma(t)) with x_t = alpha(t) x_0 + sigma(t) eps.

Time runs in [0, 1]; t = 0 is data.  Everything else -- the forward SDE
dx = f(t) x dt + g(t) dW, the reverse SDE and the probability-flow ODE -- follows from
the two functions (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
and Kingma et al. 2021, "Variational Diffusion Models"):

    f(t)   = d log alpha / dt
    g^2(t) = d sigma^2 / dt - 2 f(t) sigma^2(t)
    lambda(t) = log(alpha(t) / sigma(t))          (half log-SNR, Lu et al. 2022)

Schedule methods accept a Python float or a tensor of times and compute in float64
(a float input gives a 0-d float64 tensor), so samplers get accurate coefficients
whatever dtype their state runs in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from difflab.random import GeneratorLike, randn

TimeLike = float | Tensor

__all__ = [
    "EDM",
    "VE",
    "VP",
    "DiscreteVP",
    "RectifiedFlow",
    "Schedule",
    "SubVP",
    "get",
    "names",
]


def _t(t: TimeLike) -> Tensor:
    """Times as a float64 tensor (keeps the shape of a tensor input)."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.tensor(float(t), dtype=torch.float64)


class Schedule:
    """Base class of every noise schedule.

    Subclasses implement ``log_alpha(t)`` and ``log_sigma(t)`` and, where they can,
    the analytic derivatives ``d_log_alpha`` / ``d_log_sigma`` and the inverse
    ``t_of_lam``; the defaults fall back to autograd and bisection.

    Attributes:
        t_min: the smallest time samplers stop at by default (a grid may still end at 0).
        t_max: the largest valid time, where sampling starts.
        T: number of discrete steps for discrete-time schedules, else ``None``.
    """

    name: ClassVar[str] = "schedule"
    t_min: float = 1e-3
    t_max: float = 1.0
    T: int | None = None

    # --- the two defining functions -------------------------------------------------
    def log_alpha(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def log_sigma(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    # --- derived quantities --------------------------------------------------------
    def alpha(self, t: TimeLike) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: TimeLike) -> Tensor:
        return self.log_sigma(t).exp()

    def lam(self, t: TimeLike) -> Tensor:
        """Half log-SNR lambda(t) = log alpha - log sigma (+inf where sigma = 0)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def snr(self, t: TimeLike) -> Tensor:
        return (2 * self.lam(t)).exp()

    def d_log_alpha(self, t: TimeLike) -> Tensor:
        """d log alpha / dt (autograd fallback)."""
        return self._grad(self.log_alpha, t)

    def d_log_sigma(self, t: TimeLike) -> Tensor:
        """d log sigma / dt (autograd fallback)."""
        return self._grad(self.log_sigma, t)

    def d_alpha(self, t: TimeLike) -> Tensor:
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return self.sigma(t) * self.d_log_sigma(t)

    def d_lam(self, t: TimeLike) -> Tensor:
        return self.d_log_alpha(t) - self.d_log_sigma(t)

    def f(self, t: TimeLike) -> Tensor:
        """Drift coefficient of the forward SDE dx = f(t) x dt + g(t) dW."""
        return self.d_log_alpha(t)

    def g2(self, t: TimeLike) -> Tensor:
        """Squared diffusion coefficient g(t)^2 = d sigma^2/dt - 2 f sigma^2."""
        s2 = (2 * self.log_sigma(t)).exp()
        return 2 * s2 * (self.d_log_sigma(t) - self.d_log_alpha(t))

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        """Inverse of ``lam`` by bisection on [0, t_max] (subclasses override analytically)."""
        lam = _t(lam)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(100):  # lam is decreasing in t
            mid = (lo + hi) / 2
            above = self.lam(mid) > lam
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (lo + hi) / 2

    # --- the forward process ------------------------------------------------------
    def perturb(self, x0: Tensor, t: TimeLike, noise: Tensor) -> Tensor:
        """One-shot forward process q(x_t | x_0): x_t = alpha(t) x_0 + sigma(t) noise."""
        a, s = (_bcast(c, x0) for c in (self.alpha(t), self.sigma(t)))
        return a * x0 + s * noise

    def transition(self, x_s: Tensor, s: TimeLike, t: TimeLike, noise: Tensor) -> Tensor:
        """Forward transition q(x_t | x_s) for t > s (Kingma et al. 2021, eq. 4):

        x_t = alpha_{t|s} x_s + sigma_{t|s} noise, alpha_{t|s} = alpha_t / alpha_s,
        sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2.
        """
        log_ats = self.log_alpha(t) - self.log_alpha(s)
        var = (2 * self.log_sigma(t)).exp() - (2 * (log_ats + self.log_sigma(s))).exp()
        a, sd = _bcast(log_ats.exp(), x_s), _bcast(var.clamp_min(0).sqrt(), x_s)
        return a * x_s + sd * noise

    # --- the prior ------------------------------------------------------------------
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, sigma(t_max)^2 I) approximating p_{t_max}."""
        return float(self.sigma(self.t_max))

    def prior_sample(
        self,
        shape: Sequence[int],
        generator: GeneratorLike = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draw x_T ~ N(0, sigma(t_max)^2 I).

        ``generator`` may be an int seed: each sample then gets its own stream, so the
        same seed gives the same samples whatever the batch size.
        """
        return randn(shape, generator, dtype=dtype, device=device) * self.prior_std()

    def prior_logp(self, x: Tensor) -> Tensor:
        """log N(x; 0, sigma(t_max)^2 I), summed over all but the batch dimension."""
        s = self.prior_std()
        d = x[0].numel()
        sq = x.reshape(x.shape[0], -1).to(torch.float64).pow(2).sum(1)
        return -0.5 * sq / s**2 - d * math.log(s) - 0.5 * d * math.log(2 * math.pi)

    # --- validation -----------------------------------------------------------------
    def check_times(self, ts: Tensor, what: str = "time grid") -> None:
        """Raise ValueError unless every time lies in [0, t_max]."""
        ts = _t(ts)
        if not torch.isfinite(ts).all():
            raise ValueError(f"{what} contains non-finite times: {ts.tolist()}")
        lo, hi = float(ts.min()), float(ts.max())
        if lo < 0 or hi > self.t_max + 1e-12:
            raise ValueError(f"{what} leaves the valid range [0, {self.t_max}] of {self!r}: min {lo:.6g}, max {hi:.6g}")

    def network_time(self, t: Tensor) -> Tensor:
        """What a network trained on this schedule is fed as its time input."""
        return t

    @staticmethod
    def _grad(fn, t: TimeLike) -> Tensor:
        tt = _t(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y = fn(tt)
            if not y.requires_grad:  # constant in t
                return torch.zeros_like(tt.detach())
            (g,) = torch.autograd.grad(y.sum(), tt)
        return g

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """Coefficient(s) per time -> broadcastable against x (batch first), in x's dtype."""
    c = c.to(dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class _VPBase(Schedule):
    """Variance preserving: sigma^2 = 1 - alpha^2, so only log alpha is needed."""

    def log_sigma(self, t: TimeLike) -> Tensor:
        return 0.5 * _log1mexp(2 * self.log_alpha(t))

    def d_log_sigma(self, t: TimeLike) -> Tensor:
        # sigma^2 = 1 - alpha^2  =>  d log sigma = -alpha^2/sigma^2 d log alpha
        la = self.log_alpha(t)
        return -(2 * (la - self.log_sigma(t))).exp() * self.d_log_alpha(t)

    def _log_alpha_of_lam(self, lam: Tensor) -> Tensor:
        # alpha^2 = sigmoid(2 lam)
        return -0.5 * torch.nn.functional.softplus(-2 * lam)


class VP(_VPBase):
    """Continuous variance-preserving schedule (Song et al. 2021, eq. 11 and 33).

    ``kind='linear'``: beta(t) = beta_min + t (beta_max - beta_min), default 0.1 -> 20,
    log alpha = -t^2 (beta_max - beta_min)/4 - t beta_min / 2.
    ``kind='cosine'``: alpha(t) = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s)) (Nichol &
    Dhariwal 2021, eq. 17, in continuous time); t_max = 0.9946 as in Lu et al. (2022) so
    that lambda stays finite.
    """

    name = "vp"

    def __init__(
        self,
        kind: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        s: float = 0.008,
        t_min: float = 1e-3,
        t_max: float | None = None,
    ) -> None:
        if kind not in ("linear", "cosine"):
            raise ValueError(f"VP kind must be 'linear' or 'cosine', got {kind!r}")
        if kind == "linear" and not (0 <= beta_min < beta_max):
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.kind, self.beta_min, self.beta_max, self.s = kind, beta_min, beta_max, s
        self.t_min = t_min
        self.t_max = t_max if t_max is not None else (1.0 if kind == "linear" else 0.9946)

    @classmethod
    def cosine(cls, s: float = 0.008, **kw) -> VP:
        return cls("cosine", s=s, **kw)

    def log_alpha(self, t: TimeLike) -> Tensor:
        t = _t(t)
        if self.kind == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        c = math.pi / 2 / (1 + self.s)
        return torch.log(torch.cos((t + self.s) * c)) - math.log(math.cos(self.s * c))

    def d_log_alpha(self, t: TimeLike) -> Tensor:
        t = _t(t)
        if self.kind == "linear":
            return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))
        c = math.pi / 2 / (1 + self.s)
        return -c * torch.tan((t + self.s) * c)

    def beta(self, t: TimeLike) -> Tensor:
        """beta(t) = -2 d log alpha / dt = g(t)^2 for VP."""
        return -2 * self.d_log_alpha(t)

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        return self.t_of_log_alpha(self._log_alpha_of_lam(_t(lam)))

    def t_of_log_alpha(self, la: Tensor) -> Tensor:
        """Inverse of ``log_alpha``."""
        if self.kind == "linear":
            # solve (b1-b0)/4 t^2 + b0/2 t + la = 0 for t >= 0 (Lu et al. 2022, App. D)
            db = self.beta_max - self.beta_min
            return 2 * (-la) / (self.beta_min / 2 + torch.sqrt(self.beta_min**2 / 4 - db * la))
        c = math.pi / 2 / (1 + self.s)
        return torch.arccos(la.exp() * math.cos(self.s * c)) / c - self.s

    def __repr__(self) -> str:
        if self.kind == "linear":
            return f"VP(linear, beta {self.beta_min}..{self.beta_max})"
        return f"VP(cosine, s={self.s})"


class SubVP(Schedule):
    """Sub-VP schedule (Song et al. 2021, eq. 12): the VP-linear mean with
    sigma(t) = 1 - alpha(t)^2, whose variance stays below the VP one."""

    name = "subvp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self._vp = VP("linear", beta_min, beta_max)
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def log_alpha(self, t: TimeLike) -> Tensor:
        return self._vp.log_alpha(t)

    def d_log_alpha(self, t: TimeLike) -> Tensor:
        return self._vp.d_log_alpha(t)

    def log_sigma(self, t: TimeLike) -> Tensor:
        return _log1mexp(2 * self.log_alpha(t))

    def d_log_sigma(self, t: TimeLike) -> Tensor:
        la = self.log_alpha(t)
        return -2 * (2 * la - self.log_sigma(t)).exp() * self.d_log_alpha(t)

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        # alpha / (1 - alpha^2) = e^lam  =>  alpha^2 + e^-lam alpha - 1 = 0
        e = torch.exp(-_t(lam))
        alpha = 2 / (e + torch.sqrt(e**2 + 4))
        return self._vp.t_of_log_alpha(alpha.log())

    def __repr__(self) -> str:
        return f"SubVP(beta {self.beta_min}..{self.beta_max})"


class DiscreteVP(_VPBase):
    """DDPM's discrete schedule (Ho et al. 2020) as a continuous-time schedule.

    Step i in 0..T-1 with alpha-bar_i = prod_{j<=i} (1 - beta_j) sits at t = (i+1)/T;
    log alpha is piecewise linear in t between those points and 0 at t = 0 (the
    convention of DPM-Solver's discrete ``NoiseScheduleVP``).  The network is fed its
    own index i = t T - 1 (``network_time``).
    """

    name = "discrete_vp"

    def __init__(self, betas: Sequence[float] | Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("DiscreteVP betas must be a non-empty sequence in (0, 1)")
        self.betas = betas
        self.T = betas.numel()
        self.t_min = 1.0 / self.T
        self.t_max = 1.0
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        # knots: t_k = k/T, k = 0..T, log alpha_0 = 0
        self._knots_t = torch.arange(self.T + 1, dtype=torch.float64) / self.T
        self._knots_la = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * self.alphas_cumprod.log()])

    @classmethod
    def ddpm_linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
        """Linear betas (Ho et al. 2020, Sec. 4); the betas scale with 1000/T as in
        Nichol & Dhariwal (2021) would not -- these are the literal values."""
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteVP:
        """Cosine alpha-bar (Nichol & Dhariwal 2021, eq. 17), betas clipped at 0.999."""
        i = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return cls((1 - abar[1:] / abar[:-1]).clamp(max=max_beta))

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        k = torch.clamp((t * self.T).floor().long(), 0, self.T - 1)
        return k, t * self.T - k

    def log_alpha(self, t: TimeLike) -> Tensor:
        t = _t(t)
        k, w = self._segment(t)
        return self._knots_la[k] * (1 - w) + self._knots_la[k + 1] * w

    def d_log_alpha(self, t: TimeLike) -> Tensor:
        k, _ = self._segment(_t(t))
        return (self._knots_la[k + 1] - self._knots_la[k]) * self.T

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        la = self._log_alpha_of_lam(_t(lam)).clamp(min=float(self._knots_la[-1]), max=0.0)
        # invert the piecewise-linear, decreasing log alpha(t)
        knots = -self._knots_la  # increasing
        k = torch.clamp(torch.searchsorted(knots, -la.contiguous()) - 1, 0, self.T - 1)
        la0, la1 = self._knots_la[k], self._knots_la[k + 1]
        return (k + (la - la0) / (la1 - la0)) / self.T

    def network_time(self, t: Tensor) -> Tensor:
        """Discrete networks see their step index i = tT - 1: exact integers on the knots
        (rounding off float error), fractional between them."""
        idx = t * self.T - 1
        r = idx.round()
        return torch.where((idx - r).abs() < 1e-6, r, idx)

    def beta_tilde(self) -> Tensor:
        """Posterior variances beta-tilde_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i."""
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return (1 - prev) / (1 - self.alphas_cumprod) * self.betas

    def step_forward(self, x_prev: Tensor, i: int, noise: Tensor) -> Tensor:
        """Iterative forward step q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I)
        (Ho et al. 2020, eq. 2); x_{-1} is the data."""
        b = float(self.betas[i])
        return math.sqrt(1 - b) * x_prev + math.sqrt(b) * noise

    def __repr__(self) -> str:
        return f"DiscreteVP(T={self.T}, beta {float(self.betas[0]):.3g}..{float(self.betas[-1]):.3g})"


class VE(Schedule):
    """Variance exploding (NCSN / SMLD; Song & Ermon 2019; Song et al. 2021, eq. 9):
    alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    ``VE.ncsn(L=10, sigma_max=1, sigma_min=0.01)`` is NCSN's list of L geometric noise
    levels: they sit at t = k/(L-1), so ``timesteps.uniform(sch, steps=L-1, t_end=0)``
    visits exactly those levels (``levels()`` returns them).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, L: int | None = None):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if L is not None and L < 2:
            raise ValueError(f"NCSN needs at least 2 noise levels, got L={L}")
        self.sigma_min, self.sigma_max, self.L = sigma_min, sigma_max, L
        self.t_min = 0.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    @classmethod
    def ncsn(cls, L: int = 10, sigma_max: float = 1.0, sigma_min: float = 0.01) -> VE:
        return cls(sigma_min, sigma_max, L)

    def levels(self) -> Tensor:
        """The L noise levels sigma_1 > ... > sigma_L of NCSN (requires ``L``)."""
        if self.L is None:
            raise ValueError("this VE schedule has no discrete levels; build it with VE.ncsn(L=...)")
        return self.sigma(torch.linspace(1, 0, self.L, dtype=torch.float64))

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_t(t))

    def d_log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_t(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return math.log(self.sigma_min) + _t(t) * self._log_ratio

    def d_log_sigma(self, t: TimeLike) -> Tensor:
        return torch.full_like(_t(t), self._log_ratio)

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        return (-_t(lam) - math.log(self.sigma_min)) / self._log_ratio

    def network_time(self, t: Tensor) -> Tensor:
        """NCSN-style networks are conditioned on sigma."""
        return self.sigma(t)

    def __repr__(self) -> str:
        lv = f", L={self.L}" if self.L else ""
        return f"VE(sigma {self.sigma_min}..{self.sigma_max}{lv})"


class EDM(Schedule):
    """Karras et al. (2022) "EDM": alpha = 1, sigma(t) = t * sigma_max, so t = sigma/sigma_max.

    (The paper's sigma(t) = t with t up to sigma_max = 80; here time is rescaled into
    [0, 1] per the library convention.)  t_min corresponds to sigma_min = 0.002.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.t_min = sigma_min / sigma_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_t(t))

    def d_log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_t(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return torch.log(_t(t) * self.sigma_max)

    def d_log_sigma(self, t: TimeLike) -> Tensor:
        return 1 / _t(t)

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        return torch.exp(-_t(lam)) / self.sigma_max

    def network_time(self, t: Tensor) -> Tensor:
        """EDM's c_noise = log(sigma) / 4 (Karras et al. 2022, Table 1)."""
        return self.log_sigma(t) / 4

    def __repr__(self) -> str:
        return f"EDM(sigma {self.sigma_min}..{self.sigma_max})"


class RectifiedFlow(Schedule):
    """Rectified flow / flow matching with the linear path (Liu et al. 2023; Lipman
    et al. 2023): alpha = 1 - t, sigma = t, velocity target eps - x_0.
    t = 1 is pure noise exactly (alpha = 0) but lambda(1) = -inf, which log-SNR grids
    and solvers in lambda cannot start from; so t_max defaults to 0.999 (alpha = 1e-3,
    less than VP-linear's alpha(1) = 6.7e-3).  Pass ``t_max=1`` for solvers in t."""

    name = "rectified_flow"

    def __init__(self, t_min: float = 1e-3, t_max: float = 0.999) -> None:
        if not (0 <= t_min < t_max <= 1):
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = t_min, t_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.log1p(-_t(t))

    def d_log_alpha(self, t: TimeLike) -> Tensor:
        return -1 / (1 - _t(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return torch.log(_t(t))

    def d_log_sigma(self, t: TimeLike) -> Tensor:
        return 1 / _t(t)

    def t_of_lam(self, lam: Tensor | float) -> Tensor:
        return torch.sigmoid(-_t(lam))

    def __repr__(self) -> str:
        return "RectifiedFlow()"


_FACTORIES = {
    "vp": VP,
    "vp_linear": VP,
    "vp_cosine": VP.cosine,
    "subvp": SubVP,
    "ddpm_linear": DiscreteVP.ddpm_linear,
    "ddpm_cosine": DiscreteVP.cosine,
    "ve": VE,
    "ncsn": VE.ncsn,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_FACTORIES)


def get(name: str, **kw) -> Schedule:
    """Build a schedule by name, e.g. ``get('ddpm_linear', T=1000)``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(names())}") from None
    try:
        return factory(**kw)
    except TypeError as e:
        raise ValueError(f"bad arguments for schedule {name!r}: {e}") from None
