"""Every loss at the exact denoiser of Gaussian data reaches its analytic minimum; perturbing
the denoiser raises it.

For x0 ~ N(mu, diag(l)) and x_t = alpha x0 + sigma eps, Var(x0_d | x_t) = l_d sigma^2 / (alpha^2 l_d + sigma^2),
and every target's error is sqrt(c_target(t)) times the x0 error, so the minimum of a weighted
denoising loss at time t is w(t) * mean_d Var(x0_d | x_t) (losses.py docstring).
"""

import math

import pytest
import torch

from difflab import losses, schedules, toy
from difflab.denoiser import Denoiser
from difflab.parameterization import from_x0

F64 = torch.float64
STDS = torch.tensor([0.3, 0.7, 1.0, 1.5], dtype=F64)
MU = torch.tensor([0.5, -0.2, 0.0, 0.3], dtype=F64)
N = 10000


def gaussian():
    return toy.Gaussian(MU, std=STDS)


def post_var(sch, t):
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    l = STDS**2
    return l * s**2 / (a**2 * l + s**2)


def draws(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = gaussian().sample(N, g)
    return x0, torch.randn(N, 4, generator=g, dtype=F64)


CASES = [
    # (schedule, target, weighting, times)
    (schedules.VP(), "eps", "uniform", (0.05, 0.3, 0.8)),
    (schedules.VP(), "x0", "uniform", (0.05, 0.5)),
    (schedules.VP(), "v", "uniform", (0.1, 0.7)),
    (schedules.VP.cosine(), "v", "min_snr", (0.05, 0.4, 0.9)),
    (schedules.VP(), "eps", "snr", (0.1, 0.5)),
    (schedules.VP(), "eps", "likelihood", (0.05, 0.5)),
    (schedules.SubVP(), "score", "likelihood", (0.2, 0.6)),
    (schedules.EDM(), "x0", "edm", (0.001, 0.01, 0.2)),
    (schedules.VE(0.01, 10.0), "score", "ncsn", (0.1, 0.5, 0.9)),
    (schedules.RectifiedFlow(), "velocity", "uniform", (0.1, 0.5, 0.9)),
    (schedules.DiscreteVP.ddpm_linear(), "eps", "uniform", (0.02, 0.5)),
]


@pytest.mark.parametrize(("sch", "target", "weighting", "times"), CASES, ids=lambda c: str(c))
def test_denoising_loss_minimum(sch, target, weighting, times):
    den = gaussian().denoiser(sch)
    x0, noise = draws()
    for t in times:
        tb = torch.full((N,), t, dtype=F64)
        got = losses.denoising_loss(den, x0, tb, noise, sch, target, weighting).mean()
        w = losses.x0_weight(weighting, target, sch, torch.tensor(t, dtype=F64))
        want = w * post_var(sch, t).mean()
        assert float(got) == pytest.approx(float(want), rel=0.03), (t, float(got), float(want))
        shift = 0.05 * torch.sqrt(post_var(sch, t).mean())
        worse = losses.denoising_loss(lambda x, t_, d=den, c=shift: d(x, t_) + c, x0, tb, noise, sch, target, weighting)
        assert float(worse.mean()) > float(got) * (1 + 1e-3)


def test_dsm_and_flow_matching_helpers():
    ve = schedules.VE(0.01, 10.0)
    x0, noise = draws(1)
    tb = torch.full((N,), 0.4, dtype=F64)
    got = losses.dsm_loss(gaussian().denoiser(ve), x0, tb, noise, ve).mean()
    # lambda(sigma) = sigma^2 on the score error = the eps-error MSE = SNR * Var(x0 | x_t)
    assert float(got) == pytest.approx(float(ve.snr(0.4) * post_var(ve, 0.4).mean()), rel=0.03)
    rf = schedules.RectifiedFlow()
    got = losses.flow_matching_loss(gaussian().denoiser(rf), x0, tb, noise, rf).mean()
    # rectified-flow velocity error (eps - x0) = -(1/sigma) x0 error: c = 1 / t^2
    assert float(got) == pytest.approx(float(post_var(rf, 0.4).mean() / 0.4**2), rel=0.03)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_through_denoiser_network(prediction):
    """A Denoiser whose network outputs the exact prediction gives the same loss (raw path, conversions)."""
    sch = schedules.VP()
    exact = gaussian().denoiser(sch)

    def net(x, t_in):
        return from_x0(prediction, exact(x, t_in), x, t_in, sch)

    model = Denoiser(net, sch, prediction=prediction, time_input="t")
    x0, noise = draws(2)
    tb = torch.full((N,), 0.3, dtype=F64)
    for target in ("eps", "v", "x0"):
        a = losses.denoising_loss(model, x0, tb, noise, target=target).mean()
        b = losses.denoising_loss(exact, x0, tb, noise, sch, target=target).mean()
        assert float(a) == pytest.approx(float(b), rel=1e-8)


def _vlb_model(sch, learned, eps_shift=0.0, v_shift=0.0):
    """A DDPM 'network' outputting the exact eps and, if learned, the optimal variance channel."""
    exact = gaussian().denoiser(sch)
    bt_all = sch.beta_tilde()
    be_all = sch.betas

    def net(x, t_in):
        t = t_in.to(F64)
        eps = from_x0("eps", exact(x, t), x, t, sch) + eps_shift
        if not learned:
            return eps
        i = torch.round(t * sch.T - 1).long()
        abar = sch.alphas_cumprod
        c1 = abar[i - 1].sqrt() * be_all[i] / (1 - abar[i])
        var_opt = bt_all[i][:, None] + c1[:, None] ** 2 * post_var(sch, float(t[0])).expand(
            len(t), -1
        )  # one time per batch here
        frac = (var_opt.log() - bt_all[i][:, None].log()) / (be_all[i][:, None].log() - bt_all[i][:, None].log())
        return torch.cat([eps, 2 * frac - 1 + v_shift], 1)

    return Denoiser(net, sch, prediction="eps", time_input="t", learned_variance=learned)


@pytest.mark.parametrize("learned", [False, True])
def test_vlb_minimum(learned):
    sch = schedules.DiscreteVP.ddpm_linear()
    x0, noise = draws(3)
    for i in (5, 100, 600):
        t = torch.full((N,), (i + 1) / sch.T, dtype=F64)
        got = losses.vlb_terms(_vlb_model(sch, learned), x0, t, noise).mean()
        abar, bt = sch.alphas_cumprod, float(sch.beta_tilde()[i])
        c1 = float(abar[i - 1].sqrt() * sch.betas[i] / (1 - abar[i]))
        V = post_var(sch, (i + 1) / sch.T)
        if learned:  # KL at the optimal variance bt + c1^2 V: 0.5 log(var / bt) per dim
            want = (0.5 * torch.log((bt + c1**2 * V) / bt)).mean() / math.log(2)
        else:
            want = (0.5 * c1**2 * V / bt).mean() / math.log(2)
        assert float(got) == pytest.approx(float(want), rel=0.03), (i, float(got), float(want))
        for kw in ({"eps_shift": 0.05}, {"v_shift": 0.2} if learned else {"eps_shift": -0.05}):
            worse = losses.vlb_terms(_vlb_model(sch, learned, **kw), x0, t, noise).mean()
            assert float(worse) > float(got) * (1 + 1e-6)


def test_vlb_decoder_term_and_prior():
    sch = schedules.DiscreteVP.ddpm_linear()
    x0 = torch.linspace(-1, 1, 256, dtype=F64)[:, None].repeat(1, 4)[:64]
    t = torch.full((64,), 1 / sch.T, dtype=F64)
    nll = losses.vlb_terms(_vlb_model(sch, False), x0, t, torch.zeros_like(x0))
    assert (nll > 0).all() and torch.isfinite(nll).all()
    kl = losses.prior_kl(sch, x0)
    assert (kl >= 0).all() and float(kl.max()) < 1e-4


def test_hybrid_stops_mean_gradient_in_vlb():
    sch = schedules.DiscreteVP.ddpm_linear(T=100)
    scale = torch.nn.Parameter(torch.tensor(0.9, dtype=F64))
    var_p = torch.nn.Parameter(torch.tensor(0.1, dtype=F64))

    def net(x, t_in):
        return torch.cat([scale * x, var_p.expand_as(x)], 1)

    model = Denoiser(net, sch, prediction="eps", time_input="t", learned_variance=True)
    x0, _ = draws(4)
    grads = {}
    for kind in ("hybrid", "denoising"):
        loss = losses.DiffusionLoss(sch, kind=kind)
        scale.grad = var_p.grad = None
        loss(model, x0[:512], generator=torch.Generator().manual_seed(0)).backward()
        grads[kind] = (float(scale.grad), None if var_p.grad is None else float(var_p.grad))
    assert grads["hybrid"][0] == pytest.approx(grads["denoising"][0], rel=1e-12)
    assert grads["hybrid"][1] != 0 and grads["denoising"][1] in (None, 0.0)


def test_importance_sampler():
    imp = losses.ImportanceSampler(T=4, history=2, uniform_prob=0.0)
    assert torch.allclose(imp.probs(), torch.full((4,), 0.25, dtype=F64))
    for _ in range(2):
        imp.update(torch.arange(4), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    assert torch.allclose(imp.probs(), torch.tensor([1, 1, 2, 4], dtype=F64) / 8)
    sch = schedules.DiscreteVP.ddpm_linear(T=50)
    loss = losses.DiffusionLoss(sch, kind="vlb", time_sampling="importance")
    model = Denoiser(lambda x, t_in: torch.cat([0.5 * x, 0 * x], 1), sch, time_input="t", learned_variance=True)
    x0, _ = draws(5)
    for _ in range(3):
        assert torch.isfinite(loss(model, x0[:256], generator=torch.Generator().manual_seed(1)))
    assert int(loss.importance.counts.sum()) == 3 * 256


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    edm = schedules.EDM()
    t = losses.sample_times("lognormal", edm, 50000, g)
    ls = edm.log_sigma(t)
    assert float(ls.mean()) == pytest.approx(-1.2, abs=0.03) and float(ls.std()) == pytest.approx(1.2, abs=0.03)
    vp = schedules.VP()
    t = losses.sample_times("lognormal", vp, 50000, g)  # ln(sigma/alpha) = -lambda
    assert float((-vp.lam(t)).mean()) == pytest.approx(-1.2, abs=0.05)
    d = schedules.DiscreteVP.ddpm_linear(T=10)
    t = losses.sample_times("uniform", d, 1000, g)
    assert set((t * 10).round().long().tolist()) == set(range(1, 11))
    ncsn = schedules.VE.ncsn(L=5)
    t = losses.sample_times("levels", ncsn, 1000, g)
    assert set((t * 4).round().long().tolist()) == set(range(5))


def test_bad_names():
    with pytest.raises(ValueError, match="weighting 'snrr'"):
        losses.DiffusionLoss(schedules.VP(), weighting="snrr")
    with pytest.raises(ValueError, match="DiscreteVP"):
        losses.DiffusionLoss(schedules.VP(), kind="hybrid")
    with pytest.raises(ValueError, match="levels"):
        losses.sample_times("levels", schedules.VP(), 3)
