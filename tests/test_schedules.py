"""Schedule identities, inverses, derivatives and the forward process."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from difflab import schedules

ALL = [
    schedules.DiscreteVP.ddpm_linear(),
    schedules.DiscreteVP.cosine(),
    schedules.VP(),
    schedules.VP.cosine(),
    schedules.SubVP(),
    schedules.VE(),
    schedules.VE.ncsn(L=10),
    schedules.EDM(),
    schedules.RectifiedFlow(),
]
VP_LIKE = [s for s in ALL if isinstance(s, schedules.DiscreteVP | schedules.VP)]


def times(s: schedules.Schedule, n: int = 57) -> torch.Tensor:
    # avoid the knots of discrete schedules, where the derivative jumps
    return torch.linspace(max(s.t_min, 1e-3), s.t_max, n, dtype=torch.float64)[1:-1] + 1.234e-5


@pytest.mark.parametrize("s", VP_LIKE, ids=repr)
def test_variance_preserving(s):
    t = times(s)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))


def test_subvp_sigma_is_one_minus_alpha_squared():
    s = schedules.SubVP()
    t = times(s)
    torch.testing.assert_close(s.sigma(t), 1 - s.alpha(t) ** 2)
    assert (s.sigma(t) ** 2 < 1 - s.alpha(t) ** 2).all()  # below the VP variance


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_lambda_round_trip_and_monotone(s):
    t = times(s)
    lam = s.lam(t)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(s.t_of_lam(lam), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_derivatives_match_autograd(s):
    t = times(s)
    for fn, d in [(s.log_alpha, s.d_log_alpha), (s.log_sigma, s.d_log_sigma)]:
        torch.testing.assert_close(d(t), schedules.Schedule._grad(fn, t), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_sde_coefficients_from_definition(s):
    """f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2 (central differences)."""
    t = times(s, 13)
    h = 1e-7
    dsig2 = (s.sigma(t + h) ** 2 - s.sigma(t - h) ** 2) / (2 * h)
    dla = (s.log_alpha(t + h) - s.log_alpha(t - h)) / (2 * h)
    torch.testing.assert_close(s.f(t), dla, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.g2(t), dsig2 - 2 * dla * s.sigma(t) ** 2, rtol=1e-5, atol=1e-6)
    assert (s.g2(t) > 0).all()


def test_vp_linear_closed_forms():
    s = schedules.VP(beta_min=0.1, beta_max=20)
    t = torch.tensor([0.3], dtype=torch.float64)
    # Song et al. (2021) eq. 33: mean coefficient exp(-t^2 (b1 - b0)/4 - t b0 / 2), g^2 = beta(t)
    assert float(s.alpha(t)) == pytest.approx(math.exp(-0.09 * 19.9 / 4 - 0.015))
    assert float(s.g2(t)) == pytest.approx(0.1 + 0.3 * 19.9)


def test_discrete_vp_knots_are_ddpm_alphas_cumprod():
    s = schedules.DiscreteVP.ddpm_linear()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    i = torch.tensor([0, 1, 499, 999])
    torch.testing.assert_close(s.alpha((i + 1) / 1000.0) ** 2, abar[i])
    assert float(s.alpha(0.0)) == 1.0 and float(s.sigma(0.0)) == 0.0
    torch.testing.assert_close(s.network_time((i + 1).double() / 1000.0), i.double(), rtol=0, atol=0)


def test_cosine_discrete_matches_nichol_dhariwal():
    s = schedules.DiscreteVP.cosine(T=1000)
    i = torch.tensor([0, 100, 500])
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expect = torch.tensor([f((k + 1) / 1000) / f(0) for k in i.tolist()], dtype=torch.float64)
    torch.testing.assert_close(s.alpha((i + 1) / 1000.0) ** 2, expect, rtol=1e-6, atol=1e-9)


def test_ncsn_levels_are_geometric():
    s = schedules.VE.ncsn(L=5, sigma_max=1.0, sigma_min=0.01)
    torch.testing.assert_close(s.levels(), torch.tensor([1.0, 10**-0.5, 0.1, 10**-1.5, 0.01], dtype=torch.float64))


@pytest.mark.parametrize("s", [schedules.VP(), schedules.VE(sigma_max=5), schedules.SubVP()], ids=repr)
def test_iterative_and_one_shot_forward_agree(s):
    """Chaining q(x_t | x_s) over a grid gives the one-shot q(x_t | x_0) in distribution."""
    n = 20000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    ts = torch.linspace(0, 0.7, 15, dtype=torch.float64)
    x = x0
    for a, b in itertools.pairwise(ts):
        x = s.transition(x, float(a), float(b), torch.randn(n, 1, generator=g, dtype=torch.float64))
    y = s.perturb(x0, 0.7, torch.randn(n, 1, generator=g, dtype=torch.float64))
    mean, std = float(s.alpha(0.7)) * 1.5, float(s.sigma(0.7))
    for z in (x, y):
        assert abs(float(z.mean()) - mean) < 4 * std / math.sqrt(n)
        assert abs(float(z.std()) / std - 1) < 4 / math.sqrt(2 * n)


def test_ddpm_iterative_forward_matches_one_shot():
    """Ho et al. eq. 2 iterated i+1 times equals eq. 4 with alpha-bar_i."""
    s = schedules.DiscreteVP.ddpm_linear()
    n, steps = 20000, 300
    g = torch.Generator().manual_seed(1)
    x = torch.full((n, 1), -1.0, dtype=torch.float64)
    for i in range(steps):
        x = s.step_forward(x, i, torch.randn(n, 1, generator=g, dtype=torch.float64))
    t = steps / s.T  # index steps-1
    mean, std = -float(s.alpha(t)), float(s.sigma(t))
    assert abs(float(x.mean()) - mean) < 4 * std / math.sqrt(n)
    assert abs(float(x.std()) / std - 1) < 4 / math.sqrt(2 * n)


def test_prior_sample_is_batch_invariant():
    s = schedules.VP()
    torch.testing.assert_close(s.prior_sample((3, 4), generator=7), s.prior_sample((10, 4), generator=7)[:3])


def test_bad_input():
    with pytest.raises(ValueError, match="unknown schedule 'vpp'.*valid names"):
        schedules.get("vpp")
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        schedules.VP(beta_min=5, beta_max=1)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        schedules.DiscreteVP([0.1, 1.5])
    with pytest.raises(ValueError, match="leaves the valid range"):
        schedules.VP().check_times(torch.tensor([1.5, 0.5]))
    with pytest.raises(ValueError, match="no discrete levels"):
        schedules.VE().levels()
    assert isinstance(schedules.get("ddpm_linear", T=100), schedules.DiscreteVP)
