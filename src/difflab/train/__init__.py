"""Training: configs, the one Trainer (AdamW per parameter group, warm-up, clipping, EMA, bf16,
accumulation) over objectives (:mod:`difflab.train.objectives`), atomic safetensors checkpoints
with exact resume, sample grids and logs; runs loaded back as generating models."""

from difflab.train.build import prompt_context
from difflab.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from difflab.train.config import Config, ConfigError, load_config
from difflab.train.models import DiffusionModel, Model, generate
from difflab.train.runs import load_model, load_run
from difflab.train.trainer import EMA, Trainer, TrainingError

__all__ = [
    "EMA",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DiffusionModel",
    "Model",
    "Trainer",
    "TrainingError",
    "generate",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_model",
    "load_run",
    "prompt_context",
    "save_checkpoint",
]
