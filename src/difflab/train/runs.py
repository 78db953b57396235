"""Loading trained runs: a run directory (or one ``checkpoints/step_*`` directory) becomes the
:class:`~difflab.train.models.Model` its objective samples with.

A checkpoint records the objective that made it, its data spec, its config and the runs it
depends on (by checkpoint path and checksum), so ``load_run`` needs nothing else: the same call
serves a pixel diffusion model, a distilled student, a latent model (whose autoencoder it
loads) or any other objective's generator.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from difflab import nn as dl_nn
from difflab.schedules import Schedule
from difflab.train import objectives
from difflab.train.checkpoint import CheckpointError, load_checkpoint
from difflab.train.config import Config, ConfigError, from_dict
from difflab.train.models import DiffusionModel, Model, item_shape
from difflab.train.objectives.base import DataSpec, Dependencies, Objective

__all__ = ["load_model", "load_objective", "load_run"]


def _spec(state: dict[str, Any], net: nn.Module | None) -> DataSpec:
    if "data_spec" in state:
        return DataSpec.from_json(state["data_spec"])
    # checkpoints written before objectives: the network's config describes the data
    k = getattr(net, "config", {}).get("num_classes") if net is not None else None
    return DataSpec(item_shape(net), int(k) if k else None, state.get("config", {}).get("data", {}).get("name", ""))


def load_objective(
    path: str | os.PathLike, use_ema: bool = True, deps: dict[str, Any] | None = None
) -> tuple[Objective, dict[str, Any]]:
    """(the objective rebuilt for sampling with the checkpoint's weights, the checkpoint's state).

    The primary module gets the EMA weights (``use_ema``) or the raw ones; ``deps`` replaces
    recorded dependencies by ready objects."""
    part = "ema" if use_ema else "model"
    state, t = load_checkpoint(path, parts=(part, "modules", "extra"))
    where = f"{state['path']}/state.json"
    try:
        cfg = from_dict(state["config"], where)
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{state['path']} is not a usable difflab checkpoint: {e}") from None
    name = state.get("objective", cfg.objective.name)
    try:
        cls = objectives.get(name)
    except ConfigError:
        raise CheckpointError(
            f"{state['path']} was made by objective {name!r}, which this difflab does not have "
            f"(it has: {', '.join(objectives.names())})"
        ) from None
    net = None
    if state.get("network") and state.get("net_config") is not None:
        try:
            net = dl_nn.build(state["network"], **state["net_config"])
        except ValueError as e:
            raise CheckpointError(f"{state['path']}: its network does not rebuild: {e}") from None
    recorded = state.get("depends", {})
    dep = Dependencies(given=dict(deps or {}), recorded={k: v for k, v in recorded.items() if k not in (deps or {})})
    try:
        obj = cls(cfg, _spec(state, net), dep, primary=net, for_training=False)
        obj.primary_module.load_state_dict(t[part])
        if "modules" in t:
            obj.load_owned_state(t["modules"])
        if "extra" in t:
            obj.load_extra_state(t["extra"])
    except (KeyError, RuntimeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{state['path']} is not a usable difflab model checkpoint: {e}") from None
    return obj.eval(), state


def load_run(path: str | os.PathLike, use_ema: bool = True, deps: dict[str, Any] | None = None) -> Model:
    """The generating :class:`Model` of a run directory or checkpoint directory (EMA weights by
    default); its ``cfg``, ``state`` (state.json) and ``path`` are set."""
    obj, state = load_objective(path, use_ema, deps)
    model = obj.model(obj.primary_module)
    model.cfg, model.state, model.path = obj.cfg, state, state["path"]
    return model


def load_model(path: str | os.PathLike, use_ema: bool = True) -> tuple[nn.Module, Schedule, Config, dict[str, Any]]:
    """(network, schedule, config, state) of a diffusion run: the network the denoiser calls
    (for a latent model: the latent network; use :func:`load_run` to sample images)."""
    model = load_run(path, use_ema)
    if not isinstance(model, DiffusionModel) or model.net is None:
        raise CheckpointError(f"{model.path} is a {model.kind} model, not a diffusion network")
    return model.net, model.schedule, model.cfg, model.state
