"""Training: configs, the Trainer (AdamW, warm-up, clipping, EMA, bf16, accumulation), atomic
safetensors checkpoints with exact resume, sample grids and logs."""

from difflab.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from difflab.train.config import Config, ConfigError, load_config
from difflab.train.trainer import EMA, Trainer, TrainingError, generate, load_model, prompt_context

__all__ = [
    "EMA",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Trainer",
    "TrainingError",
    "generate",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_model",
    "prompt_context",
    "save_checkpoint",
]
