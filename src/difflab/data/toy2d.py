"""2-D toy data sets (moons, swiss roll, checkerboard, eight Gaussians) as float32 tensors."""

from __future__ import annotations

import torch
from torch import Tensor

TOY_NAMES = ("moons", "swiss_roll", "checkerboard", "eight_gaussians")


def toy2d(name: str, n: int, seed: int | None = 0) -> Tensor:
    """``n`` points of the 2-D data set ``name`` (shape (n, 2), float32), reproducible from ``seed``.

    The generators live in :mod:`difflab.toy` next to their exact densities; this is the
    data-set front end (names checked, dtype fixed).
    """
    from difflab import toy  # the generators are pure sampling code; imported lazily

    if name not in TOY_NAMES:
        raise ValueError(f"unknown 2-D data set {name!r}; valid: {', '.join(TOY_NAMES)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return toy.DATASETS_2D[name](n, generator=g).float()
