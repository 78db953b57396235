"""Guidance: denoiser -> denoiser wrappers, so every solver can be guided.

Because x0_hat is affine in the eps-prediction at a fixed (x_t, t), any combination
of eps-predictions is the same combination of x0 predictions, and every rule below is
written on x0_hat.

- Classifier-free guidance (Ho & Salimans 2022, eq. 6):
  eps~ = (1 + w) eps(x, y) - w eps(x, null)      (``convention='w'``, w = 0: conditional)
  or in the scale form eps~ = eps_u + s (eps_c - eps_u) with s = 1 + w
  (``convention='s'``, s = 1: conditional; used by Stable Diffusion's guidance_scale).
  An optional guidance interval (Kynkaanniemi et al. 2024) applies it only for t in
  [t_lo, t_hi] and uses the conditional denoiser elsewhere.
- Classifier guidance (Dhariwal & Nichol 2021, Alg. 1-2; Song et al. 2021, eq. 48):
  score~ = score + s grad_x log p_phi(y | x_t, t); with score = (alpha x0 - x) / sigma^2
  this is x0~ = x0 + s (sigma^2 / alpha) grad_x log p_phi(y | x_t, t).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from difflab.parameterization import batch_times
from difflab.schedules import Schedule, TimeLike, _bcast

__all__ = ["cfg", "classifier_guidance"]

Den = Callable[..., Tensor]


def _check_scale(scale: float, what: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"{what} must be a finite number, got {scale!r}")
    return float(scale)


def _null_like(value: Any, null: Any) -> Any:
    """The unconditional stand-in for one conditioning value (None: the keyword is left out)."""
    if null is None:
        return None
    if isinstance(null, Tensor):
        return null.expand_as(value) if isinstance(value, Tensor) and null.shape != value.shape else null
    if isinstance(value, Tensor) and not isinstance(null, Tensor):
        return torch.full_like(value, null)
    return null


def _concat(a: Any, b: Any) -> Any | None:
    """Batch two conditioning values into one (None if they cannot be batched)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dim() > 0 and a.shape[1:] == b.shape[1:]:
        return torch.cat([a, b])
    return None


def cfg(
    den: Den,
    scale: float,
    null: Mapping[str, Any] | None = None,
    convention: str = "w",
    interval: tuple[float, float] | None = None,
) -> Den:
    """Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

    Args:
        den: a conditional denoiser ``den(x, t, **cond)`` trained with condition dropout.
        scale: w (``convention='w'``: 0 is conditional) or s (``'s'``: 1 is conditional).
        null: the unconditional value of each conditioning keyword, e.g. ``{'y': num_classes}``
            (a null label) or ``{'context': null_embedding}``; default ``{'y': -1}``.  A null of
            ``None`` leaves the keyword out of the unconditional call (e.g. ``{'hint': None}``:
            a ControlNet's control in the conditional branch only).
        interval: apply guidance only for t in [t_lo, t_hi] (Kynkaanniemi et al. 2024).

    The conditional and unconditional evaluations are batched into one call of ``den``
    whenever the conditioning values are batch tensors (one network evaluation of twice
    the batch); otherwise ``den`` is called twice.
    """
    if convention not in ("w", "s"):
        raise ValueError(f"cfg convention must be 'w' or 's', got {convention!r}")
    w = _check_scale(scale, "guidance scale")
    if convention == "s":
        w -= 1.0
    null = dict(null) if null is not None else {"y": -1}
    if interval is not None and not (0 <= interval[0] < interval[1]):
        raise ValueError(f"guidance interval must be (t_lo, t_hi) with 0 <= t_lo < t_hi, got {interval}")

    def guided(x: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        missing = set(null) - set(cond)
        if missing:
            raise ValueError(f"cfg needs the conditioning {sorted(missing)} (its null values are {null})")
        tb = batch_times(t, x)
        active = torch.ones_like(tb, dtype=torch.bool)
        if interval is not None:
            active = (tb >= interval[0]) & (tb <= interval[1])
        if w == 0 or not bool(active.any()):
            return den(x, t, **cond)
        b = x.shape[0]
        uncond = {k: (_null_like(v, null[k]) if k in null else v) for k, v in cond.items()}
        uncond = {k: v for k, v in uncond.items() if v is not None}
        both = {k: _concat(cond[k], uncond.get(k)) for k in cond}
        if all(v is not None for v in both.values()):
            out = den(torch.cat([x, x]), torch.cat([tb, tb]), **both)
            x0_c, x0_u = out[:b], out[b:]
        else:
            x0_c, x0_u = den(x, t, **cond), den(x, t, **uncond)
        guided_x0 = x0_c + w * (x0_c - x0_u)
        if interval is None:
            return guided_x0
        return torch.where(active.reshape((-1,) + (1,) * (x.dim() - 1)), guided_x0, x0_c)

    return guided


def classifier_guidance(
    den: Den,
    log_prob: Callable[..., Tensor],
    schedule: Schedule,
    scale: float,
    label_key: str = "y",
) -> Den:
    """Classifier guidance (Dhariwal & Nichol 2021) as a denoiser wrapper.

    Args:
        den: an (unconditional or conditional) denoiser.
        log_prob: the noisy classifier ``log_prob(x, t, y) -> (B,)`` = log p_phi(y | x_t, t),
            differentiable in x (e.g. a trained noise-conditional classifier's log-softmax
            picked at y, or ``GaussianMixture.class_log_prob`` bound to a schedule).
        scale: s; s = 1 with the exact classifier gives exactly the conditional model.
        label_key: the conditioning keyword holding y; it is passed to ``den`` too unless
            ``den`` is unconditional (pass ``den`` that ignores it, or wrap).
    """
    s = _check_scale(scale, "classifier guidance scale")

    def guided(x: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        if label_key not in cond:
            raise ValueError(f"classifier guidance needs the label keyword {label_key!r}")
        y = cond.pop(label_key)
        x0 = den(x, t, **cond)
        if s == 0:
            return x0
        tb = batch_times(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob(xg, tb, y).sum(), xg)
        coef = (schedule.sigma(tb) ** 2) / schedule.alpha(tb)
        return x0 + s * _bcast(coef, x) * grad.to(x.dtype)

    return guided
