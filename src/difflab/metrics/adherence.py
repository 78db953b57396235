"""How well samples follow a spatial control: F1 between binary edge maps.

Precision = the fraction of the sample's edge pixels within ``tolerance`` pixels (Chebyshev
distance) of a hint edge pixel, recall = the fraction of hint edge pixels within ``tolerance`` of
a sample edge pixel, F1 their harmonic mean (the boundary F-measure of Martin et al. 2004 with a
square tolerance window instead of a bipartite matching).  ControlNet's edge-conditioned
evaluations (Zhang et al. 2023, Sec. 4.3) measure the same agreement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["edge_f1"]


def _dilate(e: Tensor, r: int) -> Tensor:
    return F.max_pool2d(e, 2 * r + 1, stride=1, padding=r) if r > 0 else e


def edge_f1(hint_edges: Tensor, sample_edges: Tensor, tolerance: int = 1) -> Tensor:
    """Per-image F1 (B,) between binary edge maps (B, 1, H, W); 1 where both maps are empty."""
    if hint_edges.shape != sample_edges.shape or hint_edges.dim() != 4:
        raise ValueError(
            f"edge maps must be two (B, 1, H, W) tensors of one shape, got {tuple(hint_edges.shape)} "
            f"and {tuple(sample_edges.shape)}"
        )
    a, b = (hint_edges > 0.5).float(), (sample_edges > 0.5).float()
    na, nb = a.sum((1, 2, 3)), b.sum((1, 2, 3))
    prec = (b * _dilate(a, tolerance)).sum((1, 2, 3)) / nb.clamp_min(1)
    rec = (a * _dilate(b, tolerance)).sum((1, 2, 3)) / na.clamp_min(1)
    f1 = 2 * prec * rec / (prec + rec).clamp_min(1e-12)
    return torch.where((na == 0) & (nb == 0), torch.ones_like(f1), f1)
