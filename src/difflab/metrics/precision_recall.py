"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models", Sec. 2, eq. 1-2).

Each set's manifold is approximated by the union of balls around its feature vectors with
radius the distance to the k-th nearest neighbour within the set.  Precision is the
fraction of generated samples that fall inside the real manifold; recall the fraction of
real samples inside the generated one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.metrics.fid import _as_features

__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]


def knn_radii(f: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """Distance of every point to its k-th nearest neighbour in the same set (self excluded)."""
    if f.shape[0] <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} samples, got {f.shape[0]}")
    out = []
    for i in range(0, f.shape[0], chunk):
        d = torch.cdist(f[i : i + chunk], f)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(out)


def manifold_coverage(ref: Tensor, radii: Tensor, query: Tensor, chunk: int = 2048) -> float:
    """Fraction of ``query`` points within radii[j] of some ref[j] (eq. 1-2's f(phi, Phi))."""
    inside = []
    for i in range(0, query.shape[0], chunk):
        d = torch.cdist(query[i : i + chunk], ref)
        inside.append((d <= radii[None]).any(1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real_features: Tensor, fake_features: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated ``fake_features`` against ``real_features`` (k = 3 as in the paper)."""
    real = _as_features(real_features, "real features")
    fake = _as_features(fake_features, "generated features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} and {fake.shape[1]}")
    precision = manifold_coverage(real, knn_radii(real, k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return precision, recall
