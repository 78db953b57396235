"""Analytic distributions with exact marginals, scores and posterior means, and 2-D toys.

For data x_0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = alpha x_0 + sigma eps, the marginal
is p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) and, by Gaussian
conditioning, the posterior mean (the ideal denoiser) is

    E[x_0 | x_t] = sum_k r_k(x_t) [ mu_k + alpha Sigma_k (alpha^2 Sigma_k + sigma^2 I)^{-1} (x_t - alpha mu_k) ]

with responsibilities r_k(x_t) proportional to w_k N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I).
Each Sigma_k is diagonalised once (Sigma_k = U_k diag(l_k) U_k^T), so every time t costs
one projection.  All arithmetic is float64; the denoiser returns x's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.parameterization import batch_times
from difflab.random import GeneratorLike
from difflab.schedules import Schedule, TimeLike

__all__ = [
    "DATASETS_2D",
    "Gaussian",
    "GaussianMixture",
    "checkerboard",
    "eight_gaussians",
    "moons",
    "swiss_roll",
]

_F64 = torch.float64


class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in d dimensions.

    Args:
        weights: (K,) positive, normalised here.
        means: (K, d).
        covs: (K, d, d) symmetric positive semi-definite; or give ``stds`` instead:
            a float, (K,) (isotropic per component) or (K, d) (diagonal).
        labels: optional (K,) class label of each component, making the mixture a
            class-conditional model p(x_0 | y) = sum_{k: label_k = y} w_k N(mu_k, Sigma_k) / P(y).
            Methods that take ``y`` condition on it; ``y = -1`` (or None) means unconditional.
    """

    def __init__(
        self,
        weights: Sequence[float] | Tensor,
        means: Sequence[Sequence[float]] | Tensor,
        covs: Tensor | None = None,
        stds: float | Sequence[float] | Tensor | None = None,
        labels: Sequence[int] | Tensor | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=_F64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        w = torch.as_tensor(weights, dtype=_F64).flatten()
        if w.shape != (K,) or not (w > 0).all():
            raise ValueError(f"weights must be {K} positive numbers, got {w.tolist()}")
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of covs or stds")
        if covs is not None:
            covs = torch.as_tensor(covs, dtype=_F64)
            if covs.shape != (K, d, d):
                raise ValueError(f"covs must have shape {(K, d, d)}, got {tuple(covs.shape)}")
            covs = (covs + covs.transpose(1, 2)) / 2
            evals, evecs = torch.linalg.eigh(covs)
            if (evals < -1e-10 * evals.abs().max().clamp_min(1)).any():
                raise ValueError("covariances must be positive semi-definite")
            evals = evals.clamp_min(0)
        else:
            s = torch.as_tensor(stds, dtype=_F64)
            if s.dim() == 0:
                s = s.expand(K, d)
            elif s.shape == (K,):
                s = s[:, None].expand(K, d)
            elif s.shape != (K, d):
                raise ValueError(f"stds must be a float, ({K},) or ({K}, {d}), got {tuple(s.shape)}")
            if (s < 0).any():
                raise ValueError("stds must be non-negative")
            evals = s.pow(2).clone()
            evecs = torch.eye(d, dtype=_F64).expand(K, d, d).clone()
        self.weights = w / w.sum()
        self.labels = None
        if labels is not None:
            self.labels = torch.as_tensor(labels, dtype=torch.long).flatten()
            if self.labels.shape != (K,) or (self.labels < 0).any():
                raise ValueError(f"labels must be {K} non-negative class indices, got {self.labels.tolist()}")
        self.means = means
        self.evals, self.evecs = evals, evecs  # Sigma_k = U diag(l) U^T
        self.K, self.dim = K, d

    # --- construction helpers -------------------------------------------------------
    @classmethod
    def random(
        cls,
        dim: int,
        K: int,
        seed: int = 0,
        spread: float = 3.0,
        std_range: tuple[float, float] = (0.1, 1.0),
        anisotropic: bool = True,
    ) -> GaussianMixture:
        """A random mixture: means ~ N(0, spread^2 I / ... ), random weights in [0.5, 1.5],
        per-component scales log-uniform in ``std_range`` and random rotations."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(K, dim, generator=g, dtype=_F64) * spread
        weights = 0.5 + torch.rand(K, generator=g, dtype=_F64)
        lo, hi = math.log(std_range[0]), math.log(std_range[1])
        if anisotropic:
            stds = torch.exp(lo + (hi - lo) * torch.rand(K, dim, generator=g, dtype=_F64))
            q, _ = torch.linalg.qr(torch.randn(K, dim, dim, generator=g, dtype=_F64))
            covs = q @ torch.diag_embed(stds**2) @ q.transpose(1, 2)
            return cls(weights, means, covs=covs)
        stds = torch.exp(lo + (hi - lo) * torch.rand(K, generator=g, dtype=_F64))
        return cls(weights, means, stds=stds)

    @classmethod
    def ring(cls, K: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
        """K equal modes on a circle in 2-D (the '8 Gaussians' density)."""
        ang = torch.arange(K, dtype=_F64) * 2 * math.pi / K
        means = radius * torch.stack([ang.cos(), ang.sin()], 1)
        return cls(torch.ones(K), means, stds=std)

    # --- moments and sampling ------------------------------------------------------
    @property
    def covs(self) -> Tensor:
        return self.evecs @ torch.diag_embed(self.evals) @ self.evecs.transpose(1, 2)

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def cov(self) -> Tensor:
        """Exact covariance: sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def sample(
        self, n: int, generator: GeneratorLike = None, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n exact samples (float64); with ``return_labels`` also their components."""
        g = generator if isinstance(generator, torch.Generator) or generator is None else None
        if isinstance(generator, int):
            g = torch.Generator().manual_seed(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, generator=g, dtype=_F64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self.evecs[k], z * self.evals[k].sqrt())
        return (x, k) if return_labels else x

    def conditional(self, known: Sequence[int] | Tensor, values: Sequence[float] | Tensor) -> GaussianMixture:
        """The exact conditional p(x_u | x_k = values) of the unknown coordinates given the
        coordinates ``known`` (indices), itself a Gaussian mixture over the remaining
        coordinates in increasing order (Bishop 2006, eqs. 2.81-2.82, per component):

            mu_{u|k} = mu_u + S_uk S_kk^{-1} (x_k - mu_k),   S_{u|k} = S_uu - S_uk S_kk^{-1} S_ku,
            w'_j proportional to w_j N(x_k; mu_{j,k}, S_{j,kk}).

        Component labels are kept, so ``conditional(...).posterior_mean(..., y=c)`` conditions on
        a class as well.  Needs each component's S_kk to be non-singular."""
        idx = torch.as_tensor(known, dtype=torch.long).flatten()
        if idx.numel() == 0 or idx.numel() >= self.dim or len(set(idx.tolist())) != idx.numel():
            raise ValueError(
                f"known must list distinct coordinates, at least one and not all {self.dim}: {idx.tolist()}"
            )
        if int(idx.min()) < 0 or int(idx.max()) >= self.dim:
            raise ValueError(f"known coordinates {idx.tolist()} are outside 0..{self.dim - 1}")
        xk = torch.as_tensor(values, dtype=_F64).flatten()
        if xk.shape != idx.shape:
            raise ValueError(f"need one value per known coordinate ({idx.numel()}), got {xk.numel()}")
        u = torch.tensor([i for i in range(self.dim) if i not in set(idx.tolist())], dtype=torch.long)
        S = self.covs
        S_kk, S_uk, S_uu = S[:, idx][:, :, idx], S[:, u][:, :, idx], S[:, u][:, :, u]
        r = xk[None] - self.means[:, idx]  # (K, k)
        L = torch.linalg.cholesky(S_kk)
        sol = torch.cholesky_solve(r[:, :, None], L)[:, :, 0]  # S_kk^{-1} r
        means = self.means[:, u] + torch.einsum("kuj,kj->ku", S_uk, sol)
        covs = S_uu - S_uk @ torch.cholesky_solve(S_uk.transpose(1, 2), L)
        logdet = 2 * torch.diagonal(L, dim1=1, dim2=2).log().sum(1)
        logw = self.weights.log() - 0.5 * (r * sol).sum(1) - 0.5 * logdet
        # a far component's weight may underflow to 0; the constructor wants positive weights
        return GaussianMixture(torch.softmax(logw, 0).clamp_min(1e-300), means, covs=covs, labels=self.labels)

    def component_of(self, x: Tensor) -> Tensor:
        """Most probable component of each data point (for mode-weight statistics)."""
        return self._log_components(
            x.to(_F64), torch.ones(x.shape[0], dtype=_F64), torch.zeros(x.shape[0], dtype=_F64)
        ).argmax(1)

    # --- the marginal at time t ---------------------------------------------------
    def _log_components(self, x: Tensor, a: Tensor, s: Tensor, cache: dict | None = None) -> Tensor:
        """log w_k + log N(x; a mu_k, a^2 Sigma_k + s^2 I), shape (B, K)."""
        y = torch.einsum("kde,bkd->bke", self.evecs, x[:, None, :] - a[:, None, None] * self.means[None])
        v = a[:, None, None] ** 2 * self.evals[None] + s[:, None, None] ** 2
        if cache is not None:
            cache["y"], cache["v"] = y, v
        logn = -0.5 * (y * y / v).sum(-1) - 0.5 * v.log().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return self.weights.log()[None] + logn

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def _condition(self, logc: Tensor, y: Tensor | int | None) -> Tensor:
        """Restrict log-components (B, K) to the components of class y (y = -1: all)."""
        if y is None:
            return logc
        if self.labels is None:
            raise ValueError("this mixture has no class labels; build it with labels=...")
        y = torch.as_tensor(y, dtype=torch.long).expand(logc.shape[0])
        if ((y >= self.num_classes) | (y < -1)).any():
            raise ValueError(
                f"labels must be in [0, {self.num_classes}) or -1 (unconditional), got {y.unique().tolist()}"
            )
        keep = (self.labels[None, :] == y[:, None]) | (y[:, None] < 0)
        return logc.masked_fill(~keep, -math.inf)

    def _prep(self, x: Tensor, t: TimeLike, schedule: Schedule) -> tuple[Tensor, Tensor, Tensor]:
        if x.shape[-1] != self.dim or x.dim() != 2:
            raise ValueError(f"expected points of shape (batch, {self.dim}), got {tuple(x.shape)}")
        tb = batch_times(t, x)
        return x.to(_F64), schedule.alpha(tb), schedule.sigma(tb)

    def log_prob_t(self, x: Tensor, t: TimeLike, schedule: Schedule, y: Tensor | int | None = None) -> Tensor:
        """Exact log p_t(x) (or log p_t(x | y)), shape (B,)."""
        x, a, s = self._prep(x, t, schedule)
        logc = self._log_components(x, a, s)
        if y is None:
            return torch.logsumexp(logc, 1)
        logc = self._condition(logc, y)
        log_py = torch.logsumexp(self._condition(self.weights.log().expand_as(logc), y), 1)
        return torch.logsumexp(logc, 1) - log_py

    def class_log_prob(self, x: Tensor, t: TimeLike, schedule: Schedule, y: Tensor | int) -> Tensor:
        """The exact noisy classifier log p(y | x_t), shape (B,)."""
        x, a, s = self._prep(x, t, schedule)
        logc = self._log_components(x, a, s)
        return torch.logsumexp(self._condition(logc, y), 1) - torch.logsumexp(logc, 1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data (t = 0); needs non-degenerate covariances."""
        x = x.to(_F64)
        one = torch.ones(x.shape[0], dtype=_F64)
        return torch.logsumexp(self._log_components(x, one, 0 * one), 1)

    def responsibilities(self, x: Tensor, t: TimeLike, schedule: Schedule, y: Tensor | int | None = None) -> Tensor:
        """Posterior p(k | x_t) (or p(k | x_t, y)), shape (B, K)."""
        x, a, s = self._prep(x, t, schedule)
        return torch.softmax(self._condition(self._log_components(x, a, s), y), 1)

    def _terms(self, x: Tensor, t: TimeLike, schedule: Schedule, y) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, a, s = self._prep(x, t, schedule)
        cache: dict = {}
        r = torch.softmax(self._condition(self._log_components(x, a, s, cache), y), 1)
        return r, cache["y"], cache["v"], a

    def score(self, x: Tensor, t: TimeLike, schedule: Schedule, y: Tensor | int | None = None) -> Tensor:
        """Exact grad_x log p_t(x) (or of log p_t(x | y)) in float64:
        -sum_k r_k (a^2 Sigma_k + s^2 I)^{-1} (x - a mu_k)."""
        r, z, v, _ = self._terms(x, t, schedule, y)
        return -torch.einsum("bk,kde,bke->bd", r, self.evecs, z / v)

    def posterior_mean(self, x: Tensor, t: TimeLike, schedule: Schedule, y: Tensor | int | None = None) -> Tensor:
        """Exact E[x_0 | x_t = x] (or E[x_0 | x_t, y]) in float64 (see module docstring)."""
        r, z, v, a = self._terms(x, t, schedule, y)
        corr = torch.einsum("kde,bke->bkd", self.evecs, a[:, None, None] * self.evals[None] * z / v)
        return torch.einsum("bk,bkd->bd", r, self.means[None] + corr)

    def denoiser(self, schedule: Schedule) -> Callable[..., Tensor]:
        """The perfect denoiser ``den(x, t, y=None) -> E[x_0 | x_t (, y)]`` (any trailing shape
        works as long as it flattens to ``dim``; ``y = -1`` entries are unconditional)."""

        def den(x: Tensor, t: TimeLike, y: Tensor | int | None = None) -> Tensor:
            flat = x.reshape(x.shape[0], -1)
            return self.posterior_mean(flat, t, schedule, y).to(x.dtype).reshape(x.shape)

        return den

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.K}, dim={self.dim})"


class Gaussian(GaussianMixture):
    """A single Gaussian N(mu, Sigma): its probability-flow ODE has a closed-form flow."""

    def __init__(self, mean: Sequence[float] | Tensor, cov: Tensor | None = None, std: float | Tensor | None = None):
        mean = torch.as_tensor(mean, dtype=_F64).flatten()
        if cov is not None:
            cov = torch.as_tensor(cov, dtype=_F64)[None]
        if std is not None:
            std = torch.as_tensor(std, dtype=_F64)
            std = std[None] if std.dim() == 1 else std
        super().__init__(torch.ones(1), mean[None], covs=cov, stds=std)

    def flow(self, x_s: Tensor, s: TimeLike, t: TimeLike, schedule: Schedule) -> Tensor:
        """Exact solution of the probability-flow ODE from time s to time t.

        In the eigenbasis of Sigma each coordinate of y = x - alpha mu obeys
        dy/dt = (f + g^2 / (2 v)) y with v = alpha^2 l + sigma^2 and dv/dt = 2 f v + g^2,
        so y_t = y_s sqrt(v_t / v_s).
        """
        x, a_s, s_s = self._prep(x_s, s, schedule)
        tb = batch_times(t, x)
        a_t, s_t = schedule.alpha(tb), schedule.sigma(tb)
        U, lam, mu = self.evecs[0], self.evals[0], self.means[0]
        y = (x - a_s[:, None] * mu) @ U
        v_s = a_s[:, None] ** 2 * lam + s_s[:, None] ** 2
        v_t = a_t[:, None] ** 2 * lam + s_t[:, None] ** 2
        return (y * (v_t / v_s).sqrt()) @ U.T + a_t[:, None] * mu


# --- 2-D data sets -------------------------------------------------------------------
def _gen(generator: int | torch.Generator | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator


def moons(n: int, noise: float = 0.05, generator: int | torch.Generator | None = None) -> Tensor:
    """Two interleaving half circles, centred and scaled to unit-ish variance."""
    g = _gen(generator)
    upper = torch.rand(n, generator=g) < 0.5
    th = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, th.cos(), 1 - th.cos())
    y = torch.where(upper, th.sin(), 0.5 - th.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 2
    return pts + noise * 2 * torch.randn(n, 2, generator=g)


def swiss_roll(n: int, noise: float = 0.25, generator: int | torch.Generator | None = None) -> Tensor:
    """The 2-D Swiss roll (t sin t, t cos t) / 5 for t in [1.5 pi, 4.5 pi]."""
    g = _gen(generator)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * t.cos(), t * t.sin()], 1)
    return (pts + noise * torch.randn(n, 2, generator=g)) / 5


def checkerboard(n: int, generator: int | torch.Generator | None = None) -> Tensor:
    """Uniform on the black squares of a 4x4 checkerboard on [-2, 2]^2."""
    g = _gen(generator)
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + (x1.floor() % 2)
    return torch.stack([x1, x2], 1)


def eight_gaussians(n: int, std: float = 0.1, generator: int | torch.Generator | None = None) -> Tensor:
    """Eight Gaussians of std ``std`` on a circle of radius 2 (float32)."""
    return GaussianMixture.ring(8, 2.0, std).sample(n, _gen(generator)).float()


DATASETS_2D: dict[str, Callable[..., Tensor]] = {
    "moons": moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "eight_gaussians": eight_gaussians,
}
