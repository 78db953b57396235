"""A small convolutional image classifier whose penultimate layer serves as a feature space.

FID (Heusel et al. 2017) measures distances between Gaussians fitted to the features of a
pretrained classifier; the standard Inception-v3 features make no sense for 8x8 digits or
28x28 Fashion-MNIST, so difflab ships small classifiers trained on those data sets
(``scripts/train_feature_classifiers.py``) and computes FID, KID and precision/recall in
their feature space, as is common for MNIST-like data.

Architecture: ``len(widths)`` blocks of conv3x3 -> BatchNorm -> ReLU, each followed by a
2x2 max-pool while the feature map is at least 4 pixels wide; then flatten ->
Linear(feature_dim) -> ReLU (the *features*) -> Dropout -> Linear(num_classes) (the logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["ConvClassifier"]


class ConvClassifier(nn.Module):
    """Conv net for (B, C, H, W) images in [-1, 1].

    Args:
        in_channels: image channels.
        image_size: height = width of the images it accepts.
        num_classes: number of output classes.
        widths: channels of the conv blocks.
        feature_dim: width of the penultimate layer (the feature space of the metrics).
        dropout: dropout before the last layer (training only).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 64),
        feature_dim: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if in_channels < 1 or image_size < 1 or num_classes < 2 or feature_dim < 1 or not widths:
            raise ValueError(
                f"invalid ConvClassifier shape: in_channels={in_channels}, image_size={image_size}, "
                f"num_classes={num_classes}, widths={tuple(widths)}, feature_dim={feature_dim}"
            )
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "image_size": int(image_size),
            "num_classes": int(num_classes),
            "widths": [int(w) for w in widths],
            "feature_dim": int(feature_dim),
            "dropout": float(dropout),
        }
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if size >= 4:  # pool while there is room: 28 -> 14 -> 7 -> 3, 8 -> 4 -> 2
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = w
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it accepts."""
        c, s = self.config["in_channels"], self.config["image_size"]
        return (c, s, s)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations, shape (B, feature_dim)."""
        return self.embed(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, shape (B, num_classes)."""
        return self.head(self.features(x))

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """The activations after every conv block's ReLU (before its pooling), shallow to deep:
        for 28x28 inputs and widths (32, 64, 64), maps of (32, 28, 28), (64, 14, 14), (64, 7, 7).
        The taps of the perceptual distance (:mod:`difflab.metrics.perceptual`)."""
        out = []
        for m in self.body:
            x = m(x)
            if isinstance(m, nn.ReLU):
                out.append(x)
        return out

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return f, self.head(f)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
