"""Sliced Wasserstein distance (Rabin et al. 2011, "Wasserstein Barycenter and its Application
to Texture Mixing"; Bonneel et al. 2015, eq. 5):

    SW_p(mu, nu) = ( E_{theta ~ U(S^{d-1})} W_p^p(theta # mu, theta # nu) )^{1/p},

a Monte-Carlo average over random directions of one-dimensional Wasserstein distances,
which are exact for empirical measures: W_p^p = int_0^1 |F^{-1}(u) - G^{-1}(u)|^p du.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.metrics.fid import _as_features

__all__ = ["sliced_wasserstein", "wasserstein_1d"]


def wasserstein_1d(a: Tensor, b: Tensor, p: float = 2.0) -> Tensor:
    """W_p^p between the empirical measures of the columns of a (n, L) and b (m, L),
    exactly, for any n and m: both quantile functions are step functions, constant between
    the merged breakpoints {i/n} U {j/m}."""
    n, m = a.shape[0], b.shape[0]
    a, b = a.sort(0).values, b.sort(0).values
    if n == m:  # matching sorted samples is the optimal coupling
        return (a - b).abs().pow(p).mean(0)
    u = torch.cat([torch.arange(1, n + 1, dtype=a.dtype) / n, torch.arange(1, m + 1, dtype=a.dtype) / m]).sort().values
    w = torch.diff(u, prepend=u.new_zeros(1))
    mid = u - w / 2
    ia = (mid * n).floor().long().clamp(0, n - 1)
    ib = (mid * m).floor().long().clamp(0, m - 1)
    return (w[:, None] * (a[ia] - b[ib]).abs().pow(p)).sum(0)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 512,
    p: float = 2.0,
    generator: int | torch.Generator | None = 0,
) -> float:
    """SW_p between samples x (n, d) and y (m, d) with ``n_projections`` random directions
    (the same directions for both sets).  For N(0, I) vs N(m, I), SW_2 = |m| / sqrt(d)."""
    x, y = _as_features(x.reshape(x.shape[0], -1), "x"), _as_features(y.reshape(y.shape[0], -1), "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return float(wasserstein_1d(x @ theta, y @ theta, p).mean() ** (1 / p))
