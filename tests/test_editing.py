"""Editing (SDEdit, inpainting) against exact Gaussian-mixture oracles.

The mixture's denoiser is the exact posterior mean, and its conditional given known coordinates
is closed-form (``GaussianMixture.conditional``), so inpainting can be compared with the exact
conditional distribution: SMC inpainting matches it within Monte-Carlo error, while plain
replacement misses it by tens of standard errors on the same problem (the incoherence RePaint's
resampling reduces).
"""

import itertools
import math

import pytest
import torch

from difflab import sample, schedules, solvers, timesteps, toy
from difflab.editing import check_mask, inpaint, inpaint_smc, repaint_schedule, sdedit, tail_grid

DDPM = schedules.DiscreteVP.ddpm_linear()


def _mixture() -> toy.GaussianMixture:
    # two classes; class 1 has two components, so conditioning on x_0 reweights them strongly
    return toy.GaussianMixture(
        [0.4, 0.35, 0.25], [[-1.0, -1.0], [1.0, 1.0], [0.8, -0.9]], stds=[0.5, 0.5, 0.45], labels=[0, 1, 1]
    )


# --- exact conditional of the mixture ------------------------------------------------------
def test_conditional_of_a_mixture_matches_bayes_rule_on_a_grid():
    gm = toy.GaussianMixture.random(3, 4, seed=2, spread=1.5)
    cond = gm.conditional([0, 2], [0.4, -0.3])
    u = torch.linspace(-6, 6, 4001, dtype=torch.float64)
    pts = torch.stack([torch.full_like(u, 0.4), u, torch.full_like(u, -0.3)], 1)
    joint = gm.log_prob(pts).exp()
    dens = joint / (joint.sum() * (u[1] - u[0]))  # p(u | x_0, x_2) by normalising the joint on a grid
    assert torch.allclose(cond.log_prob(u[:, None]).exp(), dens, atol=1e-6)
    assert cond.dim == 1 and torch.equal(cond.labels, gm.labels) if gm.labels is not None else cond.labels is None


def test_conditional_bad_input():
    gm = _mixture()
    with pytest.raises(ValueError, match="distinct coordinates"):
        gm.conditional([0, 1], [0.0, 0.0])
    with pytest.raises(ValueError, match="outside"):
        gm.conditional([5], [0.0])
    with pytest.raises(ValueError, match="one value per known"):
        gm.conditional([0], [0.0, 1.0])


# --- SDEdit -----------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["ddim", "ddpm", "dpmpp_2m_sde"])
def test_sdedit_at_strength_one_is_unconditional_sampling(solver):
    # rectified flow with t_max = 1 has alpha(t_max) = 0: the noised image is exactly a prior draw
    sch = schedules.RectifiedFlow(t_max=1.0)
    gm = toy.GaussianMixture.random(2, 3, seed=1)
    den = gm.denoiser(sch)
    img = gm.sample(16, 0).float()
    ts = timesteps.uniform(sch, 12, t_end=0.0)
    edited = sdedit(solver, den, sch, img, ts, 1.0, generator=3)
    plain = sample(solver, den, sch, sch.prior_sample((16, 2), generator=3), ts, generator=3)
    assert torch.equal(edited, plain)


def test_sdedit_at_strength_zero_returns_the_input():
    gm = _mixture()
    img = gm.sample(8, 0).float()
    out, nfe = sdedit("ddim", gm.denoiser(DDPM), DDPM, img, timesteps.get("trailing", DDPM, 10), 0.0, return_nfe=True)
    assert torch.equal(out, img) and nfe == 0 and out is not img


def test_sdedit_solves_on_the_grid_tail():
    ts = timesteps.get("trailing", DDPM, 20)
    tail = tail_grid(ts, 0.6, DDPM)  # 0.6 is a grid time: exactly the tail
    assert torch.equal(tail, ts[ts <= 0.6 + 1e-12])
    tail = tail_grid(ts, 0.63, DDPM)
    assert float(tail[0]) == 0.63 and torch.equal(tail[1:], ts[ts < 0.63])
    gm = _mixture()
    img = gm.sample(4, 0).float()
    _, nfe = sdedit("ddim", gm.denoiser(DDPM), DDPM, img, ts, 0.6, return_nfe=True)
    assert nfe == 12  # 12 of the 20 steps


def test_sdedit_keeps_the_data_distribution_and_strength_trades_faithfulness():
    # image ~ p_data, noised to t0: x(t0) ~ p_t0, so an exact reverse sampler returns p_data again
    torch.manual_seed(0)
    gm = _mixture()
    n = 3000
    img = gm.sample(n, 1).float()
    den = gm.denoiser(DDPM)
    ts = timesteps.get("trailing", DDPM, 100)
    dist = []
    for s in (0.1, 0.4, 0.9):
        out = sdedit("ddpm", den, DDPM, img, ts, s, generator=2).double()
        dist.append(float((out - img.double()).norm(dim=1).mean()))
        se = (gm.cov().diagonal() / n).sqrt()
        assert ((out.mean(0) - gm.mean()).abs() < 4 * se).all()
        assert torch.allclose(out.T.cov(), gm.cov(), atol=0.12)
    assert dist[0] < dist[1] < dist[2]  # more strength, further from the guide


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_sdedit_rejects_a_strength_outside_0_1(strength):
    gm = _mixture()
    with pytest.raises(ValueError, match="strength"):
        sdedit("ddim", gm.denoiser(DDPM), DDPM, gm.sample(2).float(), timesteps.get("trailing", DDPM, 5), strength)


# --- inpainting --------------------------------------------------------------------------
def _image_mixture() -> toy.GaussianMixture:
    return toy.GaussianMixture.random(16, 3, seed=4, spread=1.0, std_range=(0.2, 0.6))


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "ddpm", "heun", "unipc", "rk45"])
def test_inpainting_keeps_the_known_pixels_exactly(solver):
    gm = _image_mixture()
    img = gm.sample(6, 0).float().reshape(6, 1, 4, 4)
    mask = torch.zeros(4, 4)
    mask[1:3, :] = 1  # generate the middle rows
    ts = timesteps.get("trailing", DDPM, 10)
    out = inpaint(solver, gm.denoiser(DDPM), DDPM, img, mask, ts, generator=0)
    keep = mask == 0
    assert torch.equal(out[:, :, keep], img[:, :, keep])
    assert not torch.allclose(out[:, :, ~keep], img[:, :, ~keep])
    assert torch.isfinite(out).all()


def test_inpainting_with_resampling_keeps_the_known_pixels_and_counts_nfe():
    gm = _image_mixture()
    img = gm.sample(3, 0).float().reshape(3, 1, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., :2] = 0
    ts = timesteps.get("trailing", DDPM, 20)
    out, nfe = inpaint(
        "ddpm", gm.denoiser(DDPM), DDPM, img, mask, ts, resamplings=3, jump_length=5, generator=0, return_nfe=True
    )
    assert torch.equal(out[..., :2], img[..., :2])
    assert nfe == 20 + 2 * 3 * 5  # 3 jump points (levels 0, 5, 10), 2 extra descents of 5 steps each


def test_repaint_schedule():
    assert repaint_schedule(7, 3, 1) == list(range(8))
    v = repaint_schedule(20, 5, 3)
    assert v[0] == 0 and v[-1] == 20
    assert all(abs(a - b) == 1 for a, b in itertools.pairwise(v))
    # jump points at levels 0, 5, 10 (not the top block): each sends the walk up 5 steps twice
    assert len(v) == 21 + 3 * 2 * 2 * 5
    assert v.count(20) == 3 and v.count(4) == 1  # the top block [0, 5] is walked once
    with pytest.raises(ValueError, match="resamplings"):
        repaint_schedule(10, 2, 0)


def _diagonal_mixture(labelled: bool) -> toy.GaussianMixture:
    """Modes on the diagonal (class 0) and, labelled, on the anti-diagonal (class 1): the known
    coordinate x_0 = 0.3 makes x_1 = +1 (class 0) or -1 (class 1) eleven times likelier than the other."""
    if not labelled:
        return toy.GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]], stds=0.5)
    means = [[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]]
    return toy.GaussianMixture([0.3, 0.3, 0.2, 0.2], means, stds=0.5, labels=[0, 0, 1, 1])


def _smc_and_replacement_stats(y):
    gm = _diagonal_mixture(labelled=y is not None)
    sch = schedules.VP()
    ts = timesteps.log_snr_uniform(sch, 50, t_end=0.0)
    xk = 0.3
    cond = gm.conditional([0], [xk])
    if y is not None:  # p(x_1 | x_0, y): the conditional's components of class y
        w = cond.weights * (cond.labels == y)
        cond = toy.GaussianMixture(w[w > 0], cond.means[w > 0], covs=cond.covs[w > 0])
    j = int(cond.weights.argmax())  # the main component's weight is one of the statistics
    den = gm.denoiser(sch)
    extra = {} if y is None else {"y": y}
    B, K = 16, 250
    img = torch.tensor([[xk, 0.0]]).repeat(B, 1)
    mask = torch.tensor([0.0, 1.0])
    x = inpaint_smc(den, sch, img, mask, ts, particles=K, seed=1, **extra)
    assert torch.equal(x[..., 0], torch.full((B, K), xk))
    u = x[..., 1].double()
    # each image's particles are correlated: the Monte-Carlo error is the spread of the B runs
    main = (cond.component_of(u.reshape(-1, 1)) == j).reshape(B, K).double()
    stats = torch.stack([u.mean(1), u.pow(2).mean(1), main.mean(1)], 1)
    exact = torch.stack([cond.mean()[0], cond.cov()[0, 0] + cond.mean()[0] ** 2, cond.weights[j]])
    se = stats.std(0) / math.sqrt(B)
    z_smc = (stats.mean(0) - exact) / se
    rep = inpaint("ddpm", den, sch, img.repeat(K, 1), mask, ts, generator=0, **extra)[:, 1].double()
    rep_stats = torch.stack([rep.mean(), rep.pow(2).mean(), (cond.component_of(rep[:, None]) == j).double().mean()])
    return z_smc, (rep_stats - exact) / se


@pytest.mark.parametrize("y", [None, 1])
def test_smc_inpainting_draws_the_exact_conditional(y):
    z_smc, z_rep = _smc_and_replacement_stats(y)
    # mean, second moment and the main component's weight, in standard errors
    assert (z_smc.abs() < 4).all(), z_smc
    # replacement misses the same statistics by far more: the test tells exact from approximate
    assert z_rep.abs().max() > 10, z_rep


def test_repaint_resampling_moves_towards_the_exact_conditional():
    gm = _diagonal_mixture(labelled=False)
    sch = schedules.VP()
    ts = timesteps.log_snr_uniform(sch, 30, t_end=0.0)
    cond = gm.conditional([0], [0.3])
    n = 1500
    img = torch.tensor([[0.3, 0.0]]).repeat(n, 1)
    mask = torch.tensor([0.0, 1.0])
    err = []
    for r in (1, 8):
        x = inpaint("ddpm", gm.denoiser(sch), sch, img, mask, ts, resamplings=r, jump_length=5, generator=0)
        err.append(abs(float(x[:, 1].double().mean() - cond.mean()[0])))
    assert err[1] < 0.7 * err[0], err  # measured: 0.64 -> 0.37


def test_mask_bad_input():
    img = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="binary"):
        check_mask(torch.full((4, 4), 0.5), img)
    with pytest.raises(ValueError, match=r"does not fit images of shape \(2, 1, 4, 4\)"):
        check_mask(torch.ones(5, 4), img)
    with pytest.raises(ValueError, match="does not fit"):
        check_mask(torch.ones(3, 1, 4, 4), img)
    assert check_mask(torch.ones(1, 4, 4), img).dtype == torch.bool
    gm = _image_mixture()
    ts = timesteps.get("trailing", DDPM, 5)
    with pytest.raises(ValueError, match="strength"):
        inpaint("ddim", gm.denoiser(DDPM), DDPM, img, torch.ones(4, 4), ts, strength=2.0)
    with pytest.raises(ValueError, match="binary"):
        inpaint_smc(gm.denoiser(DDPM), DDPM, img, torch.full((4, 4), 0.3), ts)


def test_every_solver_can_inpaint():
    gm = _image_mixture()
    img = gm.sample(2, 0).float().reshape(2, 1, 4, 4)
    mask = torch.zeros(4, 4)
    mask[:, 2:] = 1
    ts = timesteps.get("trailing", DDPM, 6)
    for name in solvers.names():
        if name == "langevin":  # needs a last time with sigma > 0
            continue
        out = inpaint(name, gm.denoiser(DDPM), DDPM, img, mask, ts, generator=0)
        assert torch.equal(out[..., :2], img[..., :2]), name
