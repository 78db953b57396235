"""Time grids: pure functions ``name(schedule, steps=N, ...)`` returning N + 1 decreasing
float64 times, from ``t_start`` (default ``schedule.t_max``) to ``t_end`` (default
``schedule.t_min``).  A grid may end at a time where sigma = 0 (t = 0 for all but VE): the last step then
returns the denoiser's x0 estimate (the final denoising step).

Discrete spacings (``leading``, ``trailing``, ``linspace``) pick N of a discrete
schedule's T indices as diffusers' ``timestep_spacing`` does (Lin et al. 2024, Table 2)
and end at t = 0, so N steps cost N network evaluations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.schedules import Schedule

__all__ = ["get", "karras", "leading", "linspace", "log_snr_uniform", "names", "quadratic", "trailing", "uniform"]

_F64 = torch.float64


def _range(schedule: Schedule, steps: int, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t0 = schedule.t_max if t_start is None else float(t_start)
    t1 = schedule.t_min if t_end is None else float(t_end)
    if not (0 <= t1 < t0 <= schedule.t_max + 1e-12):
        raise ValueError(
            f"need 0 <= t_end < t_start <= t_max = {schedule.t_max} for {schedule!r}, got t_start={t0}, t_end={t1}"
        )
    return t0, t1


def uniform(schedule: Schedule, steps: int, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """Equally spaced in t."""
    t0, t1 = _range(schedule, steps, t_start, t_end)
    return torch.linspace(t0, t1, steps + 1, dtype=_F64)


def quadratic(schedule: Schedule, steps: int, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """Quadratic in t, dense near the data (the DDIM 'quad' spacing; Song et al. 2021a)."""
    t0, t1 = _range(schedule, steps, t_start, t_end)
    u = torch.linspace(1, 0, steps + 1, dtype=_F64) ** 2
    return t1 + (t0 - t1) * u


def log_snr_uniform(schedule: Schedule, steps: int, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """Uniform in lambda = log(alpha / sigma) (Lu et al. 2022, 'logSNR' grid).
    With t_end = 0 the inner points span lambda(t_max)..lambda(t_min) and the grid ends at 0."""
    t0, t1 = _range(schedule, steps, t_start, t_end)
    if _is_data(schedule, t1):
        return _end_at_zero(log_snr_uniform(schedule, steps - 1, t0, schedule.t_min) if steps > 1 else None, t0)
    l0, l1 = float(schedule.lam(t0)), float(schedule.lam(t1))
    ts = schedule.t_of_lam(torch.linspace(l0, l1, steps + 1, dtype=_F64))
    ts[0], ts[-1] = t0, t1
    return ts


def karras(
    schedule: Schedule,
    steps: int,
    rho: float = 7.0,
    t_start: float | None = None,
    t_end: float | None = None,
) -> Tensor:
    """Karras et al. (2022, eq. 5): sigma_i^(1/rho) equally spaced between sigma_max^(1/rho)
    and sigma_min^(1/rho), with sigma = sigma/alpha = exp(-lambda) the scale-free noise level."""
    t0, t1 = _range(schedule, steps, t_start, t_end)
    if _is_data(schedule, t1):
        return _end_at_zero(karras(schedule, steps - 1, rho, t0, schedule.t_min) if steps > 1 else None, t0)
    s0, s1 = math.exp(-float(schedule.lam(t0))), math.exp(-float(schedule.lam(t1)))
    r = torch.linspace(0, 1, steps + 1, dtype=_F64)
    sig = (s0 ** (1 / rho) + r * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
    ts = schedule.t_of_lam(-sig.log())
    ts[0], ts[-1] = t0, t1
    return ts


def _is_data(schedule: Schedule, t: float) -> bool:
    """True where sigma(t) = 0 (lambda = inf): such an end point is reached by denoising."""
    return float(schedule.sigma(t)) == 0.0


def _end_at_zero(grid: Tensor | None, t0: float) -> Tensor:
    if grid is None:
        return torch.tensor([t0, 0.0], dtype=_F64)
    return torch.cat([grid, torch.zeros(1, dtype=_F64)])


def _discrete(schedule: Schedule, steps: int) -> int:
    if schedule.T is None:
        raise ValueError(f"discrete spacings need a discrete-time schedule (with T), got {schedule!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be an integer in [1, T={schedule.T}], got {steps!r}")
    return schedule.T


def _indices_to_times(idx: Tensor, T: int) -> Tensor:
    return torch.cat([(idx.to(_F64) + 1) / T, torch.zeros(1, dtype=_F64)])


def leading(schedule: Schedule, steps: int, offset: int = 1) -> Tensor:
    """Indices (T // N) * k + offset, k = N-1..0 (DDIM / Stable Diffusion 'leading')."""
    T = _discrete(schedule, steps)
    idx = (torch.arange(steps - 1, -1, -1) * (T // steps) + offset).clamp(max=T - 1)
    return _indices_to_times(idx, T)


def trailing(schedule: Schedule, steps: int) -> Tensor:
    """Indices round(T - k T / N) - 1, k = 0..N-1: always starts at the last index T-1."""
    T = _discrete(schedule, steps)
    idx = torch.round(T - torch.arange(steps, dtype=_F64) * T / steps).long() - 1
    return _indices_to_times(idx, T)


def linspace(schedule: Schedule, steps: int) -> Tensor:
    """Indices round(linspace(T-1, 0, N))."""
    T = _discrete(schedule, steps)
    idx = torch.linspace(T - 1, 0, steps, dtype=_F64).round().long()
    return _indices_to_times(idx, T)


_GRIDS = {
    "uniform": uniform,
    "quadratic": quadratic,
    "log_snr_uniform": log_snr_uniform,
    "karras": karras,
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
}


def names() -> list[str]:
    return list(_GRIDS)


def get(name: str, schedule: Schedule, steps: int, **kw) -> Tensor:
    """``get('karras', sch, steps=10, rho=7)``."""
    try:
        fn = _GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown time grid {name!r}; valid names: {', '.join(names())}") from None
    return fn(schedule, steps, **kw)


def check_grid(ts: Tensor, schedule: Schedule) -> Tensor:
    """Validate a user grid: 1-D, at least 2 points, strictly decreasing, inside [0, t_max]."""
    ts = torch.as_tensor(ts, dtype=_F64)
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 times, got shape {tuple(ts.shape)}")
    schedule.check_times(ts)
    d = ts[1:] - ts[:-1]
    if not (d < 0).all():
        bad = int((d >= 0).nonzero()[0])
        raise ValueError(
            f"time grid must be strictly decreasing (t_max -> 0), but ts[{bad}] = {float(ts[bad]):.6g} "
            f"<= ts[{bad + 1}] = {float(ts[bad + 1]):.6g}"
        )
    return ts
