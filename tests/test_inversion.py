"""Deterministic inversion: exact against the Gaussian flow, reconstruction error falling with
steps for every deterministic solver, slerp identities, interpolation strips, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from difflab import inversion, schedules, solvers, timesteps, toy

F64 = torch.float64
MIX = toy.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], stds=[0.3, 0.5])
SCH = schedules.DiscreteVP.ddpm_linear()
DEN = MIX.denoiser(SCH)
X = MIX.sample(32, torch.Generator().manual_seed(0))

STEP_SOLVERS = [n for n in solvers.names() if not solvers.get(n).stochastic and not solvers.get(n).adaptive]
ADAPTIVE = [n for n in solvers.names() if not solvers.get(n).stochastic and solvers.get(n).adaptive]


def test_adaptive_encoding_is_the_exact_gaussian_flow():
    g = toy.Gaussian(torch.tensor([0.5, -1.0, 0.0]), std=torch.tensor([0.2, 1.0, 0.5]))
    sch = schedules.VP()
    x = g.sample(8, torch.Generator().manual_seed(1))
    ts = timesteps.uniform(sch, 10)  # ends at t_min > 0: encoding starts there
    z = inversion.encode(None, g.denoiser(sch), sch, x, ts, rtol=1e-8, atol=1e-8)
    assert torch.allclose(z, g.flow(x, sch.t_min, sch.t_max, sch), atol=1e-6)


@pytest.mark.parametrize("name", STEP_SOLVERS)
def test_reconstruction_error_falls_with_steps(name):
    errs = []
    for steps in (8, 32):
        ts = timesteps.log_snr_uniform(SCH, steps, t_end=0)
        rec = inversion.reconstruct(name, DEN, SCH, X, ts, dtype=F64)
        assert rec.z.shape == X.shape and rec.nfe_encode > 0
        errs.append(rec.mean_error)
    assert errs[1] < 0.5 * errs[0], errs


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_solvers_invert_or_say_they_cannot(name):
    ts = timesteps.log_snr_uniform(SCH, 10, t_end=0)
    try:
        rec = inversion.reconstruct(name, DEN, SCH, X, ts, dtype=F64)
    except ValueError as e:
        assert "cannot run towards the noise" in str(e)
    else:
        assert rec.mean_error < 1e-3


def test_adaptive_ode_round_trip_reaches_the_t_min_floor():
    ts = timesteps.log_snr_uniform(SCH, 10, t_end=0)
    rec = inversion.reconstruct(None, DEN, SCH, X, ts)
    # the only error left: x0 is taken as the state at t_min (sigma = 0.01) and denoised at the end
    assert rec.mean_error < 5e-4


def test_slerp_identities():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = inversion.slerp(e1, e2, 0.5)
    assert torch.allclose(mid, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    path = inversion.slerp(e1 * 3, e2 * 3, torch.linspace(0, 1, 7))
    assert path.shape == (7, 1, 2)
    assert torch.allclose(path.norm(dim=-1), torch.full((7, 1), 3.0))  # stays on the sphere
    assert torch.allclose(path[0], e1 * 3) and torch.allclose(path[-1], e2 * 3)
    assert torch.allclose(inversion.slerp(e1, 2 * e1, 0.5), 1.5 * e1)  # parallel: linear
    with pytest.raises(ValueError, match="differ in shape"):
        inversion.slerp(e1, torch.zeros(1, 3), 0.5)


def test_interpolation_strip(tmp_path):
    gm = toy.GaussianMixture([0.5, 0.5], [[0.5, -0.5, 0.5, -0.5], [-0.5, 0.5, -0.5, 0.5]], stds=[0.2, 0.2])
    imgs = gm.sample(2, torch.Generator().manual_seed(3)).float().reshape(2, 1, 2, 2)
    ts = timesteps.log_snr_uniform(SCH, 20, t_end=0)
    frames = inversion.interpolate("dpmpp_2m", gm.denoiser(SCH), SCH, imgs[0], imgs[1], ts, n=5)
    assert frames.shape == (5, 1, 2, 2)
    assert torch.allclose(frames[0], imgs[0], atol=0.05) and torch.allclose(frames[-1], imgs[1], atol=0.05)
    path = inversion.save_interpolation_strip(frames, tmp_path / "strip.png", scale=4)
    with Image.open(path) as im:
        assert im.size == ((5 * 3 + 1) * 4, 4 * 4) and im.mode == "L"


def test_inversion_errors():
    ts = timesteps.log_snr_uniform(SCH, 10, t_end=0)
    with pytest.raises(ValueError, match="deterministic solver"):
        inversion.encode("ddpm", DEN, SCH, X, ts)
    with pytest.raises(ValueError, match="no ODE step to invert"):
        inversion.encode("ddim", DEN, SCH, X, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="decreasing"):
        inversion.encode("ddim", DEN, SCH, X, ts.flip(0))
