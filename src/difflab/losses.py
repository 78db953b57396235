"""Training losses for diffusion models.

**Denoising losses.**  With x_t = alpha x_0 + sigma eps, every regression target -- eps
(Ho et al. 2020), x0, v = alpha eps - sigma x0 (Salimans & Ho 2022), the velocity
u = alpha' x0 + sigma' eps (flow matching, Lipman et al. 2023; rectified flow u = eps - x0,
Liu et al. 2023), the score -eps / sigma -- is an affine function of x0 at fixed (x_t, t), so its
squared error is a time-dependent multiple of the x0 error:

    ||target_hat - target||^2 = c_target(t) ||x0_hat - x0||^2,
    c_x0 = 1, c_eps = SNR = alpha^2/sigma^2, c_v = (alpha^2 + sigma^2)^2 / sigma^2,
    c_velocity = (alpha' - sigma' alpha / sigma)^2, c_score = alpha^2 / sigma^4.

A weighting is therefore one function w(t) on the x0 error; the loss is computed in the
target's space (where the network output lives, for numerical reasons) as
(w(t) / c_target(t)) ||target_hat - target||^2, averaged over dimensions:

- ``uniform``: w = c_target -- the plain MSE on the target, L_simple (Ho et al. 2020, eq. 14)
  for eps;
- ``snr``: w = SNR(t) (Kingma et al. 2021: the eps MSE seen from x0);
- ``min_snr``: w = min(SNR, gamma) (Hang et al. 2023, eq. 9; gamma = 5);
- ``edm``: w = lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 with sigma = sigma_t/alpha_t
  (Karras et al. 2022, eq. 8 and Table 1), normally with ``time_sampling='lognormal'``;
- ``likelihood``: score-space weight g(t)^2, i.e. g^2/sigma^2 on the eps error (Song et al.
  2021b, "Maximum likelihood training of score-based diffusion models", Thm. 1);
- ``ncsn``: score-space weight lambda(sigma) = sigma^2 (Song & Ermon 2019, eq. 6): denoising score
  matching (Vincent 2011) with the NCSN weighting.

**The variational bound** of a discrete DDPM (Ho et al. 2020, eq. 5) with learned variances
Sigma = exp(v log beta_t + (1 - v) log beta~_t) (Nichol & Dhariwal 2021, eq. 15), and their
hybrid objective L_simple + lambda L_vlb with the mean's gradient stopped in L_vlb (Sec. 3.1,
lambda = 0.001) and optional importance sampling of t (Sec. 3.3).

A loss takes a model -- a :class:`~difflab.denoiser.Denoiser` (its network output is used
directly when it already is the target) or any ``den(x, t) -> x0_hat`` -- and clean data x0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from difflab.denoiser import Denoiser
from difflab.parameterization import PREDICTIONS, convert, from_x0, to_x0
from difflab.schedules import DiscreteVP, Schedule, _bcast

__all__ = [
    "TIME_SAMPLINGS",
    "WEIGHTINGS",
    "DiffusionLoss",
    "ImportanceSampler",
    "denoising_loss",
    "dsm_loss",
    "flow_matching_loss",
    "prior_kl",
    "sample_times",
    "target_factor",
    "vlb_terms",
    "x0_weight",
]

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm", "likelihood", "ncsn")
TIME_SAMPLINGS = ("uniform", "discrete", "lognormal", "logit_normal", "levels", "importance")
TARGETS = ("eps", "x0", "v", "velocity", "score")


def target_factor(target: str, schedule: Schedule, t: Tensor) -> Tensor:
    """c_target(t): the squared error of ``target`` per unit squared x0 error (module docstring)."""
    a, s = schedule.alpha(t), schedule.sigma(t)
    if target == "x0":
        return torch.ones_like(a)
    if target == "eps":
        return (a / s) ** 2
    if target == "v":
        return (a * a + s * s) ** 2 / (s * s)
    if target == "score":
        return (a / (s * s)) ** 2
    if target == "velocity":
        return (schedule.d_alpha(t) - schedule.d_sigma(t) * a / s) ** 2
    raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")


def x0_weight(
    weighting: str,
    target: str,
    schedule: Schedule,
    t: Tensor,
    min_snr_gamma: float = 5.0,
    sigma_data: float = 0.5,
) -> Tensor:
    """w(t), the weight of the weighting on the squared x0 error (float64, shape of t)."""
    t = t.to(torch.float64)
    if weighting == "uniform":
        return target_factor(target, schedule, t)
    snr = schedule.snr(t)
    if weighting == "snr":
        return snr
    if weighting == "min_snr":
        return snr.clamp(max=min_snr_gamma)
    if weighting == "edm":
        sig = schedule.sigma(t) / schedule.alpha(t)
        return (sig**2 + sigma_data**2) / (sig * sigma_data) ** 2
    if weighting == "likelihood":
        return schedule.g2(t) * target_factor("score", schedule, t)
    if weighting == "ncsn":
        return schedule.sigma(t) ** 2 * target_factor("score", schedule, t)
    raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")


def _gen_rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, normal: bool) -> Tensor:
    f = torch.randn if normal else torch.rand
    return f(shape, generator=generator, dtype=torch.float64, device=device)


def sample_times(
    kind: str,
    schedule: Schedule,
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    t_eps: float | None = None,
    t_hi: float | None = None,
) -> Tensor:
    """n training times (float64) drawn by ``kind``:

    - ``uniform``: U[t_eps, t_max] with t_eps = ``schedule.t_min`` (Song et al. 2021, eq. 7);
      for a discrete schedule the same as ``discrete``;
    - ``discrete``: a uniform step index i in 0..T-1, t = (i + 1)/T (Ho et al. 2020, Alg. 1);
    - ``lognormal``: ln(sigma_t / alpha_t) ~ N(p_mean, p_std^2) (Karras et al. 2022, Sec. 5);
    - ``logit_normal``: t = sigmoid(N(p_mean, p_std^2)) (Esser et al. 2024, eq. 19; use p_mean = 0, p_std = 1);
    - ``levels``: one of NCSN's L noise levels (``VE.ncsn``; Song & Ermon 2019).

    ``t_hi`` restricts ``uniform`` / ``discrete`` times to t <= t_hi (a low-noise expert such as
    SDXL's refiner, trained on the first 200 of 1000 steps: Podell et al. 2023, Sec. 2.5).
    """
    device = torch.device(device)
    if t_hi is not None:
        if kind not in ("uniform", "discrete"):
            raise ValueError(f"a time limit t_hi needs time_sampling 'uniform' or 'discrete', got {kind!r}")
        if not 0 < t_hi <= schedule.t_max:
            raise ValueError(f"t_hi must be in (0, t_max = {schedule.t_max}], got {t_hi}")
    if kind == "discrete" or (kind == "uniform" and schedule.T is not None):
        if schedule.T is None:
            raise ValueError(f"time_sampling 'discrete' needs a discrete schedule, got {schedule!r}")
        top = schedule.T if t_hi is None else max(1, round(t_hi * schedule.T))
        i = torch.randint(0, top, (n,), generator=generator, device=device)
        return (i + 1).to(torch.float64) / schedule.T
    lo = schedule.t_min if t_eps is None else t_eps
    if kind == "uniform":
        hi = schedule.t_max if t_hi is None else t_hi
        return lo + (hi - lo) * _gen_rand((n,), generator, device, False)
    if kind == "lognormal":
        log_sig = p_mean + p_std * _gen_rand((n,), generator, device, True)
        lam_lo, lam_hi = float(schedule.lam(schedule.t_max)), float(schedule.lam(max(lo, 1e-12)))
        return schedule.t_of_lam((-log_sig).clamp(lam_lo, lam_hi)).clamp(lo, schedule.t_max)
    if kind == "logit_normal":
        return torch.sigmoid(p_mean + p_std * _gen_rand((n,), generator, device, True)).clamp(lo, schedule.t_max)
    if kind == "levels":
        L = getattr(schedule, "L", None)
        if not L:
            raise ValueError(f"time_sampling 'levels' needs NCSN levels (schedules.VE.ncsn(L=...)), got {schedule!r}")
        k = torch.randint(0, L, (n,), generator=generator, device=device)
        return k.to(torch.float64) / (L - 1)
    raise ValueError(f"unknown time_sampling {kind!r}; valid: {', '.join(TIME_SAMPLINGS)}")


def _prediction(model: Callable[..., Tensor], x: Tensor, t: Tensor, target: str, schedule: Schedule, **cond) -> Tensor:
    """The model's prediction of ``target`` at (x, t): the raw network output when a Denoiser's
    prediction is the target already, else converted (parameterization.convert / from_x0)."""
    if isinstance(model, Denoiser) and model.prediction in PREDICTIONS:
        out = model.raw(x, t, **cond)
        if model.learned_variance:
            out = out[:, : x.shape[1]]
        if model.prediction == target:
            return out
        return convert(out, model.prediction, target, x, t, schedule)
    return from_x0(target, model(x, t, **cond), x, t, schedule)


def _mean_flat(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


def denoising_loss(
    model: Callable[..., Tensor],
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: Schedule | None = None,
    target: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    sigma_data: float = 0.5,
    **cond: Any,
) -> Tensor:
    """Per-example weighted denoising loss at given times and noise (shape (B,)):
    (w(t) / c_target(t)) * mean_dims (target_hat - target)^2, see the module docstring."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    schedule = schedule or model.schedule
    x_t = schedule.perturb(x0, t, noise)
    want = from_x0(target, x0, x_t, t, schedule)
    pred = _prediction(model, x_t, t, target, schedule, **cond)
    lam = x0_weight(weighting, target, schedule, t, min_snr_gamma, sigma_data)
    if weighting != "uniform":
        lam = lam / target_factor(target, schedule, t)
    else:
        lam = torch.ones_like(lam)
    return lam.to(x0.dtype) * _mean_flat((pred - want) ** 2)


def dsm_loss(
    model: Callable[..., Tensor], x0: Tensor, t: Tensor, noise: Tensor, schedule: Schedule | None = None, **cond
) -> Tensor:
    """Denoising score matching (Vincent 2011) with NCSN's lambda(sigma) = sigma^2 (Song & Ermon
    2019, eq. 5-6): sigma^2 ||s_theta(x_t) + (x_t - alpha x0) / sigma^2||^2, per example."""
    return denoising_loss(model, x0, t, noise, schedule, target="score", weighting="ncsn", **cond)


def flow_matching_loss(
    model: Callable[..., Tensor], x0: Tensor, t: Tensor, noise: Tensor, schedule: Schedule | None = None, **cond
) -> Tensor:
    """Conditional flow matching (Lipman et al. 2023, eq. 9) on the schedule's path: ||u_hat - (alpha' x0 + sigma' eps)||^2;
    with ``RectifiedFlow`` the target is eps - x0 (Liu et al. 2023, eq. 1)."""
    return denoising_loss(model, x0, t, noise, schedule, target="velocity", weighting="uniform", **cond)


# --- the variational bound (discrete DDPM) -------------------------------------------------
def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _discretized_gaussian_loglik(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) for x in [-1, 1] on 256 bins under N(mean, e^(2 log_scale)) (Ho et al. 2020, eq. 13)."""
    inv = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv * (x - mean + 1 / 255))
    cdf_min = _std_normal_cdf(inv * (x - mean - 1 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_1m_cdf_min = (1 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_1m_cdf_min, log_delta))


def _ddpm_coeffs(schedule: DiscreteVP, i: Tensor) -> dict[str, Tensor]:
    """Per-index posterior q(x_{i-1} | x_i, x0) coefficients (Ho et al. 2020, eq. 6-7)."""
    abar = schedule.alphas_cumprod.to(i.device)
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = schedule.betas.to(i.device)
    bt = schedule.beta_tilde().to(i.device)
    # beta~_0 = 0: clip its log to beta~_1 as Nichol & Dhariwal do
    log_bt = torch.log(torch.cat([bt[1:2], bt[1:]]))
    return {
        "c1": (prev.sqrt() * beta / (1 - abar))[i],
        "c2": ((1 - beta).sqrt() * (1 - prev) / (1 - abar))[i],
        "log_beta_tilde": log_bt[i],
        "log_beta": beta.log()[i],
        "beta_tilde": bt[i],
    }


def _check_discrete(schedule: Schedule) -> DiscreteVP:
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"the variational bound needs a discrete DDPM schedule (DiscreteVP), got {schedule!r}")
    return schedule


def vlb_terms(
    model: Denoiser,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    stop_grad_mean: bool = False,
    out: Tensor | None = None,
    **cond: Any,
) -> Tensor:
    """Per-example term L_i of the variational bound in bits/dim at step index i = tT - 1
    (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, eq. 4-6): KL(q(x_{i-1}|x_i, x0) ||
    p(x_{i-1}|x_i)) for i >= 1, the discretised decoder -log p(x0|x_0) (Ho et al. eq. 13) for i = 0.

    ``model`` predicts variances (``learned_variance=True``: channel v in [-1, 1] interpolates
    log beta~ and log beta, N&D eq. 15) or gets the fixed variance beta~.  ``out``: the network
    output at x_t = perturb(x0, t, noise) if already computed.
    """
    sch = _check_discrete(model.schedule)
    if model.prediction not in PREDICTIONS:
        raise ValueError(f"the variational bound needs an eps/x0/v/score/velocity model, got {model.prediction!r}")
    i = torch.round(t.to(torch.float64) * sch.T - 1).long().clamp(0, sch.T - 1)
    x_t = sch.perturb(x0, t, noise)
    out = model.raw(x_t, t, **cond) if out is None else out
    C = x0.shape[1]
    co = {k: _bcast(v, x0) for k, v in _ddpm_coeffs(sch, i).items()}
    if model.learned_variance:
        frac = (out[:, C:] + 1) / 2
        logvar = frac * co["log_beta"] + (1 - frac) * co["log_beta_tilde"]
    else:
        logvar = co["log_beta_tilde"].expand_as(x0)
    pred = out[:, :C].detach() if stop_grad_mean else out[:, :C]
    x0_hat = to_x0(model.prediction, pred, x_t, t, sch)
    mean_p = co["c1"] * x0_hat + co["c2"] * x_t
    mean_q = co["c1"] * x0 + co["c2"] * x_t
    kl = _mean_flat(_normal_kl(mean_q, co["log_beta_tilde"].expand_as(x0), mean_p, logvar)) / math.log(2)
    nll = -_mean_flat(_discretized_gaussian_loglik(x0, mean_p, 0.5 * logvar)) / math.log(2)
    return torch.where(i == 0, nll, kl)


def prior_kl(schedule: DiscreteVP, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) in bits/dim per example (constant in the parameters)."""
    t = torch.ones(x0.shape[0], dtype=torch.float64)
    a = _bcast(schedule.alpha(t), x0)
    logvar = _bcast(2 * schedule.log_sigma(t), x0).expand_as(x0)
    return _mean_flat(_normal_kl(a * x0, logvar, torch.zeros_like(x0), torch.zeros_like(x0))) / math.log(2)


class ImportanceSampler:
    """Importance sampling of the step index for L_vlb (Nichol & Dhariwal 2021, eq. 16-17):
    p_i proportional to sqrt(E[L_i^2]) over the last ``history`` values of each term, uniform
    until every term has that many; the estimate T-term sum is L_i / p_i."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self.values = torch.zeros(T, history, dtype=torch.float64)
        self.counts = torch.zeros(T, dtype=torch.long)

    def ready(self) -> bool:
        return bool((self.counts >= self.history).all())

    def probs(self) -> Tensor:
        if not self.ready():
            return torch.full((self.T,), 1 / self.T, dtype=torch.float64)
        w = (self.values**2).mean(1).sqrt()
        p = w / w.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(indices, their probabilities)."""
        p = self.probs()
        i = torch.multinomial(p, n, replacement=True, generator=generator)
        return i, p[i]

    def update(self, i: Tensor, losses: Tensor) -> None:
        for ii, v in zip(i.tolist(), losses.detach().to(torch.float64).cpu().tolist()):
            if self.counts[ii] >= self.history:
                self.values[ii] = torch.roll(self.values[ii], -1)
                self.values[ii, -1] = v
            else:
                self.values[ii, self.counts[ii]] = v
            self.counts[ii] += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"values": self.values.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.values, self.counts = state["values"].clone(), state["counts"].clone()


@dataclass
class DiffusionLoss:
    """A training objective: draws times and noise, returns the mean loss.

    ``kind``:
      - ``denoising``: :func:`denoising_loss` with ``target`` / ``weighting`` (covers L_simple,
        SNR, min-SNR, EDM, likelihood weighting, NCSN's DSM and flow matching);
      - ``vlb``: L_vlb = T E_i[L_i] (Ho et al. 2020, eq. 5), optionally importance-sampled;
      - ``hybrid``: L_simple + ``vlb_weight`` * L_vlb with the mean's gradient stopped in L_vlb
        (Nichol & Dhariwal 2021, Sec. 3.1; vlb_weight = 0.001).
    """

    schedule: Schedule
    kind: str = "denoising"
    target: str = "eps"
    weighting: str = "uniform"
    time_sampling: str = "uniform"
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    vlb_weight: float = 0.001
    importance: ImportanceSampler | None = field(default=None, repr=False)
    #: train only on t <= t_max (a low-noise refiner expert); None: the whole schedule
    t_max: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("denoising", "vlb", "hybrid"):
            raise ValueError(f"unknown loss kind {self.kind!r}; valid: denoising, vlb, hybrid")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; valid: {', '.join(TARGETS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; valid: {', '.join(TIME_SAMPLINGS)}")
        if self.kind != "denoising":
            _check_discrete(self.schedule)
        if self.time_sampling == "importance":
            if self.kind == "denoising":
                raise ValueError("time_sampling 'importance' applies to the vlb / hybrid losses only")
            self.importance = self.importance or ImportanceSampler(_check_discrete(self.schedule).T)

    def times(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        return sample_times(
            self.time_sampling, self.schedule, n, generator, device, self.p_mean, self.p_std, t_hi=self.t_max
        )

    def __call__(
        self, model: Callable[..., Tensor], x0: Tensor, generator: torch.Generator | None = None, **cond
    ) -> Tensor:
        B = x0.shape[0]
        w_is = None
        if self.importance is not None:
            i, p = self.importance.sample(B, generator)
            t = (i + 1).to(torch.float64).to(x0.device) / self.schedule.T
            w_is = (1 / (self.schedule.T * p)).to(x0.dtype).to(x0.device)
        else:
            t = self.times(B, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        if self.kind == "denoising":
            return denoising_loss(
                model,
                x0,
                t,
                noise,
                self.schedule,
                self.target,
                self.weighting,
                self.min_snr_gamma,
                self.sigma_data,
                **cond,
            ).mean()
        if not isinstance(model, Denoiser):
            raise TypeError("the vlb / hybrid losses need a Denoiser (they read the variance channels)")
        sch = self.schedule
        x_t = sch.perturb(x0, t, noise)
        out = model.raw(x_t, t, **cond)  # one network evaluation serves both terms
        terms = vlb_terms(model, x0, t, noise, stop_grad_mean=self.kind == "hybrid", out=out)
        if self.importance is not None:
            self.importance.update(torch.round(t * sch.T - 1).long().cpu(), terms)
        vlb = sch.T * terms * (w_is if w_is is not None else 1.0)
        if self.kind == "vlb":
            return vlb.mean()
        pred = out[:, : x0.shape[1]]
        if model.prediction != self.target:
            pred = convert(pred, model.prediction, self.target, x_t, t, sch)
        simple = _mean_flat((pred - from_x0(self.target, x0, x_t, t, sch)) ** 2)
        return (simple + self.vlb_weight * vlb).mean()
