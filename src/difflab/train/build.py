"""Config -> objects: data, schedule, network, denoiser, loss, time grid.  The only place
(with the CLI) where names become classes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from difflab import data as dl_data
from difflab import nn as dl_nn
from difflab import schedules, solvers, timesteps
from difflab.denoiser import Denoiser
from difflab.losses import DiffusionLoss
from difflab.schedules import Schedule
from difflab.train.config import Config, ConfigError, DataConfig, ModelConfig, SampleConfig

__all__ = [
    "build_data",
    "build_denoiser",
    "build_loss",
    "build_network",
    "build_schedule",
    "build_solver",
    "caption_bank",
    "prompt_context",
    "sample_grid",
]


def build_data(cfg: DataConfig) -> tuple[Tensor, Tensor | None]:
    """(data, labels): images (N, C, H, W) in [-1, 1] or points (N, 2)."""
    if cfg.name == "digits":
        return tuple(dl_data.digits(cfg.split, size=cfg.size, limit=cfg.limit))  # type: ignore[return-value]
    if cfg.name == "fashion_mnist":
        return tuple(dl_data.fashion_mnist(cfg.root, cfg.split, cfg.size, cfg.pad_to, cfg.limit))  # type: ignore[return-value]
    if cfg.name == "idx":
        if not cfg.root:
            raise ConfigError("data.name = 'idx' needs data.root, the directory of the *-ubyte files")
        return tuple(dl_data.idx_dataset(cfg.root, cfg.split, cfg.size, cfg.pad_to, cfg.limit))  # type: ignore[return-value]
    if cfg.name == "folder":
        if not cfg.root:
            raise ConfigError("data.name = 'folder' needs data.root, the directory of images")
        return tuple(dl_data.image_folder(cfg.root, cfg.size or 32, cfg.channels, cfg.limit))  # type: ignore[return-value]
    if cfg.toy not in dl_data.TOY_NAMES:
        raise ConfigError(f"data.toy = {cfg.toy!r} is not one of {', '.join(dl_data.TOY_NAMES)}")
    return dl_data.toy2d(cfg.toy, cfg.n, seed=0), None


def build_schedule(name: str, args: dict[str, Any]) -> Schedule:
    try:
        return schedules.get(name, **args)
    except ValueError as e:
        raise ConfigError(f"schedule: {e}") from None


def build_network(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int | None = None) -> nn.Module:
    """The network ``cfg.network`` for data of per-item ``shape``: the arguments its constructor
    takes from the data (``in_channels`` with ``image_size`` / ``input_size`` for images, ``dim``
    for flat data) are filled in unless set; ``num_classes = true`` becomes the data's class count;
    ``learned_variance`` doubles the outputs; text conditioning sets ``context_dim``."""
    import inspect

    if cfg.network not in dl_nn.NETWORKS:
        raise ConfigError(f"model.network = {cfg.network!r} is not one of {', '.join(sorted(dl_nn.NETWORKS))}")
    params = inspect.signature(dl_nn.NETWORKS[cfg.network]).parameters
    args = dict(cfg.args)
    size_key = next((k for k in ("image_size", "input_size") if k in params), None)
    if size_key is not None:
        if len(shape) != 3:
            raise ConfigError(f"model.network = {cfg.network!r} needs image data, got items of shape {shape}")
        args.setdefault("in_channels", shape[0])
        args.setdefault(size_key, shape[1])
        if args["in_channels"] != shape[0] or args[size_key] != shape[1]:
            raise ConfigError(
                f"model.args in_channels={args['in_channels']}, {size_key}={args[size_key]} do not match the data {shape}"
            )
    elif "dim" in params:
        if len(shape) != 1:
            raise ConfigError(f"model.network = {cfg.network!r} needs flat data (toy2d), got items of shape {shape}")
        args.setdefault("dim", shape[0])
    if cfg.learned_variance:
        if "learned_variance" in params:
            args["learned_variance"] = True
        elif "out_dim" in params:
            args["out_dim"] = 2 * shape[0]
        else:
            raise ConfigError(f"model.learned_variance: network {cfg.network!r} cannot predict variances")
    if num_classes is not None and args.get("num_classes") is True:
        args["num_classes"] = num_classes
    if cfg.captions is not None:
        if "context_dim" not in params:
            raise ConfigError(
                f"model.captions (text conditioning) needs a network with cross-attention, not {cfg.network!r}"
            )
        from difflab.text import TextEncoder

        args.setdefault("context_dim", TextEncoder.dim)
    try:
        return dl_nn.build(cfg.network, **args)
    except ValueError as e:
        raise ConfigError(f"model.args: {e}") from None


def build_denoiser(net: nn.Module, schedule: Schedule, cfg: ModelConfig) -> Denoiser:
    try:
        return Denoiser(net, schedule, cfg.prediction, cfg.time_input, cfg.learned_variance)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def build_loss(cfg: Config, schedule: Schedule) -> DiffusionLoss:
    lc = cfg.loss
    target = lc.target or cfg.model.prediction
    if target == "edm":
        target = "x0"  # the EDM denoiser's error is measured on x0 (Karras et al. 2022, eq. 2)
    try:
        return DiffusionLoss(
            schedule,
            kind=lc.kind,
            target=target,
            weighting=lc.weighting,
            time_sampling=lc.time_sampling,
            min_snr_gamma=lc.min_snr_gamma,
            sigma_data=lc.sigma_data,
            p_mean=lc.p_mean,
            p_std=lc.p_std,
            vlb_weight=lc.vlb_weight,
        )
    except ValueError as e:
        raise ConfigError(f"loss: {e}") from None


def build_solver(name: str, args: dict[str, Any]) -> solvers.Solver:
    try:
        return solvers.get(name, **args)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"sample.solver: {e}") from None


def sample_grid(cfg: SampleConfig, schedule: Schedule, steps: int | None = None) -> Tensor:
    """The sampling time grid: ``cfg.grid`` by name, or by default ``trailing`` for discrete
    schedules (ends at t = 0) and ``log_snr_uniform`` down to t_min otherwise."""
    steps = steps or cfg.steps
    name = cfg.grid
    if name == "default":
        name = "trailing" if schedule.T is not None else "log_snr_uniform"
    try:
        return timesteps.get(name, schedule, steps)
    except ValueError as e:
        raise ConfigError(f"sample.grid: {e}") from None


def caption_bank(model: ModelConfig, num_classes: int | None):
    """The caption embeddings a text-conditional model trains on (checks the label count)."""
    from difflab.text import CaptionBank, TextEncoder, caption_set

    try:
        nouns = caption_set(model.captions)
    except ValueError as e:
        raise ConfigError(f"model.captions: {e}") from None
    if num_classes is None:
        raise ConfigError("model.captions (text conditioning) needs a labelled data set")
    if num_classes > len(nouns):
        raise ConfigError(
            f"model.captions = {model.captions!r} captions {len(nouns)} classes, the data has {num_classes}"
        )
    return CaptionBank(TextEncoder(model.text_max_length), nouns)


def prompt_context(cfg: Config, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Token embeddings of ``prompts`` for a text-conditional model trained with ``cfg``;
    the empty prompt is the unconditional (null) prompt."""
    if cfg.model.captions is None:
        raise ValueError("this model was trained without text (model.captions is not set); it takes no prompt")
    from difflab.text import TextEncoder

    return TextEncoder(cfg.model.text_max_length).encode(prompts)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
