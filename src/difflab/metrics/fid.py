"""Frechet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update
Rule Converge to a Local Nash Equilibrium", eq. 6), in any feature space:

    FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}),

the squared 2-Wasserstein distance between the Gaussians N(mu_1, S_1) and N(mu_2, S_2)
fitted to two sets of features (Dowson & Landau 1982).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fid", "frechet_distance", "gaussian_stats"]


def _as_features(x: Tensor, what: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{what} must be a (N, D) matrix of features, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains non-finite values")
    return x.to(torch.float64)


def gaussian_stats(features: Tensor, what: str = "features") -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64.

    Raises ValueError when N < D + 1: fewer samples give a singular covariance, and FID
    is then dominated by estimation error (Chong & Forsyth 2020 show the bias still
    falls like 1/N well beyond; use N >= 10 D, conventionally 10 000 or more).
    """
    f = _as_features(features, what)
    n, d = f.shape
    if n < d + 1:
        raise ValueError(
            f"{what}: {n} samples are too few for the covariance of {d}-dimensional features; "
            f"FID needs at least D + 1 = {d + 1} (better 10 D = {10 * d} or more)"
        )
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (n - 1)


def _sqrtm_psd(s: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).

    tr (S1 S2)^{1/2} is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S1^{1/2} S2 S1^{1/2} (similar to S1 S2), which avoids the complex
    round-off of a general ``sqrtm``.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    cov1, cov2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"mismatched statistics: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
            f"covariances {tuple(cov1.shape)}, {tuple(cov2.shape)}"
        )
    s1 = _sqrtm_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt)


def fid(features_a: Tensor, features_b: Tensor) -> float:
    """FID between two (N, D) feature sets (see :func:`gaussian_stats` for the sample size)."""
    return frechet_distance(
        *gaussian_stats(features_a, "first feature set"), *gaussian_stats(features_b, "second feature set")
    )
