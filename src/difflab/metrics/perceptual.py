"""A perceptual distance in the form of LPIPS (Zhang et al. 2018, "The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric", eq. 1).

For images x, x0 and the activations y^l, y0^l (C_l x H_l x W_l) of layers l of a network,
each unit-normalised along the channels (y_hat = y / ||y||_2 at every pixel),

    d(x, x0) = sum_l 1/(H_l W_l) sum_{h,w} sum_c w_lc (y_hat^l_hwc - y0_hat^l_hwc)^2,

with non-negative per-layer, per-channel linear weights w_l (LPIPS' "lin" layers applied to the
squared differences, as in its reference code; eq. 1 writes the same as ||w_l * (y_hat - y0_hat)||^2).

**What this is and is not.**  LPIPS proper uses ImageNet backbones (AlexNet, VGG) and weights
w_l calibrated on human similarity judgements (the BAPPS data set).  Neither can be downloaded
here, so the backbones are difflab's shipped feature classifiers (``"fashion_mnist"``: 28x28,
``"digits"``: 8x8; :mod:`difflab.metrics.features`), tapped after each conv block's ReLU, and the
weights are all ones unless you pass your own (LPIPS' uncalibrated "baseline" variant).  It keeps
LPIPS' form and its central property -- deep features track structure, not pixels: a one-pixel
shift or a slight blur of an image is closer to it than Gaussian noise of the same L2 norm
(``tests/test_perceptual.py`` checks this on Fashion-MNIST test images) -- but its numbers are
not LPIPS numbers and have not been validated against human judgements.

The distance is differentiable in both images (the backbone is frozen), so it serves as a
training loss (the autoencoder's perceptual term, LPIPS-style distillation losses).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab.metrics.features import adapt_images, load_classifier

__all__ = ["PerceptualDistance", "perceptual_distance"]

_EPS = 1e-10  # LPIPS' normalize_tensor


def _unit(y: Tensor) -> Tensor:
    """Unit-normalise along the channels at every pixel (Zhang et al. 2018, Sec. 3)."""
    return y / (y.square().sum(dim=1, keepdim=True).sqrt() + _EPS)


class PerceptualDistance(nn.Module):
    """``PerceptualDistance(feature_net)(a, b) -> (B,)``: one distance per image pair.

    Args:
        feature_net: a shipped classifier name (``"fashion_mnist"``, ``"digits"``) or a module
            with ``layer_features(x) -> list of (B, C_l, H_l, W_l)`` (e.g. a
            :class:`~difflab.nn.classifier.ConvClassifier`) and optionally ``input_shape``.
        layers: indices of the taps to use (default: all of them).
        weights: one non-negative weight vector (C_l,) per used layer; default all ones.
        adapt: images of another size than the network's: ``None`` (an error), ``"resize"`` or
            ``"center_crop"`` (e.g. Fashion-MNIST padded to 32x32).
        check_range: reject images outside [-1.5, 1.5] (they are meant to be in [-1, 1]); turn
            it off for a training loss on unconstrained outputs.
        weights_dir: where the shipped classifiers live (default: the package's).

    The backbone is frozen and stays in eval mode (its BatchNorm statistics) whatever mode
    the surrounding model is in.
    """

    def __init__(
        self,
        feature_net: str | nn.Module = "fashion_mnist",
        layers: Sequence[int] | None = None,
        weights: Sequence[Tensor] | None = None,
        adapt: str | None = None,
        check_range: bool = True,
        weights_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if isinstance(feature_net, str):
            self.name = feature_net
            net: nn.Module = load_classifier(feature_net, weights_dir)
        elif isinstance(feature_net, nn.Module) and callable(getattr(feature_net, "layer_features", None)):
            self.name = type(feature_net).__name__
            net = feature_net
        else:
            raise TypeError(
                f"feature_net must be a shipped name or a module with layer_features(x), got {type(feature_net).__name__}"
            )
        self.net = net.eval().requires_grad_(False)
        self.input_shape: tuple[int, int, int] | None = getattr(net, "input_shape", None)
        if adapt not in (None, "resize", "center_crop"):
            raise ValueError(f"adapt must be None, 'resize' or 'center_crop', got {adapt!r}")
        self.adapt, self.check_range = adapt, check_range
        if self.input_shape is None:
            raise ValueError(f"feature network {self.name!r} has no input_shape (C, H, W); cannot check images")
        with torch.no_grad():
            widths = [f.shape[1] for f in net.layer_features(torch.zeros(1, *self.input_shape))]
        self.layers = list(range(len(widths))) if layers is None else [int(i) for i in layers]
        bad = [i for i in self.layers if not 0 <= i < len(widths)]
        if bad or not self.layers:
            raise ValueError(f"layers {list(layers or [])} must be a non-empty subset of 0..{len(widths) - 1}")
        if weights is None:
            weights = [torch.ones(widths[i]) for i in self.layers]
        if len(weights) != len(self.layers):
            raise ValueError(f"need one weight vector per layer ({len(self.layers)}), got {len(weights)}")
        for i, (layer, w) in enumerate(zip(self.layers, weights)):
            w = torch.as_tensor(w, dtype=torch.float32)
            if w.shape != (widths[layer],) or bool((w < 0).any()):
                raise ValueError(
                    f"weights[{i}] must be {widths[layer]} non-negative numbers (layer {layer}), got shape {tuple(w.shape)}"
                )
            self.register_buffer(f"w{i}", w)

    def train(self, mode: bool = True) -> PerceptualDistance:
        super().train(mode)
        self.net.eval()  # the backbone's BatchNorm keeps its running statistics
        return self

    def prepare(self, x: Tensor, what: str) -> Tensor:
        c, h, w = self.input_shape  # type: ignore[misc]
        want = f"(B, {c}, {h}, {w})"
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != c:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"perceptual distance ({self.name}): {what} must be images {want}, got {got}")
        if tuple(x.shape[-2:]) != (h, w):
            if self.adapt is None:
                raise ValueError(
                    f"perceptual distance ({self.name}): {what} are {x.shape[-2]}x{x.shape[-1]}, the network takes "
                    f"{h}x{w} {want}; pass adapt='center_crop' (padded images) or adapt='resize'"
                )
            x = adapt_images(x, h, w, self.adapt)
        if self.check_range and x.numel():
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if lo < -1.5 or hi > 1.5:
                raise ValueError(
                    f"perceptual distance ({self.name}): {what} should be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]"
                )
        return x.float()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape != b.shape:
            raise ValueError(
                f"perceptual distance: image batches differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        a, b = self.prepare(a, "a"), self.prepare(b, "b")
        n = a.shape[0]
        # one pass over both batches: BatchNorm is in eval mode, so the halves do not interact
        feats = self.net.layer_features(torch.cat([a, b]))
        d = a.new_zeros(n)
        for i, layer in enumerate(self.layers):
            fa, fb = _unit(feats[layer][:n]), _unit(feats[layer][n:])
            w = getattr(self, f"w{i}")
            # sum_c w_c (delta_c)^2, averaged over the H_l x W_l positions
            d = d + torch.einsum("bchw,c->b", (fa - fb).square(), w) / (fa.shape[2] * fa.shape[3])
        return d


@functools.lru_cache(maxsize=4)
def _shipped(name: str, adapt: str | None) -> PerceptualDistance:
    return PerceptualDistance(name, adapt=adapt)


def perceptual_distance(
    a: Tensor,
    b: Tensor,
    feature_net: str | nn.Module | PerceptualDistance = "fashion_mnist",
    *,
    adapt: str | None = None,
    batch_size: int = 500,
) -> Tensor:
    """LPIPS-form distance (Zhang et al. 2018, eq. 1) between image pairs ``a[i]``, ``b[i]``:
    (B, C, H, W) in [-1, 1] at the feature network's size (28x28 for ``"fashion_mnist"``, the
    default; 8x8 for ``"digits"``).  Returns (B,) float32 distances, differentiable in a and b.

    ``feature_net``: a shipped name, a module with ``layer_features``, or a configured
    :class:`PerceptualDistance` (layers, weights).  See the module docstring for what this
    distance is and is not (LPIPS' form with difflab's small backbones and uniform weights,
    not LPIPS' calibrated weights)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(feature_net, PerceptualDistance):
        dist = feature_net
    elif isinstance(feature_net, str):
        dist = _shipped(feature_net, adapt)
    else:
        dist = PerceptualDistance(feature_net, adapt=adapt)
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape != b.shape:
        raise ValueError(f"perceptual distance: image batches differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}")
    dist = dist.to(a.device) if isinstance(a, Tensor) else dist
    if not isinstance(a, Tensor) or a.shape[0] <= batch_size:
        return dist(a, b)
    return torch.cat([dist(a[i : i + batch_size], b[i : i + batch_size]) for i in range(0, a.shape[0], batch_size)])
