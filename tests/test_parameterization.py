"""Conversions between predictions round-trip, and Denoiser turns any of them into x0_hat."""

from __future__ import annotations

import itertools

import pytest
import torch

from difflab import Denoiser, parameterization, schedules, toy
from difflab.parameterization import PREDICTIONS, convert, from_x0, to_x0

SCHEDULES = [
    schedules.DiscreteVP.ddpm_linear(),
    schedules.VP.cosine(),
    schedules.VE(),
    schedules.EDM(),
    schedules.RectifiedFlow(),
]


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
@pytest.mark.parametrize("src,dst", list(itertools.permutations(PREDICTIONS, 2)))
def test_round_trip(sch, src, dst):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 6, dtype=torch.float64)
    out = torch.randn(6, 3, generator=g, dtype=torch.float64)
    back = convert(convert(out, src, dst, x, t, sch), dst, src, x, t, sch)
    torch.testing.assert_close(back, out, rtol=1e-9, atol=1e-9)


def test_targets_are_the_definitions():
    sch = schedules.VP()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    a, s = float(sch.alpha(0.4)), float(sch.sigma(0.4))
    da, ds = float(sch.d_alpha(0.4)), float(sch.d_sigma(0.4))
    x = a * x0 + s * eps
    expect = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s, "velocity": da * x0 + ds * eps}
    for k, v in expect.items():
        torch.testing.assert_close(from_x0(k, x0, x, t, sch), v)
        torch.testing.assert_close(to_x0(k, v, x, t, sch), x0)


def test_rectified_flow_velocity_is_eps_minus_x0():
    sch = schedules.RectifiedFlow()
    x0, eps = torch.randn(2, 4, 2, dtype=torch.float64)
    x = sch.perturb(x0, 0.3, eps)
    torch.testing.assert_close(from_x0("velocity", x0, x, 0.3, sch), eps - x0)


@pytest.mark.parametrize("prediction", [*PREDICTIONS, "edm"])
def test_denoiser_wraps_an_exact_network(prediction):
    """A 'network' returning the exact prediction of a Gaussian mixture gives the exact x0_hat."""
    gm = toy.GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 1.0]], stds=0.5)
    sch = schedules.DiscreteVP.ddpm_linear()
    seen = {}

    def net(x, t_in):
        t = (t_in + 1) / sch.T  # the network sees its index
        seen["t_in"] = t_in
        if prediction == "edm":
            # invert EDM's preconditioning of the exact x0 in the scale-free frame
            alpha = sch.alpha(t)[:, None]
            sig = (sch.sigma(t) / sch.alpha(t))[:, None]
            c_skip, c_out, c_in, _ = parameterization.edm_precond(sig)
            xs = x / c_in
            return (gm.posterior_mean(xs * alpha, t, sch) - c_skip * xs) / c_out
        return from_x0(prediction, gm.posterior_mean(x, t, sch), x, t, sch)

    if prediction == "edm":
        sch_edm = sch

        def net_edm(x_in, c_noise):  # EDM nets see c_noise; recover t from it
            sig = torch.exp(4 * c_noise)
            t = sch_edm.t_of_lam(-sig.log())
            alpha = sch_edm.alpha(t)[:, None]
            c_skip, c_out, c_in, _ = parameterization.edm_precond(sig[:, None])
            xs = x_in / c_in
            return (gm.posterior_mean(xs * alpha, t, sch_edm) - c_skip * xs) / c_out

        den = Denoiser(net_edm, sch, prediction="edm")
    else:
        den = Denoiser(net, sch, prediction=prediction)
    x = torch.randn(7, 2, dtype=torch.float64)
    torch.testing.assert_close(den(x, 0.3), gm.posterior_mean(x, 0.3, sch), rtol=1e-7, atol=1e-7)
    if prediction != "edm":
        torch.testing.assert_close(seen["t_in"], torch.full((7,), 299.0, dtype=torch.float64))


def test_denoiser_errors():
    sch = schedules.VP()
    with pytest.raises(ValueError, match="unknown prediction 'epsilon'"):
        Denoiser(lambda x, t: x, sch, prediction="epsilon")
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        Denoiser(lambda x, t: x, sch, time_input="index")
    den = Denoiser(lambda x, t: torch.cat([x, x], 1), sch)
    with pytest.raises(ValueError, match="learned_variance=True"):
        den(torch.zeros(2, 3), 0.5)
    den = Denoiser(lambda x, t: torch.cat([x, x], 1), sch, learned_variance=True)
    assert den(torch.zeros(2, 3), 0.5).shape == (2, 3)
