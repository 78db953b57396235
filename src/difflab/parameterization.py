"""Conversions between what a network predicts and the posterior mean x0_hat.

With x_t = alpha x_0 + sigma eps (all coefficients at the same t):

- ``eps``      eps-prediction (Ho et al. 2020):       x0 = (x - sigma eps) / alpha
- ``x0``       data prediction:                        x0 = x0
- ``v``        v-prediction v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4);
               in general x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)
- ``score``    grad log p_t(x) = -eps / sigma (Tweedie / Vincent 2011): eps = -sigma score
- ``velocity`` u = dx_t/dt = alpha' x0 + sigma' eps (flow matching, Lipman et al. 2023;
               rectified flow u = eps - x0): x0 = (sigma' x - sigma u) / (alpha sigma' - sigma alpha')

and EDM's preconditioning (Karras et al. 2022, Table 1) in ``edm_precond``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.schedules import Schedule, TimeLike, _bcast

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")

__all__ = ["PREDICTIONS", "batch_times", "check_prediction", "convert", "edm_precond", "from_x0", "to_x0"]


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
    return prediction


def batch_times(t: TimeLike, x: Tensor) -> Tensor:
    """Times as a float64 tensor of shape (batch,) for x (a scalar is broadcast)."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"times of shape {tuple(t.shape)} do not match a batch of {x.shape[0]}")
    return t


def _coeffs(schedule: Schedule, t: TimeLike, x: Tensor, derivs: bool = False) -> tuple[Tensor, ...]:
    tt = batch_times(t, x)
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    out = [a, s]
    if derivs:
        out += [schedule.d_alpha(tt), schedule.d_sigma(tt)]
    return tuple(_bcast(c, x) for c in out)


def to_x0(prediction: str, out: Tensor, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
    """Turn a network output of kind ``prediction`` at (x, t) into x0_hat."""
    check_prediction(prediction)
    if prediction == "x0":
        return out
    if prediction == "velocity":
        a, s, da, ds = _coeffs(schedule, t, x, derivs=True)
        return (ds * x - s * out) / (a * ds - s * da)
    a, s = _coeffs(schedule, t, x)
    if prediction == "eps":
        return (x - s * out) / a
    if prediction == "score":
        return (x + s * s * out) / a
    return (a * x - s * out) / (a * a + s * s)  # v


def from_x0(prediction: str, x0: Tensor, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
    """Express x0_hat at (x, t) as a prediction of kind ``prediction`` (needs sigma > 0)."""
    check_prediction(prediction)
    if prediction == "x0":
        return x0
    if prediction == "velocity":
        a, s, da, ds = _coeffs(schedule, t, x, derivs=True)
        return da * x0 + ds * (x - a * x0) / s
    a, s = _coeffs(schedule, t, x)
    eps = (x - a * x0) / s
    if prediction == "eps":
        return eps
    if prediction == "score":
        return -eps / s
    return a * eps - s * x0  # v


def convert(out: Tensor, src: str, dst: str, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
    """Convert a prediction of kind ``src`` into kind ``dst`` at (x, t)."""
    return from_x0(dst, to_x0(src, out, x, t, schedule), x, t, schedule)


def edm_precond(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning (Karras et al. 2022, Table 1, eq. 7):
    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = log(sigma) / 4.
    """
    sd2 = sigma_data**2
    r = sigma**2 + sd2
    return sd2 / r, sigma * sigma_data / r.sqrt(), 1 / r.sqrt(), torch.log(sigma) / 4
