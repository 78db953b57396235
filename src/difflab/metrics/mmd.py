"""Maximum mean discrepancy (Gretton et al. 2012, "A Kernel Two-Sample Test", Lemma 6) and
the Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 4).

The unbiased estimator of MMD^2 between samples X (m) and Y (n) is

    MMD_u^2 = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
              - 2/(mn) sum_{i, j} k(x_i, y_j);

it is zero in expectation when X and Y come from the same distribution (and may then be
negative).  KID is MMD_u^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.metrics.fid import _as_features

__all__ = ["kid", "median_bandwidth", "mmd2", "mmd2_unbiased", "polynomial_kernel", "rbf_kernel"]

Kernel = Callable[[Tensor, Tensor], Tensor]


def polynomial_kernel(degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> Kernel:
    """k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/d by default (KID's kernel)."""

    def k(x: Tensor, y: Tensor) -> Tensor:
        g = 1.0 / x.shape[1] if gamma is None else gamma
        return (g * x @ y.T + coef0) ** degree

    return k


def rbf_kernel(bandwidth: float | Sequence[float]) -> Kernel:
    """k(x, y) = sum_h exp(-|x - y|^2 / (2 h^2)) over the bandwidth(s) h."""
    hs = [float(bandwidth)] if isinstance(bandwidth, int | float) else [float(h) for h in bandwidth]
    if not hs or min(hs) <= 0:
        raise ValueError(f"RBF bandwidths must be positive, got {bandwidth}")

    def k(x: Tensor, y: Tensor) -> Tensor:
        d2 = torch.cdist(x, y).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs)

    return k


def mmd2_unbiased(x: Tensor, y: Tensor, kernel: Kernel) -> float:
    """The unbiased MMD^2 estimator (Gretton et al. 2012, eq. 3) for one pair of samples."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples in each set, got {m} and {n}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def median_bandwidth(x: Tensor, y: Tensor, max_points: int = 2000) -> float:
    """The median heuristic: the median pairwise distance in the pooled sample."""
    z = torch.cat([x, y])[:max_points]
    d = torch.cdist(z, z)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)].median())


def mmd2(x: Tensor, y: Tensor, bandwidth: float | Sequence[float] | None = None) -> float:
    """Unbiased MMD^2 with a Gaussian (RBF) kernel, for low-dimensional data such as the 2-D toys.

    ``bandwidth``: one or several (summed kernels) RBF widths; ``None`` takes the median
    pairwise distance of the pooled sample.  Returns MMD^2 itself (about 0, possibly
    slightly negative, for samples of the same distribution).
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    h = median_bandwidth(x, y) if bandwidth is None else bandwidth
    return mmd2_unbiased(x, y, rbf_kernel(h))


def kid(
    features_a: Tensor,
    features_b: Tensor,
    n_subsets: int = 100,
    subset_size: int = 1000,
    generator: int | torch.Generator | None = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation of MMD_u^2 with the kernel
    (x.y/d + 1)^3 over ``n_subsets`` random subsets of ``min(subset_size, N_a, N_b)``
    samples from each set (Binkowski et al. 2018; the protocol of their code and of
    torch-fidelity).  Unbiased: its expectation is 0 when both sets share a distribution.
    """
    fa, fb = _as_features(features_a, "first feature set"), _as_features(features_b, "second feature set")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} and {fb.shape[1]}")
    m = min(subset_size, fa.shape[0], fb.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {fa.shape[0]} and {fb.shape[0]}")
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    k = polynomial_kernel(3)
    vals = torch.tensor(
        [
            mmd2_unbiased(
                fa[torch.randperm(fa.shape[0], generator=g)[:m]], fb[torch.randperm(fb.shape[0], generator=g)[:m]], k
            )
            for _ in range(n_subsets)
        ],
        dtype=torch.float64,
    )
    return float(vals.mean()), float(vals.std()) if n_subsets > 1 else 0.0
