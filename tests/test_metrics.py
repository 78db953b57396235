"""Metrics against exact mathematics: closed-form FID / MMD of Gaussians, unbiasedness of KID,
precision / recall on identical, disjoint and mode-dropped sets, sliced Wasserstein of shifted
Gaussians; the shipped feature classifiers' accuracy and input checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from conftest import require_fashion_mnist
from difflab import metrics
from difflab.metrics.mmd import mmd2_unbiased, polynomial_kernel, rbf_kernel

F64 = torch.float64


def _gauss(n: int, mean, cov, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mean = torch.as_tensor(mean, dtype=F64)
    L = torch.linalg.cholesky(torch.as_tensor(cov, dtype=F64))
    return mean + torch.randn(n, mean.numel(), generator=g, dtype=F64) @ L.T


def _random_cov(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=F64)


# --- FID ----------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    # commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=F64), torch.tensor([9.0, 1.0, 0.25], dtype=F64)
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=F64), torch.tensor([1.0, -1.0, 2.0], dtype=F64)
    exact = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert metrics.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(exact, rel=1e-12)
    # general covariances: against scipy's matrix square root
    c1, c2 = _random_cov(6, 1), _random_cov(6, 2)
    ref = np.trace(c1.numpy() + c2.numpy() - 2 * scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real)
    z = torch.zeros(6, dtype=F64)
    assert metrics.frechet_distance(z, c1, z, c2) == pytest.approx(float(ref), rel=1e-9)
    assert metrics.frechet_distance(z, c1, z, c1) == pytest.approx(0.0, abs=1e-10)


def test_fid_from_samples_approaches_closed_form():
    d = 4
    c1, c2 = _random_cov(d, 3), _random_cov(d, 4)
    m2 = torch.full((d,), 0.5, dtype=F64)
    exact = metrics.frechet_distance(torch.zeros(d, dtype=F64), c1, m2, c2)
    est = metrics.fid(_gauss(40000, torch.zeros(d), c1, 0), _gauss(40000, m2, c2, 1))
    assert est == pytest.approx(exact, rel=0.03)


def test_fid_too_few_samples_says_how_many():
    with pytest.raises(ValueError, match=r"at least D \+ 1 = 129"):
        metrics.fid(torch.randn(100, 128), torch.randn(500, 128))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        metrics.fid(torch.randn(10, 2, 2), torch.randn(10, 4))


# --- MMD / KID ----------------------------------------------------------------------------
def _expected_rbf(m1, s1, m2, s2, h: float) -> float:
    """E exp(-|x - y|^2 / 2h^2) for independent x ~ N(m1, s1), y ~ N(m2, s2)."""
    cov = s1 + s2
    d = cov.shape[0]
    mu = m1 - m2
    det = torch.linalg.det(torch.eye(d, dtype=F64) + cov / h**2)
    quad = mu @ torch.linalg.solve(cov + h**2 * torch.eye(d, dtype=F64), mu)
    return float(det ** (-0.5) * torch.exp(-0.5 * quad))


def test_rbf_mmd_matches_closed_form_for_gaussians():
    d, h = 3, 1.5
    m1, m2 = torch.zeros(d, dtype=F64), torch.tensor([0.7, 0.0, -0.3], dtype=F64)
    s1, s2 = _random_cov(d, 5), _random_cov(d, 6)
    exact = _expected_rbf(m1, s1, m1, s1, h) + _expected_rbf(m2, s2, m2, s2, h) - 2 * _expected_rbf(m1, s1, m2, s2, h)
    ests = torch.tensor(
        [metrics.mmd2(_gauss(400, m1, s1, 2 * i), _gauss(400, m2, s2, 2 * i + 1), h) for i in range(20)]
    )
    se = float(ests.std()) / math.sqrt(len(ests))
    assert abs(float(ests.mean()) - exact) < 4 * se + 1e-4, (float(ests.mean()), exact, se)
    assert exact > 0.02


def test_kid_estimator_is_unbiased():
    # independent replicates of the unbiased MMD^2 (KID's kernel) of one distribution average to 0
    k = polynomial_kernel(3)
    vals = torch.tensor(
        [mmd2_unbiased(torch.randn(20, 5, dtype=F64), torch.randn(30, 5, dtype=F64), k) for _ in range(500)]
    )
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean())) < 4 * se
    # ... while the biased V-statistic (diagonal included) is visibly positive
    x, y = torch.randn(20, 5, dtype=F64), torch.randn(30, 5, dtype=F64)
    biased = float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    assert biased > mmd2_unbiased(x, y, k)
    same, _ = metrics.kid(torch.randn(2000, 8), torch.randn(2000, 8), n_subsets=20, subset_size=500)
    diff, diff_std = metrics.kid(torch.randn(2000, 8), torch.randn(2000, 8) + 0.5, n_subsets=20, subset_size=500)
    assert abs(same) < 0.01 and diff > 10 * max(diff_std, abs(same))


def test_rbf_kernel_rejects_bad_bandwidth():
    with pytest.raises(ValueError, match="positive"):
        rbf_kernel(0.0)


# --- precision / recall -------------------------------------------------------------------
def test_precision_recall_same_disjoint_and_dropped_mode():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 4, generator=g)
    fake = torch.randn(2000, 4, generator=g)
    p, r = metrics.precision_recall(real, fake)
    assert p > 0.9 and r > 0.9
    p, r = metrics.precision_recall(real, fake + 20.0)
    assert p == 0.0 and r == 0.0
    # two real modes, the generator covers only one: precision stays high, recall halves
    real2 = torch.cat([torch.randn(1000, 4, generator=g) - 10, torch.randn(1000, 4, generator=g) + 10])
    fake2 = torch.randn(2000, 4, generator=g) + 10
    p, r = metrics.precision_recall(real2, fake2)
    assert p > 0.9 and 0.4 < r < 0.55
    with pytest.raises(ValueError, match="more than 3 samples"):
        metrics.precision_recall(torch.randn(3, 2), torch.randn(10, 2))


# --- sliced Wasserstein -------------------------------------------------------------------
def test_wasserstein_1d_is_exact_for_unequal_sizes():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(37, 3, generator=g, dtype=F64), torch.rand(53, 3, generator=g, dtype=F64)
    ours = metrics.wasserstein_1d(a, b, p=1)
    ref = [scipy.stats.wasserstein_distance(a[:, j].numpy(), b[:, j].numpy()) for j in range(3)]
    assert torch.allclose(ours, torch.tensor(ref, dtype=F64), rtol=1e-10, atol=1e-12)


def test_sliced_wasserstein_of_shifted_gaussians():
    # projections of N(0, I) and N(m, I) on theta are N(0, 1) and N(theta.m, 1): SW_2^2 = E (theta.m)^2 = |m|^2 / d
    d = 4
    m = torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=F64)
    x, y = _gauss(5000, torch.zeros(d), torch.eye(d), 0), _gauss(5000, m, torch.eye(d), 1)
    sw = metrics.sliced_wasserstein(x, y, n_projections=1000)
    assert sw == pytest.approx(float(m.norm()) / math.sqrt(d), rel=0.03)
    assert metrics.sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)


# --- shipped feature networks -------------------------------------------------------------
def test_shipped_weight_files_are_small():
    wdir = Path(metrics.features.__file__).parents[1] / "weights"
    files = list(wdir.glob("*_classifier.*"))
    assert files, "no shipped classifier weights"
    assert all(f.stat().st_size < 2_000_000 for f in files)


def test_digits_classifier_accuracy_and_floor():
    from difflab import data

    xte, yte = data.digits(split="test")
    acc = metrics.classifier_accuracy(xte, yte, "digits")
    info = metrics.shipped_info("digits")
    assert acc >= 0.97 and acc == pytest.approx(info["test_accuracy"], abs=1e-3)
    xtr, _ = data.digits(split="train")
    res = metrics.evaluate(xte, xtr, "fid,pr", feature_net="digits")
    noise = metrics.evaluate(torch.rand_like(xte) * 2 - 1, xtr, "fid", feature_net="digits")
    assert res["fid"] < 0.1 * noise["fid"] and res["precision"] > 0.7 and res["recall"] > 0.7


def test_fashion_mnist_classifier_accuracy():
    from difflab import data

    require_fashion_mnist()
    xte, yte = data.fashion_mnist(split="test")
    acc = metrics.classifier_accuracy(xte, yte, "fashion_mnist")
    assert acc >= 0.90 and acc == pytest.approx(metrics.shipped_info("fashion_mnist")["test_accuracy"], abs=1e-3)


def test_feature_net_input_checks():
    net = metrics.feature_net("fashion_mnist")
    assert net.features(torch.zeros(3, 1, 28, 28)).shape == (3, 128)
    with pytest.raises(ValueError, match=r"1-channel images \(B, 1, 28, 28\), got 3 channels"):
        net.features(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"28x28 images .* got 32x32.*center_crop"):
        net.features(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        net.features(torch.full((2, 1, 28, 28), 255.0))
    # padded 28 -> 32 images (as fed to a U-Net) are cropped back exactly
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    cropped = metrics.feature_net("fashion_mnist", adapt="center_crop")
    assert torch.allclose(cropped.features(padded), net.features(x))
    assert metrics.feature_net("fashion_mnist", adapt="resize").features(padded).shape == (4, 128)


def test_evaluate_contract():
    x = torch.randn(300, 2)
    y = torch.randn(300, 2)
    res = metrics.evaluate(x, y, "swd,mmd")
    assert set(res) == {"n_samples", "n_real", "swd", "mmd2"}
    res = metrics.evaluate(x, y, ["fid", "kid", "pr"], feature_net=lambda z: z.double(), kid_subsets=5)
    assert {"fid", "kid", "kid_std", "precision", "recall"} <= set(res)
    with pytest.raises(ValueError, match=r"unknown metric.*'nope'"):
        metrics.evaluate(x, y, "fid,nope", feature_net=lambda z: z)
    with pytest.raises(ValueError, match="need a feature_net"):
        metrics.evaluate(x, y, "fid")
    with pytest.raises(ValueError, match="need real data"):
        metrics.evaluate(x, None, "swd")
    with pytest.raises(ValueError, match="not a classifier"):
        metrics.evaluate(x, y, "accuracy", feature_net=lambda z: z, labels=torch.zeros(300))
