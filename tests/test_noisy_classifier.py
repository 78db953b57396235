"""The noise-conditional classifier (Dhariwal & Nichol 2021) on a problem with an exact answer:
a two-class Gaussian mixture of 1x4x4 "images", whose noisy classifier log p(y | x_t) and
conditional denoiser are known in closed form (:class:`difflab.toy.GaussianMixture`)."""

from __future__ import annotations

import pytest
import torch

from difflab import schedules, toy
from difflab.guidance import classifier_guidance
from difflab.nn.noisy_classifier import NoisyClassifier
from difflab.train.checkpoint import CheckpointError
from difflab.train.classifier import load_noisy_classifier, noise, noisy_accuracy, train_noisy_classifier

SCH = schedules.DiscreteVP.ddpm_linear()
D = 16
GM = toy.GaussianMixture([0.5, 0.5], [[0.6] * D, [-0.6] * D], stds=0.5, labels=[0, 1])
NET_ARGS = {"channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "image_size": 4, "head_channels": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    x0 = GM.sample(4096, generator=0).float().reshape(-1, 1, 4, 4)
    y = GM.labels[GM.component_of(x0.reshape(-1, D).double())]
    out = tmp_path_factory.mktemp("clf")
    net, info = train_noisy_classifier(
        x0, y, net_args=NET_ARGS, steps=250, batch_size=128, lr=3e-3, warmup=20, out=out, progress=False
    )
    return net, info, out, x0, y


@pytest.mark.parametrize("pool", ["attention", "mean"])
def test_log_prob_is_a_normalised_distribution(pool):
    net = NoisyClassifier(1, 3, channels=8, channel_mults=[1, 2], image_size=4, head_channels=8, pool=pool)
    x = torch.randn(5, 1, 4, 4)
    t = torch.rand(5)
    lp = torch.stack([net.log_prob(x, t, torch.full((5,), k)) for k in range(3)])
    torch.testing.assert_close(lp.logsumexp(0), torch.zeros(5), atol=1e-5, rtol=0)
    assert net(x, 0.3).shape == (5, 3)


def test_bad_labels_are_clear_errors():
    net = NoisyClassifier(1, 3, channels=8, channel_mults=[1], image_size=4, head_channels=8)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="0..2"):
        net.log_prob(x, 0.5, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="0..2"):
        net.log_prob(x, 0.5, torch.tensor([-1, 0]))


def test_learns_the_exact_noisy_classifier(trained):
    """After a short training, the classifier's accuracy at small t is near the Bayes rate and
    its input gradient (what guidance uses) points where the exact one does."""
    net, _, _, x0, y = trained
    acc = noisy_accuracy(net, SCH, x0[:1000], y[:1000], (0.1, 0.5))
    assert acc[0.1] > 0.97
    for t in (0.3, 0.6):
        tb = torch.full((256,), t)
        x = noise(SCH, x0[-256:], tb.double(), torch.Generator().manual_seed(1))  # x_t ~ q(x_t)
        yb = torch.randint(0, 2, (256,))
        xg = x.clone().requires_grad_(True)
        (g_net,) = torch.autograd.grad(net.log_prob(xg, tb, yb).sum(), xg)
        xe = x.double().reshape(-1, D).requires_grad_(True)
        (g_ex,) = torch.autograd.grad(GM.class_log_prob(xe, t, SCH, yb).sum(), xe)
        cos = torch.nn.functional.cosine_similarity(g_net.reshape(-1, D).double(), g_ex, dim=1)
        assert cos.median() > 0.85, (t, cos.median())  # random directions: ~0


def test_guidance_with_learned_classifier_moves_toward_the_conditional_denoiser(trained):
    """Classifier guidance at s = 1 turns the exact unconditional denoiser toward the exact
    conditional one (Dhariwal & Nichol 2021, eq. 2-3; Song et al. 2021, eq. 48): with the exact
    classifier it is exact (tests/test_guidance.py); with the learned one the shift points the
    right way for nearly every sample and the error shrinks clearly."""
    net, _, _, x0, y = trained
    den = GM.denoiser(SCH)
    guided = classifier_guidance(lambda x, t: den(x, t), net.log_prob, SCH, 1.0)
    yb = y[-256:]
    for t in (0.2, 0.35, 0.5):
        x = noise(SCH, x0[-256:], torch.full((256,), t, dtype=torch.float64), torch.Generator().manual_seed(2))
        plain, exact = den(x, t), den(x, t, y=yb)
        shift = (guided(x, t, y=yb) - plain).reshape(256, -1)
        want = (exact - plain).reshape(256, -1)
        assert ((shift * want).sum(1) > 0).float().mean() > 0.75  # chance: 0.5
        assert (shift - want).norm() < 0.8 * want.norm(), (t, float((shift - want).norm()), float(want.norm()))


def test_checkpoint_round_trip_and_foreign_checkpoints(trained, tmp_path):
    net, info, out, x0, _ = trained
    loaded, schedule, state = load_noisy_classifier(out)
    assert state["steps"] == info["steps"] == 250
    assert isinstance(schedule, schedules.DiscreteVP)
    torch.testing.assert_close(loaded(x0[:4], 0.4), net(x0[:4], 0.4))
    with pytest.raises(CheckpointError):
        load_noisy_classifier(tmp_path)  # no checkpoint at all
    from difflab.train.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "checkpoints", 1, {"ema": {"w": torch.zeros(1)}}, {"config": {}})
    with pytest.raises(CheckpointError, match="not a noisy-classifier"):
        load_noisy_classifier(tmp_path)


def test_bad_training_input():
    with pytest.raises(ValueError, match="expected images"):
        train_noisy_classifier(torch.zeros(4, 16), torch.zeros(4, dtype=torch.long), steps=1, progress=False)
