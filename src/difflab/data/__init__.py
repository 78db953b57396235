"""Data sets as tensors: 2-D toys, sklearn digits, MNIST-format IDX files (Fashion-MNIST by
default) and folders of images.

Image loaders return an :class:`ImageData` ``(images, labels)`` with images of shape
(N, C, H, W), float32 in [-1, 1], and labels int64 of shape (N,) (or ``None``), so
``x, y = digits()`` works.  :func:`batches` draws minibatches in an order that is a pure
function of (seed, step), so a resumed training run sees exactly the batches it would
have seen.  This package imports no diffusion code.
"""

from difflab.data.batches import batch_stream, batches, epoch_permutation
from difflab.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ImageData,
    digits,
    fashion_mnist,
    idx_dataset,
    image_folder,
    read_idx,
)
from difflab.data.toy2d import TOY_NAMES, toy2d

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "TOY_NAMES",
    "ImageData",
    "batch_stream",
    "batches",
    "digits",
    "epoch_permutation",
    "fashion_mnist",
    "idx_dataset",
    "image_folder",
    "read_idx",
    "toy2d",
]
