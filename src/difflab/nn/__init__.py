"""Networks only: they import torch, never difflab's diffusion code.

Every network keeps its constructor arguments in ``net.config`` (JSON-serialisable), so a
checkpoint can rebuild it with :func:`build`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from difflab.nn.autoencoder import AutoencoderKL
from difflab.nn.controlnet import ControlledUNet, ControlNet
from difflab.nn.discriminator import PatchDiscriminator
from difflab.nn.dit import DiT
from difflab.nn.embeddings import FourierEmbedding, SinusoidalEmbedding
from difflab.nn.mlp import MLP
from difflab.nn.noisy_classifier import NoisyClassifier
from difflab.nn.unet import UNet

NETWORKS: dict[str, type[nn.Module]] = {
    "autoencoder_kl": AutoencoderKL,
    "controlnet": ControlNet,
    "dit": DiT,
    "mlp": MLP,
    "noisy_classifier": NoisyClassifier,
    "patch_discriminator": PatchDiscriminator,
    "unet": UNet,
}

__all__ = [
    "MLP",
    "NETWORKS",
    "AutoencoderKL",
    "ControlNet",
    "ControlledUNet",
    "DiT",
    "FourierEmbedding",
    "NoisyClassifier",
    "PatchDiscriminator",
    "SinusoidalEmbedding",
    "UNet",
    "build",
    "count_parameters",
]


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a network by name (a key of :data:`NETWORKS`) with the given constructor arguments."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid: {', '.join(sorted(NETWORKS))}")
    try:
        return NETWORKS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for network {name!r}: {e}") from None


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
