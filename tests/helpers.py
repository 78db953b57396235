"""Shared test machinery: exact/reference probability-flow ODE solutions and order fitting."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp

from difflab import sample, solvers, timesteps
from difflab.schedules import Schedule
from difflab.toy import GaussianMixture


def pf_ode_reference(gm: GaussianMixture, schedule: Schedule, x_T: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """High-accuracy PF-ODE solution dx/dt = f x - g^2/2 score (Song et al. 2021, eq. 13),
    integrated in t with scipy's DOP853 at rtol 1e-12 -- independent of difflab's solvers."""
    shape = x_T.shape

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y).reshape(shape)
        f, g2 = float(schedule.f(t)), float(schedule.g2(t))
        return (f * x - 0.5 * g2 * gm.score(x, t, schedule)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (t0, t1), x_T.double().reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


def solve(name_or_solver, gm: GaussianMixture, schedule: Schedule, x_T: torch.Tensor, ts: torch.Tensor, **kw):
    solver = solvers.get(name_or_solver) if isinstance(name_or_solver, str) else name_or_solver
    return sample(solver, gm.denoiser(schedule), schedule, x_T, ts, dtype=torch.float64, **kw)


def fitted_order(steps: list[int], errors: list[float], floor: float = 1e-10) -> float:
    """Minus the least-squares slope of log(error) against log(steps), ignoring errors at the
    reference's floor."""
    pts = [(math.log(n), math.log(e)) for n, e in zip(steps, errors) if e > floor]
    assert len(pts) >= 3, f"too few errors above the floor: {errors}"
    x, y = np.array(pts).T
    return -float(np.polyfit(x, y, 1)[0])


def convergence(
    solver,
    gm: GaussianMixture,
    schedule: Schedule,
    x_T: torch.Tensor,
    ref: torch.Tensor,
    steps: list[int],
    t_end: float,
) -> list[float]:
    """Mean Euclidean error at t_end of ``solver`` on log-SNR-uniform grids of ``steps``."""
    errs = []
    for n in steps:
        ts = timesteps.log_snr_uniform(schedule, n, t_end=t_end)
        x = solve(solver, gm, schedule, x_T, ts)
        errs.append(float((x - ref).norm(dim=1).mean()))
    return errs
