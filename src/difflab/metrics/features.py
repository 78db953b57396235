"""Pluggable feature networks for FID, KID and precision/recall.

A feature network maps images to vectors.  difflab ships two, small classifiers trained by
``scripts/train_feature_classifiers.py`` (weights in ``difflab/weights/``):

- ``"digits"``: 8x8 one-channel digits (scikit-learn), 128-d features;
- ``"fashion_mnist"``: 28x28 one-channel Fashion-MNIST, 128-d features.

Anything else plugs in through :func:`feature_net`: a :class:`FeatureNet`, an ``nn.Module``
with a ``features`` method (its ``forward`` gives logits), or any callable ``x -> (B, D)``.
Images are (B, C, H, W) in [-1, 1], the convention of :mod:`difflab.data`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nn.classifier import ConvClassifier

__all__ = ["ADAPT", "SHIPPED", "FeatureNet", "adapt_images", "feature_net", "load_classifier", "shipped_info"]

SHIPPED = ("digits", "fashion_mnist")
ADAPT = (None, "resize", "center_crop")


def _weights_dir(weights_dir: str | Path | None) -> Path:
    if weights_dir is not None:
        return Path(weights_dir)
    return Path(str(resources.files("difflab") / "weights"))


def shipped_info(name: str, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """The JSON record of a shipped classifier: architecture, split, test accuracy, floors."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped feature network {name!r}; shipped: {', '.join(SHIPPED)}")
    path = _weights_dir(weights_dir) / f"{name}_classifier.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; train it with `python scripts/train_feature_classifiers.py --dataset {name}`"
        )
    return json.loads(path.read_text())


def load_classifier(name: str, weights_dir: str | Path | None = None) -> ConvClassifier:
    """A shipped classifier (``digits`` or ``fashion_mnist``) in eval mode, float32, CPU."""
    from safetensors.torch import load_file

    info = shipped_info(name, weights_dir)
    if info.get("arch") != "ConvClassifier":
        raise ValueError(f"{name}: unknown architecture {info.get('arch')!r} in its JSON record")
    net = ConvClassifier(**info["config"])
    net.load_state_dict(load_file(str(_weights_dir(weights_dir) / f"{name}_classifier.safetensors")))
    return net.eval().requires_grad_(False)


def adapt_images(x: Tensor, h: int, w: int, adapt: str | None) -> Tensor:
    """Bring images (B, C, H', W') to h x w: ``"resize"`` (bilinear, antialiased) or
    ``"center_crop"`` (larger images, e.g. Fashion-MNIST padded 28 -> 32, cropped to the centre)."""
    if adapt == "resize":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if adapt != "center_crop":
        raise ValueError(f"adapt must be 'resize' or 'center_crop' to change the image size, got {adapt!r}")
    big_h, big_w = x.shape[-2:]
    if big_h < h or big_w < w:
        raise ValueError(f"cannot centre-crop {big_h}x{big_w} images to {h}x{w}; use adapt='resize'")
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return x[..., top : top + h, left : left + w]


class FeatureNet:
    """A feature network with input checks and batching.

    Args:
        features: ``x -> (B, D)`` features.
        logits: ``x -> (B, num_classes)`` class logits, if it is a classifier.
        input_shape: (C, H, W) it accepts; ``None`` accepts anything.
        name: for messages and reports.
        adapt: what to do with images of another size: ``None`` raises, ``"resize"``
            resizes bilinearly (antialiased), ``"center_crop"`` crops larger images
            (e.g. Fashion-MNIST padded 28 -> 32 for a U-Net) to the centre.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        features: Callable[[Tensor], Tensor],
        logits: Callable[[Tensor], Tensor] | None = None,
        input_shape: tuple[int, int, int] | None = None,
        name: str = "custom",
        adapt: str | None = None,
        batch_size: int = 500,
    ) -> None:
        if adapt not in ADAPT:
            raise ValueError(f"adapt must be one of {ADAPT}, got {adapt!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._features, self._logits = features, logits
        self.input_shape, self.name, self.adapt, self.batch_size = input_shape, name, adapt, batch_size

    def prepare(self, x: Tensor) -> Tensor:
        """Check (and, if asked, adapt) a batch of images; returns float32 clamped to [-1, 1]."""
        if not isinstance(x, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
        if self.input_shape is None:
            return x.float()
        c, h, w = self.input_shape
        want = f"(B, {c}, {h}, {w})"
        if x.dim() == 3 and c == 1:
            x = x[:, None]
        if x.dim() != 4:
            raise ValueError(f"feature network {self.name!r} expects images of shape {want}, got {tuple(x.shape)}")
        if x.shape[1] != c:
            raise ValueError(
                f"feature network {self.name!r} expects {c}-channel images {want}, got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); convert them first"
            )
        if tuple(x.shape[-2:]) != (h, w):
            if self.adapt is None:
                raise ValueError(
                    f"feature network {self.name!r} expects {h}x{w} images {want}, got "
                    f"{x.shape[-2]}x{x.shape[-1]}; pass adapt='center_crop' (for padded images) or "
                    f"adapt='resize' to adapt them"
                )
            x = self._adapt(x.float(), h, w)
        x = x.float()
        if x.numel() and (float(x.min()) < -1.5 or float(x.max()) > 1.5):
            raise ValueError(
                f"feature network {self.name!r} expects images in [-1, 1], got values in "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}] (scale uint8 images with x / 127.5 - 1)"
            )
        return x.clamp(-1, 1)  # samplers overshoot slightly; the classifier saw [-1, 1]

    def _adapt(self, x: Tensor, h: int, w: int) -> Tensor:
        return adapt_images(x, h, w, self.adapt)

    @torch.no_grad()
    def _batched(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        x = self.prepare(x)
        if x.shape[0] == 0:
            raise ValueError("no images given")
        return torch.cat([fn(x[i : i + self.batch_size]).double() for i in range(0, x.shape[0], self.batch_size)])

    def features(self, x: Tensor) -> Tensor:
        """Features (N, D) in float64."""
        out = self._batched(self._features, x)
        if out.dim() != 2:
            raise ValueError(f"feature network {self.name!r} returned shape {tuple(out.shape)}, expected (N, D)")
        return out

    def logits(self, x: Tensor) -> Tensor:
        """Class logits (N, K) in float64; only for classifiers."""
        if self._logits is None:
            raise ValueError(f"feature network {self.name!r} is not a classifier (no logits)")
        return self._batched(self._logits, x)

    def __call__(self, x: Tensor) -> Tensor:
        return self.features(x)

    def __repr__(self) -> str:
        return f"FeatureNet({self.name!r}, input_shape={self.input_shape}, adapt={self.adapt!r})"


def feature_net(
    spec: str | FeatureNet | nn.Module | Callable[[Tensor], Tensor],
    adapt: str | None = None,
    batch_size: int = 500,
    weights_dir: str | Path | None = None,
) -> FeatureNet:
    """Turn ``spec`` into a :class:`FeatureNet`.

    ``spec``: a shipped name (``"digits"``, ``"fashion_mnist"``); a :class:`FeatureNet`
    (returned as is); an ``nn.Module`` with a ``features`` method (``forward`` then gives
    logits; ``input_shape`` is read if present); or any callable ``x -> (B, D)``.
    """
    if isinstance(spec, FeatureNet):
        return spec
    if isinstance(spec, str):
        net = load_classifier(spec, weights_dir)
        return FeatureNet(net.features, net, net.input_shape, spec, adapt, batch_size)
    if isinstance(spec, nn.Module) and callable(getattr(spec, "features", None)):
        spec.eval()
        shape = getattr(spec, "input_shape", None)
        return FeatureNet(spec.features, spec, shape, type(spec).__name__, adapt, batch_size)
    if callable(spec):
        return FeatureNet(spec, None, None, getattr(spec, "__name__", "custom"), adapt, batch_size)
    raise TypeError(f"cannot use {type(spec).__name__} as a feature network")
