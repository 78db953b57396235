"""Training configuration: plain dataclasses loaded from TOML (or YAML) with ``--set key=value``
overrides.  Unknown sections or keys and values of the wrong type are errors that name them."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "SampleConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_section",
    "to_dict",
]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the value."""


@dataclass
class DataConfig:
    """Which data set (see :mod:`difflab.data`)."""

    name: str = "digits"  # digits | fashion_mnist | idx | folder | toy2d (moons, swiss_roll, ...)
    root: str | None = None  # directory for fashion_mnist / idx / folder
    split: str = "train"
    size: int | None = None  # resize images to size x size
    pad_to: int | None = None  # pad IDX images (28 -> 32)
    limit: int | None = None  # keep the first N items
    channels: int = 3  # image folders: 1 or 3
    toy: str = "moons"  # toy2d: which 2-D data set
    n: int = 50000  # toy2d: number of points


@dataclass
class ModelConfig:
    """The network and what it predicts."""

    network: str = "unet"  # a difflab.nn.NETWORKS name: unet | mlp | ...
    prediction: str = "eps"  # eps | x0 | v | score | velocity | edm
    learned_variance: bool = False
    time_input: str = "default"  # see difflab.denoiser.Denoiser
    args: dict[str, Any] = field(default_factory=dict)  # network constructor arguments
    captions: str | None = None  # text conditioning on captions of the labels: fashion_mnist | digits
    text_max_length: int = 16  # tokens of the MiniLM encoder the U-Net cross-attends to


@dataclass
class ScheduleConfig:
    name: str = "ddpm_linear"  # see difflab.schedules.names()
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """See :class:`difflab.losses.DiffusionLoss`; ``target`` defaults to the model's prediction."""

    kind: str = "denoising"  # denoising | vlb | hybrid
    target: str | None = None
    weighting: str = "uniform"
    time_sampling: str = "uniform"
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    vlb_weight: float = 0.001


@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 128  # effective batch (split into grad_accum micro-batches)
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup: int = 500  # linear LR warm-up steps
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay_n = min(decay, (1 + n) / (10 + n))
    label_dropout: float = 0.1  # class-conditional nets: share of null labels (classifier-free guidance)
    bf16: bool = False  # bfloat16 autocast
    compile: bool = False  # torch.compile the network
    channels_last: bool = False  # image networks: channels-last memory format (oneDNN's faster CPU convolutions)
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads; 0 = auto (1 or all, whichever is faster)
    max_minutes: float | None = None  # stop early after this much training wall time
    log_every: int = 50
    sample_every: int = 1000  # 0: never
    ckpt_every: int = 1000
    keep: int = 2  # checkpoints kept
    out: str = "runs/default"


@dataclass
class SampleConfig:
    """How the trainer (and ``difflab sample`` by default) draws samples."""

    solver: str = "ddim"
    steps: int = 50
    grid: str = "default"  # a difflab.timesteps name, or default (trailing for discrete, log-SNR otherwise)
    n: int = 64
    seed: int = 0
    clip_x0: bool = False  # clip the denoiser's x0 estimate to the data range [-1, 1] (Ho et al. 2020's sampler)
    solver_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveConfig:
    """The training method (see :mod:`difflab.train.objectives`): its registered ``name``, the
    runs it depends on by role (``teacher``, ``autoencoder``, ``base``: a run directory or a
    ``checkpoints/step_*`` directory) and its own options ``args`` (checked by the objective)."""

    name: str = "denoising"
    depends: dict[str, str] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


_CHOICES = {
    ("data", "name"): ("digits", "fashion_mnist", "idx", "folder", "toy2d"),
    ("data", "split"): ("train", "test", "all"),
    ("model", "prediction"): ("eps", "x0", "v", "score", "velocity", "edm"),
    ("loss", "kind"): ("denoising", "vlb", "hybrid"),
}
_POSITIVE = {
    ("train", "steps"),
    ("train", "batch_size"),
    ("train", "grad_accum"),
    ("train", "lr"),
    ("sample", "steps"),
    ("sample", "n"),
}


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and lightly coerce: int -> float) a value against a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is Any:
        return True, value
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def parse_section(cls: type, values: Any, source: str, name: str) -> Any:
    """Build the dataclass ``cls`` from the table ``values`` of section ``name``: unknown keys
    (with a close match suggested) and values of the wrong type are :class:`ConfigError` naming
    them.  Used for the config's sections and for objectives' ``objective.args``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section [{name}] must be a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    valid = [ff.name for ff in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            import difflib

            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {name}.{key}{hint}; valid keys of [{name}]: {', '.join(valid)}")
        ok, v = _type_ok(value, hints[key])
        if not ok:
            raise ConfigError(f"{source}: {name}.{key} = {value!r} should be {_type_name(hints[key])}")
        choices = _CHOICES.get((name, key))
        if choices and v not in choices:
            raise ConfigError(f"{source}: {name}.{key} = {v!r} is not one of {', '.join(choices)}")
        if (name, key) in _POSITIVE and v <= 0:
            raise ConfigError(f"{source}: {name}.{key} = {v!r} must be positive")
        kwargs[key] = v
    return cls(**kwargs)


def from_dict(d: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from nested dicts, rejecting unknown keys and bad values."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a table of sections, got {type(d).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(d) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sections)}")
    built = {}
    for name, f in sections.items():
        cls = f.default_factory().__class__  # type: ignore[misc]
        built[name] = parse_section(cls, d.get(name, {}), source, name)
    cfg = Config(**built)
    tr = cfg.train
    if tr.batch_size % tr.grad_accum:
        raise ConfigError(
            f"{source}: train.batch_size = {tr.batch_size} is not divisible by train.grad_accum = {tr.grad_accum}"
        )
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _toml() -> types.ModuleType:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML/JSON literal (numbers, true/false, quoted strings, lists, inline
    tables), ``none``/``null`` for None, otherwise the bare string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    try:
        return _toml().loads(f"v = {text}")["v"]
    except Exception:
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to the nested dict d (in place; returned)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=1000")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: the key must be section.name, e.g. train.lr")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a table")
        node[parts[-1]] = _parse_value(text)
    return d


def read_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into nested dicts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use TOML") from None
        try:
            d = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        return d
    toml = _toml()
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a config file (or the defaults when path is None) and apply ``--set`` overrides."""
    d = read_file(path) if path is not None else {}
    apply_overrides(d, overrides or [])
    return from_dict(d, str(path) if path else "config")
