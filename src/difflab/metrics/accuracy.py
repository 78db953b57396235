"""How often the shipped classifier agrees with the class a conditional sample was asked for
(the "classification accuracy score" of generated data in its simplest form; cf. Ravuri &
Vinyals 2019, who train on samples instead)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab.metrics.features import FeatureNet, feature_net

__all__ = ["classifier_accuracy", "per_class_accuracy"]


def _predict(samples: Tensor, labels: Tensor, net: FeatureNet) -> tuple[Tensor, Tensor]:
    labels = torch.as_tensor(labels).long().flatten()
    if labels.shape[0] != samples.shape[0]:
        raise ValueError(f"got {labels.shape[0]} labels for {samples.shape[0]} samples")
    logits = net.logits(samples)
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1} for {net.name!r}")
    pred = logits.argmax(1)
    return pred, labels


def classifier_accuracy(
    samples: Tensor,
    labels: Tensor,
    net: str | FeatureNet | nn.Module | Callable[[Tensor], Tensor] = "fashion_mnist",
    adapt: str | None = None,
    weights_dir: str | Path | None = None,
) -> float:
    """Fraction of class-conditional ``samples`` that the classifier assigns to their ``labels``."""
    pred, labels = _predict(samples, labels, feature_net(net, adapt=adapt, weights_dir=weights_dir))
    return float((pred == labels).double().mean())


def per_class_accuracy(
    samples: Tensor,
    labels: Tensor,
    net: str | FeatureNet | nn.Module = "fashion_mnist",
    adapt: str | None = None,
) -> dict[int, float]:
    """Accuracy per requested class (classes absent from ``labels`` are left out)."""
    pred, labels = _predict(samples, labels, feature_net(net, adapt=adapt))
    return {int(c): float((pred[labels == c] == c).double().mean()) for c in labels.unique()}
