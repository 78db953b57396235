"""Deterministic encoding x_0 -> x_T, reconstruction, and interpolation between encodings.

A deterministic sampler integrates the probability-flow ODE from t_max down to the data;
run backwards it is an encoder (Song, Meng & Ermon 2021, "DDIM", Sec. 5.4: eq. 14 read
from x_0 towards x_T; Song et al. 2021, Sec. 4.3).  :func:`encode` reverses the sampling
grid and steps any deterministic single-step or multistep solver along increasing times
(every step is an ODE-integrator step, valid in either direction), or integrates the ODE
adaptively to tolerance (``solver=None``).  Decoding is :func:`difflab.sample` on the same
grid, so :func:`reconstruct` measures the round-trip error, which falls as the grid is
refined.  :func:`slerp` interpolates between encodings on the sphere (Shoemake 1985;
DDIM, Sec. 5.3) -- Gaussian noise lives near a sphere, where linear mixes are atypically
short.

The sampling grid usually ends at t = 0 with a final denoising step, which has no inverse;
encoding then treats the data as the state at the last positive time ts[-2] (sigma ~ 0.01
for DDPM), the standard DDIM-inversion approximation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab import images
from difflab.likelihood import ode_flow
from difflab.schedules import Schedule
from difflab.solvers import Context, Solver, get, sample
from difflab.timesteps import check_grid

__all__ = ["Reconstruction", "decode", "encode", "interpolate", "reconstruct", "save_interpolation_strip", "slerp"]


def _solver(solver: Solver | str | None) -> Solver | None:
    if solver is None:
        return None
    s = get(solver) if isinstance(solver, str) else solver
    if not isinstance(s, Solver):
        raise TypeError(f"solver must be a Solver, a registered name or None, got {type(solver).__name__}")
    if s.stochastic:
        raise ValueError(f"encoding needs a deterministic solver; {s!r} is stochastic (use e.g. ddim with eta=0)")
    return s


def _encode_grid(ts: Tensor, schedule: Schedule) -> Tensor:
    """The increasing times the encoder visits: the sampling grid reversed, without a t where sigma = 0."""
    ts = check_grid(ts, schedule)
    if float(schedule.sigma(float(ts[-1]))) == 0.0:
        ts = ts[:-1]
    if ts.numel() < 2:
        raise ValueError("the grid has no ODE step to invert (only the final denoising step); use more steps")
    return ts.flip(0)


@torch.no_grad()
def encode(
    solver: Solver | str | None,
    den: Callable[..., Tensor],
    schedule: Schedule,
    x0: Tensor,
    ts: Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    return_nfe: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    **cond: Any,
) -> Tensor | tuple[Tensor, int]:
    """Encode data ``x0`` to noise x_{ts[0]} by running ``solver`` backwards along ``ts``.

    Args:
        solver: a deterministic solver (object or registered name), or ``None`` for the
            adaptive probability-flow ODE integration (to ``rtol``/``atol``, float64).
        den, schedule: the denoiser and its schedule.
        x0: data (B, ...).
        ts: the *sampling* grid, decreasing from t_max (what :func:`difflab.sample` gets);
            the encoder visits it in reverse.  With ``solver=None`` only its end points count.
        dtype: state dtype for solver steps (float32 default, float64 on request).
        return_nfe: also return the number of denoiser evaluations.
        **cond: conditioning passed to ``den``.
    """
    if not isinstance(x0, Tensor) or x0.dim() < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a batch of data, got {getattr(x0, 'shape', type(x0).__name__)}")
    s = _solver(solver)
    grid = _encode_grid(ts, schedule)
    if s is None:
        z, nfe = ode_flow(
            den, schedule, x0, float(grid[0]), float(grid[-1]), rtol=rtol, atol=atol, return_nfe=True, **cond
        )
    else:
        # The loop of Solver.run with the grid reversed: every step goes from grid[i] to the
        # later grid[i + 1]; no time on it has sigma = 0, so no denoising shortcut is taken.
        ctx = Context(den, schedule, grid, cond)
        z, nfe = s.run(ctx, x0.to(dtype)), ctx.nfe
        if nfe == 0:  # e.g. an adaptive solver whose loop only runs towards the data
            raise ValueError(
                f"solver {s.name!r} cannot run towards the noise (it took no step on the reversed grid); "
                "use a fixed-step deterministic solver, or solver=None for the adaptive probability-flow ODE"
            )
    return (z, nfe) if return_nfe else z


@torch.no_grad()
def decode(
    solver: Solver | str | None,
    den: Callable[..., Tensor],
    schedule: Schedule,
    z: Tensor,
    ts: Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    return_nfe: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    **cond: Any,
) -> Tensor | tuple[Tensor, int]:
    """Decode noise ``z`` at ts[0] along the decreasing grid ``ts`` (inverse of :func:`encode`)."""
    s = _solver(solver)
    if s is not None:
        return sample(s, den, schedule, z, ts, dtype=dtype, return_nfe=return_nfe, **cond)
    grid = _encode_grid(ts, schedule)
    x, nfe = ode_flow(den, schedule, z, float(grid[-1]), float(grid[0]), rtol=rtol, atol=atol, return_nfe=True, **cond)
    if float(schedule.sigma(float(check_grid(ts, schedule)[-1]))) == 0.0:  # the final denoising step
        x, nfe = den(x, float(grid[0]), **cond).to(x.dtype), nfe + 1
    return (x, nfe) if return_nfe else x


@dataclass
class Reconstruction:
    """Round trip x0 -> z -> x_rec: ``error`` is the per-sample RMS of x_rec - x0 (B,)."""

    z: Tensor
    x_rec: Tensor
    error: Tensor
    nfe_encode: int
    nfe_decode: int

    @property
    def mean_error(self) -> float:
        return float(self.error.mean())


def reconstruct(
    solver: Solver | str | None,
    den: Callable[..., Tensor],
    schedule: Schedule,
    x0: Tensor,
    ts: Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    **cond: Any,
) -> Reconstruction:
    """Encode ``x0`` with ``solver`` on ``ts``, decode again on the same grid, report the error."""
    z, n_enc = encode(solver, den, schedule, x0, ts, dtype=dtype, return_nfe=True, **cond)
    x_rec, n_dec = decode(solver, den, schedule, z, ts, dtype=dtype, return_nfe=True, **cond)
    diff = (x_rec.to(torch.float64) - x0.to(torch.float64)).reshape(x0.shape[0], -1)
    return Reconstruction(z, x_rec, diff.pow(2).mean(1).sqrt(), n_enc, n_dec)


def slerp(z0: Tensor, z1: Tensor, alpha: float | Sequence[float] | Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985), per sample over all non-batch dims:

        slerp(z0, z1; a) = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1,
        theta = angle(z0, z1),

    falling back to linear interpolation for (nearly) parallel z0, z1.  ``z0``, ``z1``:
    (B, ...); ``alpha``: a float (returns (B, ...)) or K values (returns (K, B, ...)).
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 differ in shape: {tuple(z0.shape)} and {tuple(z1.shape)}")
    scalar = isinstance(alpha, int | float)
    a = torch.as_tensor([alpha] if scalar else alpha, dtype=torch.float64)
    B = z0.shape[0] if z0.dim() > 1 else 1
    f0, f1 = z0.reshape(B, -1).to(torch.float64), z1.reshape(B, -1).to(torch.float64)
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1)).clamp_min(1e-300)
    theta = torch.arccos(cos.clamp(-1, 1))[None, :, None]  # (1, B, 1)
    a = a[:, None, None]
    small = theta.abs() < 1e-6
    st = torch.where(small, torch.ones_like(theta), torch.sin(theta))
    w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / st)
    w1 = torch.where(small, a, torch.sin(a * theta) / st)
    out = (w0 * f0[None] + w1 * f1[None]).to(z0.dtype).reshape(a.shape[0], *z0.shape)
    return out[0] if scalar else out


def interpolate(
    solver: Solver | str | None,
    den: Callable[..., Tensor],
    schedule: Schedule,
    x_a: Tensor,
    x_b: Tensor,
    ts: Tensor,
    n: int = 8,
    *,
    dtype: torch.dtype = torch.float32,
    **cond: Any,
) -> Tensor:
    """Encode two images (each (C, H, W) or (1, C, H, W)), slerp their noises at ``n``
    evenly spaced points, decode: returns (n, C, H, W), the ends reconstructing x_a and x_b."""
    if n < 2:
        raise ValueError(f"an interpolation needs n >= 2 points, got {n}")
    x_a, x_b = (x if x.dim() == 4 or (x.dim() == 2 and x.shape[0] == 1) else x[None] for x in (x_a, x_b))
    if x_a.shape != x_b.shape or x_a.shape[0] != 1:
        raise ValueError(f"x_a and x_b must be single items of one shape, got {tuple(x_a.shape)}, {tuple(x_b.shape)}")
    z = encode(solver, den, schedule, torch.cat([x_a, x_b]), ts, dtype=dtype, **cond)
    zs = slerp(z[:1], z[1:], torch.linspace(0, 1, n)).reshape(n, *z.shape[1:])
    return decode(solver, den, schedule, zs, ts, dtype=dtype, **cond)


def save_interpolation_strip(frames: Tensor, path: str | os.PathLike, scale: int | None = None) -> Path:
    """Write images (N, C, H, W) in [-1, 1] side by side as one PNG (nearest-neighbour
    enlargement to about 32 px per image by default); returns the path."""
    if frames.dim() != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"frames must be (N, 1 or 3, H, W) images, got {tuple(frames.shape)}")
    scale = scale or max(1, math.ceil(32 / frames.shape[-1]))
    return images.save_grid(frames, path, nrow=frames.shape[0], scale=scale)
