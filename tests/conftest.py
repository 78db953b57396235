"""Test-wide settings.  The suite works on small tensors, where torch's intra-op thread pool
costs more in synchronisation than it gains (on a busy 2-core machine, 40x more); one
thread keeps every test fast and its timing steady.  DIFFLAB_TEST_THREADS overrides."""

import os
import sys

import torch

torch.set_num_threads(int(os.environ.get("DIFFLAB_TEST_THREADS", "1")))
sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py


def require_fashion_mnist() -> None:
    """Skip on a developer machine without Debian's Fashion-MNIST; fail under CI, whose
    .ci/run installs it, so a missing data set can never hide a test there."""
    import pytest

    from difflab import data

    if (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"Fashion-MNIST is missing from {data.FASHION_MNIST_DIR} under CI (.ci/run installs it)")
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def require_module(name: str, extra: str):
    """Import an optional dependency, or skip on a developer machine without it; fail under CI,
    whose test install (Makefile EXTRAS) has every extra the tests use."""
    import importlib

    import pytest

    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing under CI (the test install has the [{extra}] extra)")
        pytest.skip(f"{name} not installed (pip install -e .[{extra}])")
