"""Control hints computed from images with numpy / scipy: edge maps and silhouettes.

ControlNet (Zhang et al. 2023, Sec. 4) conditions on maps made from the training images by
fixed detectors; for one-channel Fashion-MNIST-sized images difflab has

- ``sobel``: the Sobel gradient magnitude, scaled to [0, 1] per image (Sobel & Feldman 1968);
- ``edges``: Canny-style binary edges (Canny 1986): Gaussian smoothing, Sobel gradients,
  non-maximum suppression along the gradient direction (quantised to 4 directions) and
  hysteresis between a low and a high threshold (fractions of the image's largest gradient);
- ``silhouette``: the object's mask, pixels brighter than a threshold with the holes filled.

Every function takes images (B, C, H, W) in [-1, 1] (the data convention; C > 1 is averaged to
grey) as a torch tensor or numpy array and returns float32 hints (B, 1, H, W) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["HINTS", "edges", "hint", "silhouette", "sobel"]


def _grey(images: Tensor | np.ndarray) -> np.ndarray:
    x = images.detach().float().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"hints need images (B, C, H, W) in [-1, 1], got shape {x.shape}")
    return ((x.mean(1) + 1) / 2).clip(0, 1).astype(np.float64)  # (B, H, W) in [0, 1]


def _out(h: np.ndarray) -> Tensor:
    return torch.from_numpy(h.astype(np.float32))[:, None]


def _gradients(g: np.ndarray, blur: float) -> tuple[np.ndarray, np.ndarray]:
    if blur > 0:
        g = ndimage.gaussian_filter(g, sigma=(0, blur, blur), mode="nearest")

    # Sobel = derivative [-1, 0, 1] along one image axis, smoothing [1, 2, 1] along the other
    # (ndimage.sobel would also smooth across the batch axis)
    def sob(axis: int, other: int) -> np.ndarray:
        d = ndimage.correlate1d(g, [-1.0, 0.0, 1.0], axis=axis, mode="nearest")
        return ndimage.correlate1d(d, [1.0, 2.0, 1.0], axis=other, mode="nearest")

    return sob(2, 1), sob(1, 2)


def sobel(images: Tensor | np.ndarray, blur: float = 0.0) -> Tensor:
    """Sobel gradient magnitude, each image divided by its maximum (a flat image gives zeros)."""
    gx, gy = _gradients(_grey(images), blur)
    mag = np.hypot(gx, gy)
    peak = mag.reshape(mag.shape[0], -1).max(1)[:, None, None]
    return _out(np.divide(mag, peak, out=np.zeros_like(mag), where=peak > 0))


def _non_max_suppression(mag: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep pixels whose magnitude is a maximum along the gradient direction (0, 45, 90, 135 deg)."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(int) % 4  # 0: horizontal gradient, 1: 45 deg, 2: vertical, 3: 135 deg
    p = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
    H, W = mag.shape[1:]

    def shifted(dy: int, dx: int) -> np.ndarray:
        return p[:, 1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]

    # neighbours along the gradient: (dy, dx) and its opposite, in array (row, col) coordinates
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros_like(mag, dtype=bool)
    for s, (dy, dx) in offsets.items():
        sel = sector == s
        # strict on one side: of two equal maxima across a step edge only one survives
        keep |= sel & (mag > shifted(dy, dx)) & (mag >= shifted(-dy, -dx))
    return keep & (mag > 0)


def edges(images: Tensor | np.ndarray, low: float = 0.15, high: float = 0.35, blur: float = 0.6) -> Tensor:
    """Canny-style edges (Canny 1986): binary (B, 1, H, W).  ``low`` and ``high`` are hysteresis
    thresholds as fractions of each image's largest gradient magnitude; ``blur`` is the Gaussian
    smoothing's standard deviation in pixels."""
    if not 0 <= low <= high <= 1:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    gx, gy = _gradients(_grey(images), blur)
    mag = np.hypot(gx, gy)
    thin = _non_max_suppression(mag, gx, gy)
    peak = mag.reshape(mag.shape[0], -1).max(1)[:, None, None]
    strong = thin & (mag >= high * peak) & (peak > 0)
    weak = thin & (mag >= low * peak) & (peak > 0)
    out = np.zeros_like(mag)
    for i in range(mag.shape[0]):  # hysteresis: weak edges 8-connected to a strong one
        lab, n = ndimage.label(weak[i], structure=np.ones((3, 3)))
        if n:
            good = np.unique(lab[strong[i]])
            out[i] = np.isin(lab, good[good > 0])
    return _out(out)


def silhouette(images: Tensor | np.ndarray, threshold: float = 0.05) -> Tensor:
    """The object's silhouette: pixels brighter than ``threshold`` (in [0, 1] grey levels; the
    Fashion-MNIST background is 0), holes filled (binary (B, 1, H, W))."""
    g = _grey(images) > threshold
    return _out(np.stack([ndimage.binary_fill_holes(m) for m in g]).astype(np.float64))


HINTS: dict[str, Callable[..., Tensor]] = {"edges": edges, "sobel": sobel, "silhouette": silhouette}


def hint(name: str, images: Tensor | np.ndarray, **kw) -> Tensor:
    """The hint ``name`` (``edges``, ``sobel``, ``silhouette``) of ``images``."""
    if name not in HINTS:
        raise ValueError(f"unknown hint {name!r}; valid: {', '.join(HINTS)}")
    return HINTS[name](images, **kw)
