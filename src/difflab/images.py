"""Pictures people look at: sample grids, denoising strips, loss curves and 2-D scatter plots (PNG)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["grid_image", "save_grid", "save_loss_curve", "save_points", "save_strip", "to_unit"]


def to_unit(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1] (clipped), float32 on the CPU."""
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


def grid_image(x: Tensor, nrow: int | None = None, scale: int = 1, pad: int = 1) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into one PIL image (nearest-neighbour ``scale``)."""
    x = to_unit(x)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    canvas = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    arr = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr[:, :, :3], "L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def _save(img: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(x: Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int | None = None) -> Path:
    """Save a sample grid; small images are enlarged to about 32 px each by default."""
    scale = scale or max(1, 32 // x.shape[-1])
    return _save(grid_image(x, nrow, scale), path)


def strip_frames(frames: Sequence[Tensor], final: Tensor, cols: int = 10) -> list[Tensor]:
    """``cols`` frames of a denoising run, evenly spaced from the first state to ``final`` (the
    sample), clipped to [-1, 1]: the columns of a denoising strip."""
    idx = sorted({round(i * (len(frames) - 1) / (cols - 1)) for i in range(cols)}) if len(frames) > 1 else [0]
    return [f.clamp(-1, 1) for f in [*(frames[i] for i in idx[:-1]), final]]


def strip_image(frames: Sequence[Tensor], scale: int | None = None) -> Image.Image:
    """A denoising strip: frame k (a batch (N, C, H, W)) in column k, sample i in row i."""
    stacked = torch.stack([f.detach().float().cpu() for f in frames], 1)  # (N, K, C, H, W)
    k = stacked.shape[1]
    scale = scale or max(1, 32 // stacked.shape[-1])
    return grid_image(stacked.flatten(0, 1), nrow=k, scale=scale)


def save_strip(frames: Sequence[Tensor], path: str | os.PathLike, scale: int | None = None) -> Path:
    """Save a denoising strip (:func:`strip_image`)."""
    return _save(strip_image(frames, scale), path)


def save_loss_curve(
    steps: Sequence[int], losses: Sequence[float], path: str | os.PathLike, title: str = "training loss"
) -> Path:
    """Loss against step (log scale, with a moving average); matplotlib when available, else a plain PIL plot."""
    steps_a, loss_a = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    k = max(1, len(loss_a) // 50)
    smooth = np.convolve(loss_a, np.ones(k) / k, mode="valid") if len(loss_a) >= k else loss_a
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _save(_pil_plot(loss_a, smooth), path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps_a, loss_a, lw=0.5, alpha=0.4, label="loss")
    ax.plot(steps_a[k - 1 :][: len(smooth)], smooth, lw=1.5, label=f"moving average ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _pil_plot(raw: np.ndarray, smooth: np.ndarray, w: int = 600, h: int = 350) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    y = np.log(np.clip(raw, 1e-12, None))
    lo, hi = float(y.min()), float(y.max()) + 1e-9

    def pts(v: np.ndarray) -> list[tuple[float, float]]:
        lv = np.log(np.clip(v, 1e-12, None))
        xs = np.linspace(40, w - 10, len(v))
        return [(float(a), float(h - 30 - (b - lo) / (hi - lo) * (h - 50))) for a, b in zip(xs, lv)]

    d.rectangle([40, 20, w - 10, h - 30], outline="black")
    if len(raw) > 1:
        d.line(pts(raw), fill=(170, 190, 230), width=1)
        d.line(pts(smooth), fill=(20, 60, 200), width=2)
    d.text((45, 3), f"loss (log scale) {np.exp(lo):.3g} .. {np.exp(hi):.3g}", fill="black")
    return img


def points_image(x: Tensor, lim: float = 3.0, size: int = 300) -> Image.Image:
    """A 2-D scatter plot of points (N, 2) as a density image on [-lim, lim]^2."""
    p = x.detach().float().cpu().numpy()
    hist, _, _ = np.histogram2d(p[:, 1], p[:, 0], bins=size, range=[[-lim, lim], [-lim, lim]])
    img = 255 - np.clip(hist / max(1.0, np.percentile(hist[hist > 0], 95) if (hist > 0).any() else 1) * 255, 0, 255)
    return Image.fromarray(img[::-1].astype(np.uint8), "L")


def save_points(x: Tensor, path: str | os.PathLike, lim: float = 3.0, size: int = 300) -> Path:
    """Save a 2-D scatter plot of points (:func:`points_image`)."""
    return _save(points_image(x, lim, size), path)
