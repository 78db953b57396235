"""Image data sets: sklearn digits, MNIST-format IDX files (Fashion-MNIST) and image folders.

Every loader returns :class:`ImageData` ``(images, labels)``: images float32 (N, C, H, W)
scaled to [-1, 1] (the data range of Ho et al. 2020, Sec. 3.3), labels int64 (N,) or None.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_SPLITS = ("train", "test", "all")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageData(NamedTuple):
    """Images (N, C, H, W) in [-1, 1] and labels (N,) or None; unpacks as ``x, y``."""

    images: Tensor
    labels: Tensor | None


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    return split


def _resize(x: Tensor, size: int | None) -> Tensor:
    """Resize (N, C, H, W) images to size x size: bilinear with antialiasing (for downscaling)."""
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


def _pad(x: Tensor, pad_to: int | None) -> Tensor:
    """Pad with the background value -1 to pad_to x pad_to (e.g. 28 -> 32 for U-Nets)."""
    if pad_to is None:
        return x
    h, w = x.shape[-2:]
    if pad_to < max(h, w):
        raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}x{w})")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    return F.pad(x, (left, pad_to - w - left, top, pad_to - h - top), value=-1.0)


def _limit(d: ImageData, limit: int | None) -> ImageData:
    if limit is None:
        return d
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    return ImageData(d.images[:limit], None if d.labels is None else d.labels[:limit])


# --- sklearn digits --------------------------------------------------------------------
def digits(
    split: str = "all",
    size: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> ImageData:
    """The 1797 8x8 handwritten digits of scikit-learn (UCI optdigits), embedded in the
    package, as (N, 1, 8, 8) images in [-1, 1] with labels 0..9.

    Args:
        split: ``all``, or ``train`` / ``test``: a fixed stratified-by-shuffle split with
            ``test_fraction`` of the images in the test part (the same for a given seed).
        size: upscale (bilinear) to size x size, e.g. 16 or 32; None keeps 8x8.
    """
    from sklearn.datasets import load_digits

    _check_split(split)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32))[:, None] / 16.0 * 2 - 1  # pixel values 0..16
    y = torch.from_numpy(d.target.astype(np.int64))
    if split != "all":
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        n_test = round(test_fraction * len(y))
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        x, y = x[idx], y[idx]
    return _limit(ImageData(_resize(x, size), y), limit)


# --- IDX files (MNIST format) ----------------------------------------------------------
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format; ``.gz`` is decompressed).

    Layout: two zero bytes, a type code, the number of dimensions, one big-endian int32 per
    dimension, then the data in C order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    n = int(np.prod(shape)) if shape else 1
    body = raw[4 + 4 * ndim :]
    if len(body) != n * dtype.itemsize:
        raise ValueError(f"{path}: IDX header promises shape {shape} ({n * dtype.itemsize} bytes), found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def idx_dataset(
    root: str | os.PathLike,
    split: str = "train",
    size: int | None = None,
    pad_to: int | None = None,
    limit: int | None = None,
) -> ImageData:
    """MNIST-format data from a directory holding ``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.

    Images become (N, 1, H, W) in [-1, 1]; ``pad_to`` pads with background (28 -> 32),
    ``size`` resizes; ``limit`` keeps the first N.
    """
    _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IDX data directory not found: {root}")
    parts = ["train", "test"] if split == "all" else [split]
    xs, ys = [], []
    for part in parts:
        prefix = "train" if part == "train" else "t10k"
        img_p, lab_p = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
        if img_p is None or lab_p is None:
            missing = f"{prefix}-images-idx3-ubyte[.gz]" if img_p is None else f"{prefix}-labels-idx1-ubyte[.gz]"
            raise FileNotFoundError(f"{root} holds no {missing} (needed for split {part!r})")
        img, lab = read_idx(img_p), read_idx(lab_p)
        if img.ndim != 3 or lab.ndim != 1 or img.shape[0] != lab.shape[0]:
            raise ValueError(
                f"{img_p} / {lab_p}: expected (N, H, W) images and (N,) labels, got {img.shape} and {lab.shape}"
            )
        xs.append(torch.from_numpy(img.astype(np.float32))[:, None] / 127.5 - 1)
        ys.append(torch.from_numpy(lab.astype(np.int64)))
    x, y = torch.cat(xs), torch.cat(ys)
    if limit is not None:  # cut before resizing: cheaper
        x, y = x[:limit], y[:limit]
    return _limit(ImageData(_pad(_resize(x, size), pad_to), y), limit)


def fashion_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    size: int | None = None,
    pad_to: int | None = None,
    limit: int | None = None,
) -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017): 60 000 + 10 000 28x28 grey images in 10 classes.

    ``root`` defaults to ``$DIFFLAB_FASHION_MNIST`` or Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    root = Path(root or os.environ.get("DIFFLAB_FASHION_MNIST") or FASHION_MNIST_DIR)
    if not root.is_dir() or _find(root, "train-images-idx3-ubyte") is None:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}. Install it with `sudo apt install dataset-fashion-mnist` "
            f"(Debian/Ubuntu, puts it in {FASHION_MNIST_DIR}), or download the four *-ubyte.gz files from "
            "https://github.com/zalandoresearch/fashion-mnist and point to their directory with "
            "data.root=DIR (config / --set) or the DIFFLAB_FASHION_MNIST environment variable."
        )
    return idx_dataset(root, split=split, size=size, pad_to=pad_to, limit=limit)


# --- a folder of images ---------------------------------------------------------------
def image_folder(
    root: str | os.PathLike,
    size: int = 32,
    channels: int = 3,
    limit: int | None = None,
) -> ImageData:
    """Every image under ``root`` (recursively), centre-cropped to a square and resized to
    size x size, with ``channels`` 1 (grey) or 3 (RGB).  If the images sit in
    sub-folders, those name the classes (sorted) and give the labels; otherwise labels are None.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(_IMAGE_EXTS))}) under {root}")
    if limit is not None:
        files = files[:limit]
    classes = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    labelled = bool(classes) and all(p.parent != root for p in files)
    xs = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((size, size), Image.Resampling.BICUBIC if s < size else Image.Resampling.LANCZOS)
                a = np.asarray(im, dtype=np.float32)
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
        xs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(xs)) / 127.5 - 1
    y = None
    if labelled:
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[p.parent.relative_to(root).parts[0]] for p in files], dtype=torch.int64)
    return ImageData(x, y)
