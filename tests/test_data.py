"""Data loaders: shapes, ranges, labels, IDX parsing, clear errors, resumable batch order."""

import gzip
import struct

import numpy as np
import pytest
import torch

from conftest import require_fashion_mnist
from difflab import data


def test_digits_range_shape_labels():
    x, y = data.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.shape == (1797,) and set(y.tolist()) == set(range(10))


def test_digits_split_and_upscale():
    tr, te = data.digits("train"), data.digits("test")
    assert len(tr.images) + len(te.images) == 1797
    # disjoint: no test image appears in train
    flat_tr = {tuple(r) for r in tr.images.flatten(1).tolist()}
    overlap = sum(tuple(r) in flat_tr for r in te.images.flatten(1).tolist())
    assert overlap < 10  # the data set itself has a few exact duplicates
    up = data.digits(size=16, limit=5)
    assert up.images.shape == (5, 1, 16, 16) and up.images.abs().max() <= 1


def _write_idx(path, arr, gz):
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    (gzip.open if gz else open)(path, "wb").write(head + arr.tobytes())


def test_idx_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(7, 5, 6))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", img, True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(7) % 3, False)
    arr = data.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert (arr == img).all()
    x, y = data.idx_dataset(tmp_path, "train", pad_to=8)
    assert x.shape == (7, 1, 8, 8) and y.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert torch.allclose(x[:, 0, 1:6, 1:7], torch.from_numpy(img).float() / 127.5 - 1)
    assert float(x[0, 0, 0, 0]) == -1  # padding is background
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        data.idx_dataset(tmp_path, "test")


def test_idx_corrupt(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(p)
    _write_idx(p, np.zeros((4, 3), np.uint8), False)
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(ValueError, match="promises shape"):
        data.read_idx(p)


def test_fashion_mnist_missing_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt install dataset-fashion-mnist.*data\.root"):
        data.fashion_mnist(root=tmp_path / "nowhere")


def test_fashion_mnist_debian():
    require_fashion_mnist()
    x, y = data.fashion_mnist(split="test", limit=100)
    assert x.shape == (100, 1, 28, 28) and y.shape == (100,) and int(y.min()) >= 0 and int(y.max()) <= 9
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, col in (("cat", 200), ("dog", 20)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (12, 9), (col, col, col)).save(tmp_path / cls / f"{i}.png")
    x, y = data.image_folder(tmp_path, size=4, channels=3)
    assert x.shape == (4, 3, 4, 4) and y.tolist() == [0, 0, 1, 1]
    assert torch.allclose(x[0], torch.full((3, 4, 4), 200 / 127.5 - 1), atol=1e-2)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        data.image_folder(tmp_path, size=4)
    with pytest.raises(FileNotFoundError, match="missing"):
        data.image_folder(tmp_path / "missing")


def test_toy2d():
    x = data.toy2d("moons", 100, seed=3)
    assert x.shape == (100, 2) and torch.equal(x, data.toy2d("moons", 100, seed=3))
    with pytest.raises(ValueError, match="valid"):
        data.toy2d("spirals", 10)


def test_batches_resume_exact():
    x = torch.arange(10).float()[:, None]
    y = torch.arange(10)
    full = [b[1] for _, b in zip(range(9), data.batches(x, y, 4, seed=5))]
    tail = [b[1] for _, b in zip(range(4), data.batches(x, y, 4, seed=5, start_step=5))]
    assert all(torch.equal(a, b) for a, b in zip(full[5:], tail))
    # each epoch is a permutation
    stream = torch.cat(full)[:30]
    for e in range(3):
        assert sorted(stream[10 * e : 10 * e + 10].tolist()) == list(range(10))
