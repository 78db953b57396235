"""Guidance on exact oracles: a class-conditional Gaussian mixture gives the exact
conditional denoiser, unconditional denoiser and noisy classifier log p(y | x_t)."""

from __future__ import annotations

import pytest
import torch

from difflab import sample, schedules, timesteps, toy
from difflab.guidance import cfg, classifier_guidance

SCH = schedules.DiscreteVP.ddpm_linear()
GM = toy.GaussianMixture(
    [0.2, 0.3, 0.25, 0.25],
    [[-2.0, 0.0], [-1.0, 1.5], [2.0, 0.5], [1.0, -1.5]],
    stds=torch.tensor([0.3, 0.5, 0.4, 0.2]),
    labels=[0, 0, 1, 1],
)
DEN = GM.denoiser(SCH)


def test_class_conditional_oracle_is_consistent():
    """p(x | y) P(y) summed over y is p(x); the classifier is Bayes' rule."""
    x = torch.randn(20, 2, dtype=torch.float64)
    t = 0.3
    lp = torch.stack([GM.log_prob_t(x, t, SCH, y) + GM.weights[GM.labels == y].sum().log() for y in (0, 1)])
    torch.testing.assert_close(torch.logsumexp(lp, 0), GM.log_prob_t(x, t, SCH))
    torch.testing.assert_close(GM.class_log_prob(x, t, SCH, 0), lp[0] - torch.logsumexp(lp, 0))


def test_cfg_w0_is_conditional_and_batched():
    calls = []

    def counting(x, t, y=None):
        calls.append(x.shape[0])
        return DEN(x, t, y=y)

    x = torch.randn(6, 2)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    torch.testing.assert_close(cfg(counting, 0.0)(x, 0.4, y=y), DEN(x, 0.4, y=y))
    calls.clear()
    out = cfg(counting, 2.0)(x, 0.4, y=y)
    assert calls == [12]  # one network call on the doubled batch
    x0_c, x0_u = DEN(x, 0.4, y=y), DEN(x, 0.4, y=-1)
    torch.testing.assert_close(out, x0_c + 2.0 * (x0_c - x0_u))
    torch.testing.assert_close(cfg(counting, 3.0, convention="s")(x, 0.4, y=y), out)


def test_cfg_w0_sampling_equals_conditional_sampling():
    x_T = SCH.prior_sample((64, 2), generator=0)
    y = torch.arange(64) % 2
    ts = timesteps.log_snr_uniform(SCH, 15)
    for solver in ["ddim", "heun", "ddpm"]:
        a = sample(solver, cfg(DEN, 0.0), SCH, x_T, ts, generator=1, y=y)
        b = sample(solver, DEN, SCH, x_T, ts, generator=1, y=y)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_guidance_interval():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    g = cfg(DEN, 4.0, interval=(0.2, 0.6))
    torch.testing.assert_close(g(x, 0.9, y=y), DEN(x, 0.9, y=y))
    assert not torch.allclose(g(x, 0.4, y=y), DEN(x, 0.4, y=y))


def test_classifier_guidance_with_exact_classifier_is_conditional():
    """grad log p_t(x | y) = grad log p_t(x) + grad log p(y | x_t): at s = 1 the guided
    unconditional model is exactly the conditional one, for ODE and ancestral solvers."""
    guided = classifier_guidance(lambda x, t: DEN(x, t), lambda x, t, y: GM.class_log_prob(x, t, SCH, y), SCH, 1.0)
    x = torch.randn(10, 2, dtype=torch.float64)
    y = torch.arange(10) % 2
    for t in (0.05, 0.3, 0.9):
        torch.testing.assert_close(guided(x, t, y=y), DEN(x, t, y=y), rtol=1e-8, atol=1e-8)
    x_T = SCH.prior_sample((200, 2), generator=2)
    yy = torch.arange(200) % 2
    for solver in ["dpmpp_2m", "ddpm"]:
        ts = timesteps.log_snr_uniform(SCH, 20)
        a = sample(solver, guided, SCH, x_T, ts, generator=3, dtype=torch.float64, y=yy)
        b = sample(solver, DEN, SCH, x_T, ts, generator=3, dtype=torch.float64, y=yy)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        comps = GM.component_of(a)
        assert (GM.labels[comps] == yy).float().mean() > 0.97


def test_stronger_guidance_sharpens_classes():
    """Guidance trades diversity for fidelity: with w > 0 the exact classifier is more
    confident about the samples' labels."""
    x_T = SCH.prior_sample((400, 2), generator=4)
    y = torch.arange(400) % 2
    ts = timesteps.log_snr_uniform(SCH, 20)
    conf = []
    for w in (0.0, 3.0):
        x = sample("dpmpp_2m", cfg(DEN, w), SCH, x_T, ts, y=y).double()
        conf.append(float(GM.class_log_prob(x, 0.0, SCH, y).mean()))
    assert conf[1] > conf[0]


def test_bad_input():
    with pytest.raises(ValueError, match="guidance scale must be a finite number, got nan"):
        cfg(DEN, float("nan"))
    with pytest.raises(ValueError, match="finite number, got inf"):
        classifier_guidance(DEN, GM.class_log_prob, SCH, float("inf"))
    with pytest.raises(ValueError, match="labels must be in \\[0, 2\\)"):
        DEN(torch.zeros(2, 2), 0.5, y=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="cfg needs the conditioning \\['y'\\]"):
        cfg(DEN, 1.0)(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="convention must be"):
        cfg(DEN, 1.0, convention="x")
