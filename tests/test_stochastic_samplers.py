"""Stochastic samplers reproduce the target's moments and mode weights within Monte-Carlo
error, and annealed Langevin fixes plain Langevin's mode weights (Song & Ermon 2019)."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import sample, schedules, solvers, timesteps, toy

N = 3000
GM = toy.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], stds=torch.tensor([[0.3, 0.5], [0.6, 0.2]]))

CASES = {
    "ddpm-beta_tilde": ("ddpm", {}, schedules.DiscreteVP.ddpm_linear(), lambda s: timesteps.trailing(s, 250)),
    "ddpm-beta": (
        "ddpm",
        {"variance": "beta"},
        schedules.DiscreteVP.ddpm_linear(),
        lambda s: timesteps.trailing(s, 250),
    ),
    "ddim-eta1": ("ddim", {"eta": 1.0}, schedules.DiscreteVP.ddpm_linear(), lambda s: timesteps.trailing(s, 100)),
    "euler_maruyama-vp": ("euler_maruyama", {}, schedules.VP(), lambda s: timesteps.uniform(s, 300, t_end=0)),
    "euler_maruyama-subvp": ("euler_maruyama", {}, schedules.SubVP(), lambda s: timesteps.uniform(s, 300, t_end=0)),
    "pc-vp": ("pc", {"step_rule": "sigma"}, schedules.VP(), lambda s: timesteps.uniform(s, 100, t_end=0)),
    "pc-ve": ("pc", {"step_rule": "sigma"}, schedules.VE(sigma_max=20), lambda s: timesteps.uniform(s, 100)),
    "pc-em-predictor": (
        "pc",
        {"predictor": "euler_maruyama", "step_rule": "sigma"},
        schedules.VP(),
        lambda s: timesteps.uniform(s, 150, t_end=0),
    ),
    "annealed_langevin": (
        "annealed_langevin",
        {"n_steps": 30, "eps": 5e-4},
        schedules.VE.ncsn(L=20, sigma_max=10, sigma_min=0.02),
        lambda s: timesteps.uniform(s, 19, t_end=0),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_moments_and_mode_weights(case):
    name, hyper, sch, grid = CASES[case]
    x_T = sch.prior_sample((N, 2), generator=11)
    x = sample(solvers.get(name, **hyper), GM.denoiser(sch), sch, x_T, grid(sch), generator=12).double()
    cov = GM.cov()
    # Monte-Carlo standard errors plus a small allowance for discretisation bias
    se_mean = (torch.diag(cov) / N).sqrt()
    assert ((x.mean(0) - GM.mean()).abs() < 4 * se_mean + 0.03).all(), (x.mean(0), GM.mean())
    se_cov = (torch.outer(torch.diag(cov), torch.diag(cov)) * 2 / N).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < 4 * se_cov + 0.05 * cov.abs().max()).all(), (torch.cov(x.T), cov)
    w = torch.bincount(GM.component_of(x), minlength=2).double() / N
    se_w = (GM.weights * (1 - GM.weights) / N).sqrt()
    assert ((w - GM.weights).abs() < 4 * se_w + 0.01).all(), w


def test_ddim_eta1_is_ddpm():
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((50, 2), generator=1)
    ts = timesteps.trailing(sch, 20)
    a = sample("ddpm", GM.denoiser(sch), sch, x_T, ts, generator=3)
    b = sample(solvers.get("ddim", eta=1.0), GM.denoiser(sch), sch, x_T, ts, generator=3)
    torch.testing.assert_close(a, b)


def test_annealing_fixes_langevin_mode_weights():
    """Song & Ermon (2019), Sec. 3.2.2 and Fig. 3: for 1/5 N((-5,-5), I) + 4/5 N((5,5), I),
    Langevin dynamics with the exact score, started uniformly on [-8, 8]^2, cannot move mass
    between the modes and gets their weights wrong; annealed Langevin (sigma 20 -> 1,
    10 levels, T = 100, eps = 0.1) recovers 1/5 and 4/5."""
    gm = toy.GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], stds=1.0)
    n = 2000
    x0 = torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) * 16 - 8

    data = schedules.VE(sigma_min=1e-2, sigma_max=20.0)
    plain = sample(
        solvers.get("langevin", n_steps=1000, step_size=0.1),
        gm.denoiser(data),
        data,
        x0,
        torch.tensor([1.0, 0.0]),
        generator=1,
    )
    w_plain = float((gm.component_of(plain) == 0).double().mean())

    ncsn = schedules.VE.ncsn(L=10, sigma_max=20.0, sigma_min=1.0)
    ts = timesteps.uniform(ncsn, 9, t_end=0)
    annealed = sample(
        solvers.get("annealed_langevin", n_steps=100, eps=0.1), gm.denoiser(ncsn), ncsn, x0, ts, generator=1
    )
    w_annealed = float((gm.component_of(annealed) == 0).double().mean())

    se = math.sqrt(0.2 * 0.8 / n)
    assert abs(w_plain - 0.2) > 0.15, w_plain  # about the share of the start box nearer each mode
    assert abs(w_annealed - 0.2) < 4 * se + 0.01, w_annealed


@pytest.mark.parametrize("v,fixed", [(1.0, "beta"), (-1.0, "beta_tilde")])
def test_learned_variance_interpolates_the_fixed_ones(v, fixed):
    """Nichol & Dhariwal (2021, eq. 15): v = 1 gives beta, v = -1 gives beta-tilde, on any grid."""
    from difflab import Denoiser
    from difflab.parameterization import from_x0

    sch = schedules.DiscreteVP.ddpm_linear()

    def net(x, t_in):  # the exact eps of the mixture, and a constant variance channel
        t = (t_in + 1) / sch.T
        eps = from_x0("eps", GM.posterior_mean(x, t, sch).to(x.dtype), x, t, sch)
        return torch.cat([eps, torch.full_like(x, v)], 1)

    den = Denoiser(net, sch, learned_variance=True)
    x_T = sch.prior_sample((64, 2), generator=1, dtype=torch.float64)
    ts = timesteps.trailing(sch, 25)
    a = sample(solvers.get("ddpm", variance="learned"), den, sch, x_T, ts, generator=2, dtype=torch.float64)
    b = sample(solvers.get("ddpm", variance=fixed), den, sch, x_T, ts, generator=2, dtype=torch.float64)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="learned_variance=True"):
        sample(solvers.get("ddpm", variance="learned"), GM.denoiser(sch), sch, x_T, ts)
