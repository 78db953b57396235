"""The accelerated solvers (issue #3): equality with DDIM at order 1, orders of the variants the
convergence harness does not run, parallel == sequential, adaptive solvers within tolerance,
options and their errors.  All checks are against exact mathematics (toy.Gaussian.flow)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from difflab import sample, schedules, solvers, timesteps, toy
from difflab.denoiser import dynamic_thresholding
from difflab.solvers.base import Context
from difflab.solvers.dpm_solver import singlestep_orders

F64 = torch.float64


@pytest.fixture(scope="module")
def gauss():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    cov = q @ torch.diag(torch.tensor([0.1, 0.7, 1.5], dtype=F64) ** 2) @ q.T
    return toy.Gaussian([0.5, -1.0, 0.3], cov=cov)


@pytest.fixture(scope="module")
def mixture():
    return toy.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], stds=torch.tensor([0.2, 0.5], dtype=F64))


def _run(name_or_solver, gm, sch, x_T, ts, **kw):
    solver = solvers.get(name_or_solver) if isinstance(name_or_solver, str) else name_or_solver
    return sample(solver, gm.denoiser(sch), sch, x_T, ts, dtype=F64, **kw)


# --- order 1 is DDIM ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, opts",
    [
        ("plms", {"ab_order": 1}),
        ("deis", {"order": 1}),
        ("unipc", {"predictor_order": 1, "corrector": False}),
        ("unipc", {"predictor_order": 1, "corrector": False, "prediction": "eps"}),
        ("dpm_solver", {"order": 1}),
        ("dpm_solver", {"order": 1, "prediction": "x0"}),
        ("dpmpp_2m", {"lower_order_final": True}),  # 2 steps: orders 1, 1
        ("dpmpp_3m", {"lower_order_final": True}),
        ("parallel", {"solver": "ddim", "tol": 0.0}),
    ],
)
def test_order_one_reproduces_ddim(name, opts, mixture):
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((16, 2), generator=1, dtype=F64)
    steps = 2 if opts.get("lower_order_final") else 7
    ts = timesteps.log_snr_uniform(sch, steps)
    ref = _run("ddim", mixture, sch, x_T, ts)
    torch.testing.assert_close(_run(solvers.get(name, **opts), mixture, sch, x_T, ts), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "deis", "unipc", "plms", "dpmpp_2s"])
def test_first_step_is_ddim(name, mixture):
    """Multistep methods warm up with DDIM; dpmpp_2s's first stage is a DDIM half step."""
    sch = schedules.VP()
    x_T = sch.prior_sample((8, 2), generator=2, dtype=F64)
    ts = timesteps.log_snr_uniform(sch, 1, t_end=0.3)
    if name == "dpmpp_2s":
        ts = timesteps.log_snr_uniform(sch, 2, t_end=0.3)[:2]
        lam = sch.lam(ts)
        mid = sch.t_of_lam((lam[0] + lam[1]) / 2).reshape(1)
        ref = _run("ddim", mixture, sch, x_T, torch.cat([ts[:1], mid]))
        cap = []
        _run(name, mixture, sch, x_T, ts, callback=lambda info: cap.append(info))
        den = mixture.denoiser(sch)
        torch.testing.assert_close(cap[0].x0, den(ref, float(mid)), rtol=1e-10, atol=1e-10)
        return
    torch.testing.assert_close(_run(name, mixture, sch, x_T, ts), _run("ddim", mixture, sch, x_T, ts))


def test_sde_solver_first_step_is_ddpm_ancestral(mixture):
    """SDE-DPM-Solver++ of first order is DDIM with eta = 1, noise for noise."""
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((8, 2), generator=3, dtype=F64)
    ts = timesteps.log_snr_uniform(sch, 3)
    a = _run(solvers.get("dpmpp_2m_sde", lower_order_final=True), mixture, sch, x_T, ts[:2], generator=7)
    b = _run(solvers.get("ddim", eta=1.0), mixture, sch, x_T, ts[:2], generator=7)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# --- orders of the variants ---------------------------------------------------------------------
def _slope(solver, gm, steps=(16, 32, 64)):
    sch = schedules.VP()
    x_T = sch.prior_sample((32, 3), generator=4, dtype=F64)
    t_end = 0.02
    ref = gm.flow(x_T, sch.t_max, t_end, sch)
    errs = [
        float((_run(solver, gm, sch, x_T, timesteps.log_snr_uniform(sch, n, t_end=t_end)) - ref).norm(dim=1).mean())
        for n in steps
    ]
    return -float(np.polyfit(np.log(steps), np.log(errs), 1)[0])


@pytest.mark.parametrize(
    "name, opts",
    [
        ("deis", {"order": 2}),
        ("plms", {"ab_order": 2}),
        ("plms", {"ab_order": 3}),  # pseudo methods are second order whatever the combination
        ("dpm_solver", {"order": 2}),
        ("dpm_solver", {"order": 3, "prediction": "x0"}),
        ("dpmpp_2m", {"solver_type": "taylor"}),
        ("unipc", {"predictor_order": 1}),
        ("unipc", {"predictor_order": 2, "corrector": False}),
        ("unipc", {"variant": "bh2"}),
        ("gauss_ei", {"ab_order": 1}),
        ("gauss_ei", {"ab_order": 2}),
        ("gauss_ei", {"ab_order": 2, "corrector": True}),
        ("parallel", {"solver": "unipc", "tol": 1e-9}),
    ],
)
def test_variant_orders(name, opts, gauss):
    solver = solvers.get(name, **opts)
    p = _slope(solver, gauss)
    assert solver.order - 0.35 < p < solver.order + 0.8, f"{name}{opts}: fitted order {p:.2f}, declared {solver.order}"


def test_pndm_spends_four_evaluations_per_prk_step(gauss):
    sch = schedules.VP()
    x_T = sch.prior_sample((4, 3), generator=5, dtype=F64)
    _, nfe = _run("pndm", gauss, sch, x_T, timesteps.uniform(sch, 6), return_nfe=True)
    assert nfe == 3 * 4 + 3


def test_singlestep_orders_spend_the_budget():
    for nfe in range(1, 30):
        for order in (1, 2, 3):
            orders = singlestep_orders(nfe, order)
            assert sum(orders) == nfe and max(orders) <= order
    assert singlestep_orders(9) == [3, 3, 2, 1] and singlestep_orders(10) == [3, 3, 3, 1]


def test_dpm_solver_orders_option_counts_evaluations(gauss):
    sch = schedules.VP()
    x_T = sch.prior_sample((4, 3), generator=6, dtype=F64)
    orders = singlestep_orders(8)
    _, nfe = _run(
        solvers.get("dpm_solver", orders=tuple(orders)),
        gauss,
        sch,
        x_T,
        timesteps.log_snr_uniform(sch, len(orders)),
        return_nfe=True,
    )
    assert nfe == 8


# --- parallel -----------------------------------------------------------------------------------
@pytest.mark.parametrize("inner", ["ddim", "dpmpp_2m", "unipc", "deis"])
def test_parallel_equals_sequential_within_tolerance(inner, mixture):
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((32, 2), generator=8, dtype=F64)
    ts = timesteps.log_snr_uniform(sch, 40, t_end=0)
    seq = _run(inner, mixture, sch, x_T, ts)
    for tol in (1e-4, 1e-7):
        par = solvers.get("parallel", solver=inner, tol=tol, window=10)
        res = par.solve(Context(mixture.denoiser(sch), sch, ts), x_T)
        assert float((res.x - seq).abs().max()) < 100 * tol
        assert res.rounds < 40 <= res.evals
    x, rounds = _run(solvers.get("parallel", solver=inner, tol=1e-4, window=10), mixture, sch, x_T, ts, return_nfe=True)
    assert rounds < 40 and torch.allclose(x, seq, atol=1e-2)


def test_parallel_rejects_stochastic_or_multi_evaluation_solvers():
    with pytest.raises(ValueError, match="deterministic one-evaluation"):
        solvers.get("parallel", solver=solvers.get("ddim", eta=0.5))
    with pytest.raises(ValueError, match="deterministic one-evaluation"):
        solvers.get("parallel", solver="heun")


# --- adaptive -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, tol", [("rk45", 1e-4), ("rk45", 1e-6), ("dpm_solver_adaptive", 1e-3)])
def test_adaptive_solvers_meet_their_tolerance(name, tol, gauss):
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((16, 3), generator=9, dtype=F64)
    t_end = 0.01
    ref = gauss.flow(x_T, sch.t_max, t_end, sch)
    ts = torch.tensor([sch.t_max, t_end], dtype=F64)
    x, nfe = _run(solvers.get(name, rtol=tol, atol=tol), gauss, sch, x_T, ts, return_nfe=True)
    err = float((x - ref).abs().max())
    assert err < 10 * tol * max(1.0, float(ref.abs().max())), (err, nfe)
    assert nfe > 10


def test_rk45_evaluations_grow_as_tolerance_shrinks(gauss):
    sch = schedules.VP()
    x_T = sch.prior_sample((8, 3), generator=10, dtype=F64)
    ts = torch.tensor([1.0, 0.02], dtype=F64)
    ref = gauss.flow(x_T, 1.0, 0.02, sch)
    out = [_run(solvers.get("rk45", rtol=t, atol=t), gauss, sch, x_T, ts, return_nfe=True) for t in (1e-3, 1e-6)]
    (x1, n1), (x2, n2) = out
    assert n2 > n1 and float((x2 - ref).abs().max()) < float((x1 - ref).abs().max())


def test_adaptive_solvers_end_with_the_denoising_step(mixture):
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((8, 2), generator=11, dtype=F64)
    ts = torch.tensor([1.0, 0.05, 0.0], dtype=F64)
    for name in ("rk45", "dpm_solver_adaptive"):
        x_end = _run(solvers.get(name, rtol=1e-4, atol=1e-4), mixture, sch, x_T, ts[:2])
        x0 = _run(solvers.get(name, rtol=1e-4, atol=1e-4), mixture, sch, x_T, ts)
        torch.testing.assert_close(x0, mixture.denoiser(sch)(x_end, 0.05))


# --- the SDE solver -----------------------------------------------------------------------------
def test_dpmpp_2m_sde_samples_the_target():
    gauss = toy.Gaussian([1.0, -0.5], std=torch.tensor([0.3, 0.8], dtype=F64))
    sch = schedules.DiscreteVP.ddpm_linear()
    n = 4000
    x_T = sch.prior_sample((n, 2), generator=12, dtype=F64)
    x = _run("dpmpp_2m_sde", gauss, sch, x_T, timesteps.log_snr_uniform(sch, 30, t_end=0), generator=13)
    torch.testing.assert_close(x.mean(0), gauss.mean(), atol=4 / math.sqrt(n), rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.3, 0.8], dtype=F64), atol=0.03, rtol=0)


# --- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, opts, match",
    [
        ("deis", {"order": 5}, "order must be an integer in \\[1, 3\\], got 5"),
        ("dpm_solver", {"order": 4}, "got 4"),
        ("dpm_solver", {"prediction": "v"}, "'v'"),
        ("dpm_solver", {"orders": (3, 4)}, "got 4"),
        ("unipc", {"variant": "bh3"}, "'bh3'"),
        ("unipc", {"predictor_order": 0}, "got 0"),
        ("unipc", {"sigma_data": 1.0, "prediction": "eps"}, "prediction='x0'"),
        ("dpmpp_2m", {"solver_type": "heun"}, "'heun'"),
        ("dpmpp_3m", {"sigma_data": -1.0}, "sigma_data"),
        ("plms", {"ab_order": 5}, "got 5"),
        ("pndm", {"prk_steps": 4}, "got 4"),
        ("gauss_ei", {"sigma_data": 0.0}, "sigma_data"),
        ("rk45", {"rtol": 0.0}, "rtol"),
        ("dpm_solver_adaptive", {"order": 1}, "got 1"),
        ("parallel", {"window": 0}, "window"),
    ],
)
def test_bad_options_name_the_value(name, opts, match):
    with pytest.raises(ValueError, match=match):
        solvers.get(name, **opts)


def test_dpm_solver_orders_must_match_the_grid(gauss):
    sch = schedules.VP()
    x_T = sch.prior_sample((2, 3), generator=14, dtype=F64)
    with pytest.raises(ValueError, match="orders for 2 steps but the time grid has 5"):
        _run(solvers.get("dpm_solver", orders=(3, 2)), gauss, sch, x_T, timesteps.uniform(sch, 5))


NEW = [
    "plms",
    "pndm",
    "deis",
    "dpm_solver",
    "dpmpp_2s",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2m_sde",
    "unipc",
    "gauss_ei",
    "rk45",
    "dpm_solver_adaptive",
    "parallel",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dtype_and_custom_grid(dtype, mixture):
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((4, 2), generator=15)
    ts = torch.tensor([1.0, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0], dtype=F64)  # a custom grid ending at t = 0
    for name in NEW:
        solver = solvers.get(name, rtol=1e-3, atol=1e-3) if name in ("rk45", "dpm_solver_adaptive") else name
        x = sample(solver, mixture.denoiser(sch), sch, x_T, ts, dtype=dtype, generator=0)
        assert x.dtype == dtype and torch.isfinite(x).all(), name


def test_final_denoise_option(mixture):
    sch = schedules.DiscreteVP.ddpm_linear()
    x_T = sch.prior_sample((4, 2), generator=16, dtype=F64)
    ts = timesteps.log_snr_uniform(sch, 6)
    x, nfe = _run("dpmpp_2m", mixture, sch, x_T, ts, final_denoise=True, return_nfe=True)
    assert nfe == 7
    torch.testing.assert_close(x, mixture.denoiser(sch)(_run("dpmpp_2m", mixture, sch, x_T, ts), ts[-1]))


def test_one_solver_object_serves_concurrent_samplings(mixture):
    sch = schedules.DiscreteVP.ddpm_linear()
    solver = solvers.get("unipc")
    ts = timesteps.log_snr_uniform(sch, 12, t_end=0)
    xs = [sch.prior_sample((8, 2), generator=s, dtype=F64) for s in range(4)]
    expected = [_run(solver, mixture, sch, x, ts) for x in xs]
    got: list = [None] * 4

    def work(j):
        got[j] = _run(solver, mixture, sch, xs[j], ts)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


# --- dynamic thresholding -----------------------------------------------------------------------
def test_dynamic_thresholding():
    x0 = torch.stack([torch.linspace(-4, 4, 201), torch.linspace(-0.5, 0.5, 201)])  # sample 0 exceeds [-1, 1]
    den = dynamic_thresholding(lambda x, t: x0, percentile=0.9, max_value=3.0)
    out = den(torch.zeros_like(x0), 0.5)
    s = float(torch.quantile(x0[0].abs(), 0.9))  # 3.6 -> capped at 3
    torch.testing.assert_close(out[0], x0[0].clamp(-3.0, 3.0) / 3.0)
    torch.testing.assert_close(out[1], x0[1])  # within [-1, 1]: untouched
    assert s > 3.0 and out.abs().max() <= 1.0
    with pytest.raises(ValueError, match="percentile"):
        dynamic_thresholding(lambda x, t: x, percentile=0.0)
