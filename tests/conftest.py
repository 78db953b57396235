"""Test-wide settings.  The suite works on small tensors, where torch's intra-op thread pool
costs more in synchronisation than it gains (on a busy 2-core machine, 40x more); one
thread keeps every test fast and its timing steady.  DIFFLAB_TEST_THREADS overrides."""

import os
import sys

import torch

torch.set_num_threads(int(os.environ.get("DIFFLAB_TEST_THREADS", "1")))
sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py
