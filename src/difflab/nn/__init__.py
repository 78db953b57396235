"""Networks only: they import torch, never difflab's diffusion code."""
