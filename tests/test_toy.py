"""The analytic oracles are exact: scores are gradients of log p_t, posterior means obey
Tweedie's formula and Monte-Carlo estimates, and the Gaussian flow solves the PF-ODE."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import schedules, toy


@pytest.fixture
def gm():
    return toy.GaussianMixture.random(dim=3, K=4, seed=3, spread=2.0)


@pytest.mark.parametrize("sch", [schedules.VP(), schedules.VE(), schedules.DiscreteVP.ddpm_linear()], ids=repr)
def test_score_is_gradient_of_log_density(gm, sch):
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(10, dtype=torch.float64) * 0.9 + 0.05
    (grad,) = torch.autograd.grad(gm.log_prob_t(x, t, sch).sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), t, sch), grad)


def test_tweedie(gm):
    sch = schedules.VP()
    x, t = torch.randn(10, 3, dtype=torch.float64), 0.3
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    torch.testing.assert_close(gm.posterior_mean(x, t, sch), (x + s * s * gm.score(x, t, sch)) / a)


def test_posterior_mean_against_monte_carlo():
    """E[x_0 | x_t] by importance weighting data samples with the Gaussian likelihood."""
    gm = toy.GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], stds=torch.tensor([0.3, 0.6]))
    sch = schedules.VP()
    t, x = 0.35, torch.tensor([[0.2, 0.1]], dtype=torch.float64)
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    x0 = gm.sample(400000, generator=0)
    w = torch.softmax(-((x - a * x0) ** 2).sum(1) / (2 * s * s), 0)
    torch.testing.assert_close(gm.posterior_mean(x, t, sch)[0], (w[:, None] * x0).sum(0), atol=5e-3, rtol=0)


def test_sample_moments(gm):
    x = gm.sample(200000, generator=1)
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gm.cov(), atol=0.06, rtol=0.02)


def test_marginal_density_integrates_to_one():
    gm = toy.GaussianMixture.ring(K=8, radius=2, std=0.2)
    sch = schedules.VP()
    g = torch.linspace(-5, 5, 401, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    for t in (0.0, 0.2, 0.8):
        p = gm.log_prob_t(xy, t, sch).exp().sum() * (g[1] - g[0]) ** 2
        assert float(p) == pytest.approx(1.0, abs=1e-3)


def test_gaussian_flow_solves_the_pf_ode():
    """d/dt flow = f x - g^2/2 score, and the flow pushes p_s to p_t."""
    gauss = toy.Gaussian([1.0, -1.0], cov=torch.tensor([[1.0, 0.3], [0.3, 0.2]]))
    sch = schedules.VP()
    x = torch.randn(5, 2, dtype=torch.float64)
    t, h = 0.4, 1e-6
    dx = (gauss.flow(x, t, t + h, sch) - gauss.flow(x, t, t - h, sch)) / (2 * h)
    drift = float(sch.f(t)) * x - 0.5 * float(sch.g2(t)) * gauss.score(x, t, sch)
    torch.testing.assert_close(dx, drift, rtol=1e-6, atol=1e-6)
    xs = sch.perturb(gauss.sample(100000, generator=2), 0.9, torch.randn(100000, 2, dtype=torch.float64))
    y = gauss.flow(xs, 0.9, 0.2, sch)
    a, s = float(sch.alpha(0.2)), float(sch.sigma(0.2))
    torch.testing.assert_close(y.mean(0), a * gauss.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(
        torch.cov(y.T), a * a * gauss.cov() + s * s * torch.eye(2, dtype=torch.float64), atol=0.02, rtol=0.02
    )


@pytest.mark.parametrize("name", sorted(toy.DATASETS_2D))
def test_2d_datasets(name):
    x = toy.DATASETS_2D[name](5000, generator=0)
    assert x.shape == (5000, 2) and torch.isfinite(x).all()
    assert 0.2 < float(x.std()) < 3.0
    torch.testing.assert_close(x, toy.DATASETS_2D[name](5000, generator=0))


def test_checkerboard_is_on_black_squares():
    x = toy.checkerboard(10000, generator=1)
    parity = (x[:, 0].floor() + x[:, 1].floor()) % 2
    assert (parity == 0).all() or (parity == 1).all()
    assert float(x.abs().max()) <= 2.0 + 1e-6


def test_bad_input():
    with pytest.raises(ValueError, match="weights must be 2 positive"):
        toy.GaussianMixture([1.0, -1.0], [[0.0], [1.0]], stds=1.0)
    with pytest.raises(ValueError, match="exactly one of covs or stds"):
        toy.GaussianMixture([1.0], [[0.0]])
    with pytest.raises(ValueError, match="expected points of shape \\(batch, 2\\)"):
        toy.GaussianMixture.ring().score(torch.zeros(3, 3), 0.5, schedules.VP())
    assert math.isfinite(float(toy.GaussianMixture.ring().log_prob(torch.zeros(1, 2))))
