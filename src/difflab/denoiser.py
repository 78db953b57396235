"""The denoiser contract: ``den(x, t, **cond) -> x0_hat``, the posterior mean E[x_0 | x_t].

Every solver consumes only this.  :class:`Denoiser` turns a network predicting eps,
x0, v, score or velocity (or an EDM-preconditioned network) into one; any callable
with the same signature works too, e.g. ``toy.GaussianMixture(...).denoiser(schedule)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from difflab.parameterization import batch_times, check_prediction, edm_precond, to_x0
from difflab.schedules import Schedule, TimeLike, _bcast

__all__ = ["Denoiser", "DenoiserFn", "clip_x0", "dynamic_thresholding", "map_x0"]


class DenoiserFn(Protocol):
    def __call__(self, x: Tensor, t: TimeLike, **cond) -> Tensor: ...


TIME_INPUTS = ("default", "t", "index", "sigma", "log_sigma", "lambda")


class Denoiser:
    """Wrap a network ``net(x, t_in, **cond)`` as a denoiser.

    Args:
        net: the network; its output has x's shape (or twice its channels with
            ``learned_variance=True``, the first half being the mean prediction).
        schedule: the schedule it was trained with.
        prediction: ``eps``, ``x0``, ``v``, ``score``, ``velocity`` or ``edm`` (the net
            is EDM's F_theta with Karras et al.'s preconditioning, applied in the
            scale-free frame x/alpha, sigma/alpha).
        time_input: what the net sees as time: ``default`` (``schedule.network_time``:
            the step index for discrete schedules), ``t``, ``index`` (tT - 1),
            ``sigma``, ``log_sigma``, ``lambda`` or a callable t -> input.
        learned_variance: the net also outputs variance channels (Nichol & Dhariwal 2021).
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        schedule: Schedule,
        prediction: str = "eps",
        time_input: str | Callable[[Tensor], Tensor] = "default",
        learned_variance: bool = False,
        sigma_data: float = 0.5,
    ) -> None:
        if prediction != "edm":
            check_prediction(prediction)
        if not callable(time_input) and time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; valid: {', '.join(TIME_INPUTS)} or a callable")
        if time_input == "index" and schedule.T is None:
            raise ValueError(f"time_input='index' needs a discrete schedule, got {schedule!r}")
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.time_input, self.learned_variance, self.sigma_data = time_input, learned_variance, sigma_data

    def _net_dtype(self, x: Tensor) -> torch.dtype:
        if isinstance(self.net, nn.Module):
            for p in self.net.parameters():
                return p.dtype
        return x.dtype

    def net_time(self, t: Tensor) -> Tensor:
        sch, ti = self.schedule, self.time_input
        if callable(ti):
            return ti(t)
        if ti == "default":
            return sch.network_time(t)
        return {
            "t": lambda: t,
            "index": lambda: t * sch.T - 1,
            "sigma": lambda: sch.sigma(t),
            "log_sigma": lambda: sch.log_sigma(t),
            "lambda": lambda: sch.lam(t),
        }[ti]()

    def raw(self, x: Tensor, t: TimeLike, **cond) -> Tensor:
        """The network output at (x, t), in x's dtype (all channels)."""
        tb = batch_times(t, x)
        dt = self._net_dtype(x)
        out = self.net(x.to(dt), self.net_time(tb).to(dt), **cond)
        return out.to(x.dtype)

    def __call__(self, x: Tensor, t: TimeLike, **cond) -> Tensor:
        tb = batch_times(t, x)
        if self.prediction == "edm":
            return self._edm(x, tb, **cond)
        return self._x0(self.raw(x, tb, **cond), x, tb)

    def with_variance(self, x: Tensor, t: TimeLike, **cond) -> tuple[Tensor, Tensor]:
        """(x0_hat, frac) for a learned-variance network, from one evaluation: frac = (v + 1) / 2
        interpolates the reverse step's log-variance between log beta-tilde (0) and log beta (1)
        (Nichol & Dhariwal 2021, eq. 15)."""
        if not self.learned_variance:
            raise ValueError("this Denoiser has no learned variance (learned_variance=False)")
        tb = batch_times(t, x)
        out = self.raw(x, tb, **cond)
        return self._x0(out, x, tb), (out[:, x.shape[1] :] + 1) / 2

    def _x0(self, out: Tensor, x: Tensor, tb: Tensor) -> Tensor:
        if self.learned_variance:
            out = out[:, : x.shape[1]]
        if out.shape != x.shape:
            raise ValueError(
                f"network output shape {tuple(out.shape)} does not match input {tuple(x.shape)}"
                + (
                    " (pass learned_variance=True if it predicts variances too)"
                    if out.shape[1] == 2 * x.shape[1]
                    else ""
                )
            )
        return to_x0(self.prediction, out, x, tb, self.schedule)

    def _edm(self, x: Tensor, tb: Tensor, **cond) -> Tensor:
        sch = self.schedule
        alpha = sch.alpha(tb)
        sig = sch.sigma(tb) / alpha  # the scale-free noise level e^{-lambda}
        c_skip, c_out, c_in, c_noise = edm_precond(sig, self.sigma_data)
        xs = x / _bcast(alpha, x)
        dt = self._net_dtype(x)
        f = self.net((_bcast(c_in, x) * xs).to(dt), c_noise.to(dt), **cond).to(x.dtype)
        return _bcast(c_skip, x) * xs + _bcast(c_out, x) * f


class _MappedX0:
    """A denoiser whose x0_hat goes through ``fn``; a learned-variance denoiser keeps its
    ``with_variance`` (the variance is left as it is)."""

    def __init__(self, den: DenoiserFn, fn: Callable[[Tensor], Tensor]) -> None:
        self.den, self.fn = den, fn

    def __call__(self, x: Tensor, t: TimeLike, **cond) -> Tensor:
        return self.fn(self.den(x, t, **cond))

    def with_variance(self, x: Tensor, t: TimeLike, **cond) -> tuple[Tensor, Tensor]:
        inner = getattr(self.den, "with_variance", None)
        if inner is None:
            raise ValueError("learned variances need a Denoiser(..., learned_variance=True) as the denoiser")
        x0, frac = inner(x, t, **cond)
        return self.fn(x0), frac


def map_x0(den: DenoiserFn, fn: Callable[[Tensor], Tensor]) -> DenoiserFn:
    """The denoiser ``fn(den(x, t))``: post-processing of x0_hat that every solver sees."""
    return _MappedX0(den, fn)


def clip_x0(den: DenoiserFn, lo: float = -1.0, hi: float = 1.0) -> DenoiserFn:
    """Clip x0_hat to the data range [lo, hi] (Ho et al. 2020's sampler clips to [-1, 1])."""
    return map_x0(den, lambda x0: x0.clamp(lo, hi))


def dynamic_thresholding(den: DenoiserFn, percentile: float = 0.995, max_value: float = 1.0) -> DenoiserFn:
    """Dynamic thresholding of x0_hat (Saharia et al. 2022, "Imagen", Sec. 2.3): per sample,
    s = the ``percentile`` quantile of |x0_hat|, clipped to [1, ``max_value``]; x0_hat is
    clamped to [-s, s] and divided by s.  Samples whose quantile is below 1 are left as they are
    (s = 1 only clamps to the data range [-1, 1]); ``max_value`` bounds the rescaling (as
    diffusers' ``sample_max_value``).  Returns a denoiser: works with every solver."""
    if not 0 < percentile <= 1:
        raise ValueError(f"dynamic_thresholding percentile must be in (0, 1], got {percentile!r}")
    if not max_value >= 1:
        raise ValueError(f"dynamic_thresholding max_value must be >= 1, got {max_value!r}")

    def threshold(x0: Tensor) -> Tensor:
        flat = x0.reshape(x0.shape[0], -1)
        s = torch.quantile(
            flat.abs().to(torch.float32 if flat.dtype == torch.float16 else flat.dtype), percentile, dim=1
        )
        s = s.clamp(min=1.0, max=max_value).to(x0.dtype)
        s = s.reshape((-1,) + (1,) * (x0.dim() - 1))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    return map_x0(den, threshold)
