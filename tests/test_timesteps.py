"""Time grids: shape, endpoints, the spacing each promises, and clear errors."""

from __future__ import annotations

import pytest
import torch

from difflab import schedules, timesteps

SCH = schedules.DiscreteVP.ddpm_linear()


@pytest.mark.parametrize("name", ["uniform", "quadratic", "log_snr_uniform", "karras"])
@pytest.mark.parametrize(
    "sch", [SCH, schedules.VP(), schedules.VE(), schedules.EDM(), schedules.RectifiedFlow()], ids=repr
)
def test_continuous_grids(name, sch):
    ts = timesteps.get(name, sch, 7)
    assert ts.shape == (8,) and ts.dtype == torch.float64
    assert (ts[1:] < ts[:-1]).all()
    assert float(ts[0]) == sch.t_max and float(ts[-1]) == pytest.approx(sch.t_min)


def test_log_snr_uniform_is_uniform_in_lambda():
    ts = timesteps.log_snr_uniform(schedules.VP(), 9)
    d = schedules.VP().lam(ts).diff()
    torch.testing.assert_close(d, d.mean().expand_as(d))


def test_karras_spacing():
    """sigma^(1/rho) equally spaced in EDM's own sigma (Karras et al. 2022, eq. 5)."""
    sch = schedules.EDM()
    ts = timesteps.karras(sch, 6, rho=7.0)
    s = (sch.sigma(ts) ** (1 / 7)).diff()
    torch.testing.assert_close(s, s.mean().expand_as(s))


def test_grids_to_zero_end_at_data():
    for name in ["log_snr_uniform", "karras", "uniform"]:
        ts = timesteps.get(name, schedules.VP(), 5, t_end=0.0)
        assert float(ts[-1]) == 0.0 and len(ts) == 6 and (ts.diff() < 0).all()


def test_discrete_spacings_match_diffusers_definitions():
    T, n = 1000, 10
    idx = lambda ts: ((ts[:-1] * T).round() - 1).long().tolist()  # noqa: E731
    # diffusers: leading = arange(0, n) * (T // n) + steps_offset, reversed
    assert idx(timesteps.leading(SCH, n)) == [k * (T // n) + 1 for k in range(n - 1, -1, -1)]
    # trailing = round(arange(T, 0, -T/n)) - 1
    assert idx(timesteps.trailing(SCH, n)) == [round(T - k * T / n) - 1 for k in range(n)]
    # linspace = linspace(0, T-1, n).round(), reversed
    assert idx(timesteps.linspace(SCH, n)) == torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long().tolist()
    for fn in (timesteps.leading, timesteps.trailing, timesteps.linspace):
        assert float(fn(SCH, n)[-1]) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="unknown time grid 'karas'.*valid names"):
        timesteps.get("karas", SCH, 5)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        timesteps.uniform(SCH, 0)
    with pytest.raises(ValueError, match="t_start"):
        timesteps.uniform(SCH, 5, t_start=2.0)
    with pytest.raises(ValueError, match="discrete-time schedule"):
        timesteps.trailing(schedules.VP(), 5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        timesteps.check_grid(torch.tensor([0.5, 0.7, 0.1]), SCH)
    with pytest.raises(ValueError, match="valid range"):
        timesteps.check_grid(torch.tensor([1.5, 0.1]), SCH)
