"""The LPIPS-form perceptual distance (Zhang et al. 2018, eq. 1) on the shipped feature networks."""

import pytest
import torch
import torch.nn.functional as F

from conftest import require_fashion_mnist
from difflab import data
from difflab.metrics import PerceptualDistance, perceptual_distance
from difflab.nn.classifier import ConvClassifier


@pytest.fixture(scope="module")
def fashion():
    require_fashion_mnist()
    return data.fashion_mnist(split="test", limit=200).images


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), (k[:, None] * k[None]).reshape(1, 1, 5, 5))


def _noise_like(x: torch.Tensor, norms: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Gaussian noise scaled to the given per-image L2 norms."""
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return n * (norms / n.flatten(1).norm(dim=1))[:, None, None, None]


def test_identity_and_symmetry(fashion):
    x, y = fashion[:50], fashion[50:100]
    assert torch.equal(perceptual_distance(x, x), torch.zeros(50))
    d_xy, d_yx = perceptual_distance(x, y), perceptual_distance(y, x)
    assert d_xy.shape == (50,) and bool((d_xy > 0).all())
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["shift", "blur"])
def test_structure_is_closer_than_noise_of_equal_l2(fashion, kind):
    """The paper's point: a one-pixel shift or a slight blur changes pixels as much as Gaussian
    noise of the same L2 norm, yet deep features see the same structure."""
    x = fashion
    y = torch.roll(x, 1, dims=3) if kind == "shift" else _gaussian_blur(x, 0.5)
    norms = (y - x).flatten(1).norm(dim=1)
    noisy = x + _noise_like(x, norms)
    torch.testing.assert_close((noisy - x).flatten(1).norm(dim=1), norms)  # equal pixel (L2) distance
    dist = PerceptualDistance("fashion_mnist", check_range=False)  # noisy images leave [-1, 1] a little
    closer = (dist(x, y) < dist(x, noisy)).float().mean().item()
    # measured: shift 1.00, blur (sigma 0.5) 0.97 of 200 test images
    assert closer >= 0.9, f"{kind}: only {closer:.2f} of the images rank closer than equal-L2 noise"


def test_form_matches_eq1_by_hand():
    """eq. 1 written out for a one-layer network with given channel weights."""
    torch.manual_seed(0)
    net = ConvClassifier(image_size=8, widths=(4, 6)).eval()
    w = [torch.rand(4), torch.rand(6)]
    dist = PerceptualDistance(net, weights=w)
    a, b = torch.rand(3, 1, 8, 8) * 2 - 1, torch.rand(3, 1, 8, 8) * 2 - 1
    ref = torch.zeros(3)
    for fa, fb, wl in zip(net.layer_features(a), net.layer_features(b), w):
        na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        ref += ((na - nb) ** 2 * wl[None, :, None, None]).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(dist(a, b), ref)
    # one layer only
    only = PerceptualDistance(net, layers=[1], weights=[w[1]])
    assert bool((only(a, b) < dist(a, b)).all())


def test_differentiable_and_backbone_frozen(fashion):
    x = fashion[:4]
    a = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    dist = PerceptualDistance("fashion_mnist", check_range=False).train()
    assert not dist.net.training  # BatchNorm statistics stay fixed inside a training model
    dist(a, x).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in dist.net.parameters())


def test_digits_and_padded_images():
    x = data.digits("test").images[:8]
    d = perceptual_distance(x, torch.roll(x, 1, dims=3), "digits")
    assert d.shape == (8,) and bool((d > 0).all())
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    torch.testing.assert_close(
        perceptual_distance(padded, padded.flip(3), "digits", adapt="center_crop"),
        perceptual_distance(x, x.flip(3), "digits"),
    )


def test_bad_input():
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match="28x28"):
        perceptual_distance(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="differ in shape"):
        perceptual_distance(x, x[:1])
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        perceptual_distance(torch.zeros(2, 3, 28, 28), torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        perceptual_distance(x + 5, x)
    with pytest.raises(ValueError, match="no shipped feature network"):
        perceptual_distance(x, x, "imagenet")
    with pytest.raises(ValueError, match="layers"):
        PerceptualDistance("fashion_mnist", layers=[7])
    with pytest.raises(ValueError, match="non-negative"):
        PerceptualDistance("fashion_mnist", layers=[0], weights=[-torch.ones(32)])
