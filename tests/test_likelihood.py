"""Likelihood through the probability-flow ODE against exact log-densities of Gaussian mixtures;
Hutchinson's estimator unbiased; bits/dim plumbing; DDPM's bound against its closed form."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from difflab import likelihood as L
from difflab import schedules, toy

F64 = torch.float64
MIX = toy.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], stds=[0.3, 0.5])


@pytest.mark.parametrize("schedule", [schedules.VP(), schedules.DiscreteVP.ddpm_linear()], ids=["vp", "ddpm"])
def test_ode_log_likelihood_matches_exact_mixture_density(schedule):
    x = MIX.sample(6, torch.Generator().manual_seed(0))
    r = L.log_likelihood(MIX.denoiser(schedule), schedule, x, rtol=1e-6, atol=1e-6, return_details=True)
    exact = MIX.log_prob_t(x, schedule.t_min, schedule)
    # the ODE part alone is exact: replace the prior by the true p_{t_max} at the encoded point
    ode_only = r.delta_logp + MIX.log_prob_t(r.z, schedule.t_max, schedule)
    assert torch.allclose(ode_only, exact, atol=2e-4), (ode_only - exact).abs().max()
    # with the N(0, sigma_max^2 I) prior the gap is p_{t_max}'s mismatch (alpha(t_max) mu ~ 0.007 here)
    assert torch.allclose(r.logp, exact, atol=1e-2)
    assert r.logp.dtype == F64 and r.logp.shape == (6,) and r.nfe > 10


def test_ode_coordinates_agree():
    sch = schedules.VP()
    x = MIX.sample(3, torch.Generator().manual_seed(1))
    a = L.log_likelihood(MIX.denoiser(sch), sch, x, rtol=1e-6, atol=1e-6)
    b = L.log_likelihood(MIX.denoiser(sch), sch, x, rtol=1e-6, atol=1e-6, coords="t")
    assert torch.allclose(a, b, atol=3e-4)


def test_encoded_point_is_the_exact_gaussian_flow():
    g = toy.Gaussian(torch.tensor([0.5, -1.0, 0.0, 2.0]), std=torch.tensor([0.2, 1.0, 0.5, 0.8]))
    sch = schedules.VP.cosine()
    x = g.sample(5, torch.Generator().manual_seed(2))
    r = L.log_likelihood(g.denoiser(sch), sch, x, rtol=1e-6, atol=1e-6, return_details=True)
    assert torch.allclose(r.z, g.flow(x, sch.t_min, sch.t_max, sch), atol=1e-4)
    assert torch.allclose(r.delta_logp + g.log_prob_t(r.z, sch.t_max, sch), g.log_prob_t(x, sch.t_min, sch), atol=1e-4)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    gm = toy.GaussianMixture([0.5, 0.5], [[1.0, 0.0, -1.0, 0.5], [-1.0, 0.5, 0.0, 0.0]], stds=[0.4, 0.6])
    sch = schedules.VP()
    den = gm.denoiser(sch)
    x = gm.sample(1, torch.Generator().manual_seed(3)).expand(200, -1)  # one point, 200 independent probes
    kw = {"rtol": 1e-4, "atol": 1e-4}
    exact = L.log_likelihood(den, sch, x[:1], divergence="exact", **kw)
    est = L.log_likelihood(den, sch, x, divergence="hutchinson", noise=noise, generator=5, **kw)
    se = float(est.std()) / math.sqrt(len(est))
    assert float(est.std()) > 1e-3  # it is a stochastic estimate ...
    assert abs(float(est.mean() - exact)) < 4 * se  # ... of the exact value


def test_likelihood_bad_input():
    sch = schedules.VP()
    den = MIX.denoiser(sch)
    x = MIX.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="sigma\\(t_start\\) = 0"):
        L.log_likelihood(den, sch, x, t_start=0.0)
    with pytest.raises(ValueError, match="divergence must be"):
        L.log_likelihood(den, sch, x, divergence="trace")
    with pytest.raises(ValueError, match="8-bit images"):
        L.bits_per_dim(den, sch, x.reshape(2, 1, 1, 2))


def test_bits_per_dim_is_dequantised_density_plus_seven():
    # uniform density on [-1, 1]^D is the uniform 256-level distribution: exactly 8 bits/dim
    D = 5
    assert float(L.nats_to_bpd(torch.tensor(D * math.log(2.0)), D, 7.0)) == pytest.approx(8.0)
    g = toy.Gaussian(torch.zeros(4), std=0.4)
    sch = schedules.VP()
    imgs = ((g.sample(3, torch.Generator().manual_seed(4)).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    imgs = imgs.reshape(3, 1, 2, 2)
    bpd = L.bits_per_dim(g.denoiser(sch), sch, imgs, generator=7, rtol=1e-6, atol=1e-6)
    z = L.dequantize(imgs, torch.Generator().manual_seed(7)).reshape(3, 4)
    expect = -g.log_prob_t(z, sch.t_min, sch) / (4 * math.log(2)) + 7
    assert torch.allclose(bpd, expect, atol=1e-3)


# --- DDPM's discrete bound ---------------------------------------------------------------
def _ddpm_small() -> schedules.DiscreteVP:
    return schedules.DiscreteVP.ddpm_linear(T=200, beta_start=1e-3, beta_end=0.05)


def test_ddpm_vlb_kl_terms_match_closed_form():
    """For x0 ~ N(m, s^2 I) and the exact denoiser, E|x0 - x0_hat(x_t)|^2 = D Var(x0 | x_t) =
    D s^2 sigma_t^2 / (alpha_t^2 s^2 + sigma_t^2), which gives each KL term in closed form."""
    sch = _ddpm_small()
    s, m = 0.3, torch.tensor([0.2, -0.4], dtype=F64)
    g = toy.Gaussian(m, std=s)
    x0 = g.sample(2000, torch.Generator().manual_seed(0))
    terms = L.ddpm_vlb_terms(g.denoiser(sch), sch, x0, generator=1)
    abar, betas, bt = sch.alphas_cumprod, sch.betas, sch.beta_tilde()
    D, expect = 2, 0.0
    for i in range(1, sch.T):
        c = math.sqrt(abar[i - 1]) * betas[i] / (1 - abar[i])
        post_var = s**2 * (1 - abar[i]) / (abar[i] * s**2 + 1 - abar[i])
        expect += float(c**2 * D * post_var / (2 * bt[i]))  # variance 'small': the log / ratio terms vanish
    se = float(terms["kl"].std()) / math.sqrt(len(x0))
    assert abs(float(terms["kl"].mean()) - expect) < 4 * se
    # L_T exactly: KL(N(sqrt(abar_T) x0, (1 - abar_T) I) || N(0, I))
    aT = float(abar[-1])
    lT = 0.5 * (aT * x0.pow(2).sum(1) + D * (1 - aT) - D - D * math.log(1 - aT))
    assert torch.allclose(terms["prior"], lT, rtol=1e-12)
    # fewer, randomly drawn terms: the same expectation
    sub = L.ddpm_vlb_terms(g.denoiser(sch), sch, x0, n_terms=8, generator=2)["kl"]
    se_sub = float(sub.std()) / math.sqrt(len(x0))
    assert abs(float(sub.mean()) - expect) < 4 * se_sub


def test_discretized_gaussian_decoder_against_scipy():
    x = torch.tensor([-1.0, -1 + 2 / 255, 0.0039215686, 1 - 2 / 255, 1.0], dtype=F64)
    mean = torch.tensor([-0.9, 0.1, 0.0, 0.95, 0.97], dtype=F64)
    sd = 0.05
    got = L.discretized_gaussian_log_likelihood(x, mean, math.log(sd))
    n = scipy.stats.norm(mean.numpy(), sd)
    hi, lo = n.cdf(x.numpy() + 1 / 255), n.cdf(x.numpy() - 1 / 255)
    ref = [math.log(hi[0]), *(math.log(h - l) for h, l in zip(hi[1:4], lo[1:4])), math.log(1 - lo[4])]
    assert torch.allclose(got, torch.tensor(ref, dtype=F64), rtol=1e-6)


def test_ddpm_bits_per_dim_runs_on_images():
    sch = _ddpm_small()
    g = toy.Gaussian(torch.zeros(4), std=0.5)
    imgs = ((g.sample(4, torch.Generator().manual_seed(0)).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    bpd = L.ddpm_bits_per_dim(g.denoiser(sch), sch, imgs.reshape(4, 1, 2, 2), n_terms=20)
    assert bpd.shape == (4,) and torch.isfinite(bpd).all() and (bpd > 0).all()
    with pytest.raises(TypeError, match="DiscreteVP"):
        L.ddpm_vlb_terms(g.denoiser(schedules.VP()), schedules.VP(), torch.zeros(2, 4))
