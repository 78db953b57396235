"""Base + refiner hand-over: exact on Gaussian-mixture oracles, and clear errors for misfits."""

import pytest
import torch

from difflab import sample, schedules, timesteps, toy
from difflab.denoiser import Denoiser
from difflab.experts import Handover, same_schedule
from difflab.nn import UNet

DDPM = schedules.DiscreteVP.ddpm_linear()


@pytest.mark.parametrize("solver", ["dpmpp_2m", "ddpm", "heun", "parallel"])
def test_handover_between_two_copies_of_one_denoiser_is_sampling_with_it(solver):
    gm = toy.GaussianMixture.random(2, 4, seed=3)
    den = gm.denoiser(DDPM)
    ts = timesteps.get("trailing", DDPM, 12)
    x_T = DDPM.prior_sample((64, 2), generator=0)
    one = sample(solver, den, DDPM, x_T, ts, generator=1)
    two = sample(solver, Handover(den, gm.denoiser(DDPM), 0.2), DDPM, x_T, ts, generator=1)
    assert torch.equal(one, two)


def test_the_refiner_denoises_exactly_below_the_switch():
    a, b = toy.GaussianMixture.random(2, 3, seed=1), toy.GaussianMixture.random(2, 3, seed=2)
    seen = []

    def spy(gm, name):
        den = gm.denoiser(DDPM)

        def f(x, t, **c):
            seen.append((name, torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).clone()))
            return den(x, t, **c)

        return f

    h = Handover(spy(a, "base"), spy(b, "refiner"), 0.3)
    ts = timesteps.get("trailing", DDPM, 10)
    sample("ddim", h, DDPM, DDPM.prior_sample((5, 2), generator=0), ts)
    for name, t in seen:
        assert ((t < 0.3) == (name == "refiner")).all()
    assert [n for n, _ in seen].count("refiner") == 2  # t = 0.2 and 0.1 (the final step to t = 0)
    # a batch of mixed times is split per sample and each expert gives its own exact answer
    x = torch.randn(6, 2)
    t = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.3, 0.29], dtype=torch.float64)
    out = h(x, t)
    ref = torch.where((t < 0.3)[:, None], b.denoiser(DDPM)(x, t), a.denoiser(DDPM)(x, t))
    assert torch.allclose(out, ref)


def _den(schedule, **unet):
    net = UNet(in_channels=1, channels=8, channel_mults=(1,), num_res_blocks=1, image_size=unet.pop("size", 8), **unet)
    return Denoiser(net, schedule)


def test_a_refiner_of_another_schedule_or_shape_is_an_error():
    base = _den(DDPM)
    with pytest.raises(ValueError, match="refiner was trained on the schedule"):
        Handover(base, _den(schedules.DiscreteVP.cosine()), 0.2)
    with pytest.raises(ValueError, match=r"refiner was built for data of shape \(1, 16, 16\)"):
        Handover(base, _den(DDPM, size=16), 0.2)
    with pytest.raises(ValueError, match="t_switch"):
        Handover(base, _den(DDPM), 1.5)
    Handover(base, _den(schedules.DiscreteVP.ddpm_linear()), 0.2)  # an equal schedule is fine


def test_same_schedule():
    assert same_schedule(schedules.VP(), schedules.VP())
    assert not same_schedule(schedules.VP(), schedules.VP(beta_max=10.0))
    assert not same_schedule(schedules.VP(), schedules.SubVP())
    assert not same_schedule(schedules.DiscreteVP.ddpm_linear(T=1000), schedules.DiscreteVP.ddpm_linear(T=500))
