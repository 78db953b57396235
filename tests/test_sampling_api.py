"""The sampling contract: registry, NFE accounting, callbacks, dtype, batch-size invariance,
thread safety and clear errors on bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from difflab import sample, schedules, solvers, timesteps, toy

SCH = schedules.DiscreteVP.ddpm_linear()
GM = toy.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], stds=0.3)
DEN = GM.denoiser(SCH)
# options that keep the Langevin family quick
QUICK = {"langevin": {"n_steps": 20}, "annealed_langevin": {"n_steps": 3}}


def quick(name: str) -> solvers.Solver:
    return solvers.get(name, **QUICK.get(name, {}))


def test_registry_lists_the_classic_samplers():
    for name in ["ddpm", "ddim", "euler", "heun", "rk4", "euler_maruyama", "langevin", "annealed_langevin", "pc"]:
        assert name in solvers.names()
        s = solvers.get(name)
        assert s.name == name and isinstance(s.order, int) and isinstance(s.stochastic, bool)


@pytest.mark.parametrize("name", solvers.names())
def test_same_samples_at_any_batch_size(name):
    """Bit-for-bit up to float rounding; adaptive solvers control the error of the whole batch
    together (Lu et al. 2022, Alg. 4; Dormand & Prince), so theirs agree within their tolerance."""
    solver = quick(name)
    ts = timesteps.log_snr_uniform(SCH, 8)
    big = sample(solver, DEN, SCH, SCH.prior_sample((9, 2), generator=5), ts, generator=6)
    small = sample(solver, DEN, SCH, SCH.prior_sample((2, 2), generator=5), ts, generator=6)
    tol = 1e-5
    if solver.adaptive:
        tol = 3 * max(solver.rtol * float(big.abs().max()), solver.atol)
    torch.testing.assert_close(small, big[:2], rtol=0, atol=tol)


@pytest.mark.parametrize("name", solvers.names())
def test_one_solver_object_many_threads(name):
    solver = quick(name)
    ts = timesteps.log_snr_uniform(SCH, 6)

    def run(seed: int) -> torch.Tensor:
        return sample(solver, DEN, SCH, SCH.prior_sample((4, 2), generator=seed), ts, generator=seed)

    sequential = [run(s) for s in range(6)]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(run, range(6)))
    for a, b in zip(sequential, parallel):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nfe_callback_dtype():
    ts = timesteps.log_snr_uniform(SCH, 10)
    x_T = SCH.prior_sample((3, 2), generator=0)
    seen = []
    x, nfe = sample("heun", DEN, SCH, x_T, ts, return_nfe=True, callback=seen.append)
    assert nfe == 20 and [s.i for s in seen] == list(range(10)) and seen[-1].nfe == 20
    assert x.dtype == torch.float32
    assert sample("ddim", DEN, SCH, x_T, ts, dtype=torch.float64).dtype == torch.float64
    _, nfe = sample("ddim", DEN, SCH, x_T, timesteps.trailing(SCH, 10), return_nfe=True)
    assert nfe == 10  # the step to t = 0 is the last evaluation's x0 estimate
    _, nfe = sample("ddim", DEN, SCH, x_T, ts, return_nfe=True, final_denoise=True)
    assert nfe == 11


def test_seeded_stochastic_runs_repeat_and_differ_across_seeds():
    ts = timesteps.trailing(SCH, 10)
    x_T = SCH.prior_sample((4, 2), generator=0)
    a = sample("ddpm", DEN, SCH, x_T, ts, generator=1)
    torch.testing.assert_close(a, sample("ddpm", DEN, SCH, x_T, ts, generator=1), rtol=0, atol=0)
    assert not torch.allclose(a, sample("ddpm", DEN, SCH, x_T, ts, generator=2))
    gens = [torch.Generator().manual_seed(k) for k in range(4)]
    assert sample("ddpm", DEN, SCH, x_T, ts, generator=gens).shape == (4, 2)


def test_bad_input():
    x_T = SCH.prior_sample((3, 2), generator=0)
    ts = timesteps.log_snr_uniform(SCH, 5)
    with pytest.raises(ValueError, match="unknown solver 'dpm\\+\\+'; valid names: .*ddim"):
        sample("dpm++", DEN, SCH, x_T, ts)
    with pytest.raises(ValueError, match="solver 'ddim' has no option 'etaa'"):
        solvers.get("ddim", etaa=1)
    with pytest.raises(ValueError, match="eta must be in \\[0, 1\\], got 2"):
        solvers.get("ddim", eta=2)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample("ddim", DEN, SCH, x_T, ts.flip(0))
    with pytest.raises(ValueError, match="valid range"):
        sample("ddim", DEN, SCH, x_T, torch.tensor([1.2, 0.5]))
    bad = x_T.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="x_T contains 1 non-finite"):
        sample("ddim", DEN, SCH, bad, ts)
    with pytest.raises(ValueError, match="denoiser returned \\(3, 3\\) for input of shape \\(3, 2\\)"):
        sample("ddim", lambda x, t: torch.zeros(3, 3), SCH, x_T, ts)
    with pytest.raises(FloatingPointError, match="non-finite values at t = 1"):
        sample("ddim", lambda x, t: x * float("inf"), SCH, x_T, ts)
    with pytest.raises(ValueError, match="one torch.Generator per sample \\(3\\), got 2"):
        sample("ddpm", DEN, SCH, x_T, ts, generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="dtype must be"):
        sample("ddim", DEN, SCH, x_T, ts, dtype=torch.int64)
    with pytest.raises(ValueError, match="pc predictor must be one of"):
        solvers.get("pc", predictor="heun")
    with pytest.raises(ValueError, match="score is undefined"):
        sample(quick("langevin"), DEN, SCH, x_T, timesteps.trailing(SCH, 3))
