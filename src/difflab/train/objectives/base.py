"""The objective protocol: what a training method is, for the one Trainer.

An :class:`Objective` is an ``nn.Module`` holding

- the **primary** module (attribute named by ``primary``, ``net`` by default): the network that
  is sampled from, averaged by the Trainer's EMA and saved as ``model`` / ``ema`` in checkpoints
  (a diffusion network, a distilled student, a ControlNet, a GAN generator, an autoencoder);
- other **owned** modules (a discriminator, a consistency model's EMA target, ...): saved in the
  checkpoint's ``modules`` file under their attribute names;
- **frozen** modules it only reads (a teacher, an autoencoder, a base U-Net), kept in
  ``self.frozen`` (an ``nn.ModuleDict``): never saved, never optimized -- they come from the runs
  the objective depends on (:class:`Dependencies`, recorded in the run by path and checksum).

It names its parameter **groups** (:meth:`groups`; each gets its own AdamW: a GAN has two) and
maps a batch to named losses per group (:meth:`loss`; the key ``"loss"`` is back-propagated, the
others are logged).  Groups are stepped in their order, each on the same batch, so a GAN's
discriminator step precedes its generator step.  :meth:`after_step` runs after every optimizer
step (EMA targets, adaptive schedules), :meth:`extra_state` / :meth:`load_extra_state` keep any
state beyond the modules (importance-sampling histories, curricula) for exact resume, and
:meth:`model` turns the primary module into a :class:`~difflab.train.models.Model` that
generates (what the Trainer's sample grids, ``difflab sample`` and ``difflab eval`` use).

Writing a new method: subclass, set ``name`` (and ``Args``, a dataclass of its
``objective.args`` options, checked like every config section), decorate with :func:`register`,
put it in its own file in this package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from difflab.train.config import Config, ConfigError, parse_section

if TYPE_CHECKING:
    from difflab.train.models import Model

__all__ = [
    "ClassConditioning",
    "DataSpec",
    "Dependencies",
    "Group",
    "Objective",
    "get",
    "names",
    "register",
]

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class DataSpec:
    """What an objective knows of its data set: the shape of one item (``(C, H, W)`` images,
    ``(d,)`` points, ``(L, ...)`` sequences), the number of classes (None: unlabelled) and the
    data set's name.  Stored in every checkpoint, so a run can be rebuilt without its data."""

    shape: tuple[int, ...]
    num_classes: int | None = None
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "num_classes": self.num_classes, "name": self.name}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DataSpec:
        return cls(tuple(int(s) for s in d["shape"]), d.get("num_classes"), d.get("name", ""))


@dataclass
class Group:
    """Parameters that share one optimizer; ``None`` fields take the ``[train]`` values
    (lr, betas, weight_decay); ``clip``: apply ``train.grad_clip`` to this group."""

    params: list[nn.Parameter]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    clip: bool = True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Dependencies:
    """The runs an objective reads, by role (``teacher``, ``autoencoder``, ``base``, ...).

    At training the roles come from ``objective.depends`` (run or checkpoint directories) or as
    ready objects (``given``: e.g. an exact Gaussian-mixture teacher in a test); each path is
    resolved to its newest complete checkpoint and recorded with the SHA-256 of that
    checkpoint's ``state.json`` (which itself lists the SHA-256 of every weight file).  A run
    rebuilt from its checkpoint loads exactly the recorded checkpoints and refuses ones that
    are gone or have changed.
    """

    paths: dict[str, str] = field(default_factory=dict)
    given: dict[str, Any] = field(default_factory=dict)
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)
    _cache: dict[tuple[str, bool], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for role, p in self.paths.items():
            if not isinstance(p, str) or not p:
                raise ConfigError(f"objective.depends.{role} = {p!r} should be a run directory (a string)")

    def roles(self) -> list[str]:
        return sorted(set(self.paths) | set(self.given) | set(self.recorded))

    def __contains__(self, role: str) -> bool:
        return role in self.paths or role in self.given or role in self.recorded

    def checkpoint(self, role: str) -> Path:
        """The checkpoint directory of ``role`` (resolving a run directory to its newest checkpoint)."""
        from difflab.train.checkpoint import CheckpointError, latest_checkpoint

        if role in self.recorded:
            rec = self.recorded[role]
            ck = Path(rec["checkpoint"])
            if not (ck / "state.json").is_file():
                raise CheckpointError(
                    f"this run depends on the {role} checkpoint {ck} (from {rec.get('path')}), which is gone"
                )
            if rec.get("sha256") and _sha256(ck / "state.json") != rec["sha256"]:
                raise CheckpointError(
                    f"the {role} checkpoint {ck} has changed since this run was trained on it (checksum mismatch)"
                )
            return ck
        if role not in self.paths:
            raise ConfigError(f"objective.depends.{role} is not set (this objective needs a {role} run)")
        p = Path(self.paths[role])
        if not p.exists():
            raise CheckpointError(f"objective.depends.{role} = {str(p)!r}: no such run or checkpoint directory")
        if (p / "state.json").is_file():
            return p.resolve()
        ck = latest_checkpoint(p / "checkpoints" if (p / "checkpoints").is_dir() else p)
        if ck is None:
            raise CheckpointError(f"objective.depends.{role} = {str(p)!r} holds no complete difflab checkpoint")
        return ck.resolve()

    def load(self, role: str, use_ema: bool = True) -> Any:
        """The :class:`~difflab.train.models.Model` of ``role`` (cached), or the object given for it."""
        if role in self.given:
            return self.given[role]
        key = (role, use_ema)
        if key not in self._cache:
            from difflab.train.runs import load_run

            self._cache[key] = load_run(self.checkpoint(role), use_ema=use_ema)
        return self._cache[key]

    def record(self) -> dict[str, dict[str, Any]]:
        """What a checkpoint stores: role -> path as given, resolved checkpoint, checksum."""
        out = dict(self.recorded)
        for role in self.paths:
            if role not in out:
                ck = self.checkpoint(role)
                out[role] = {"path": self.paths[role], "checkpoint": str(ck), "sha256": _sha256(ck / "state.json")}
        for role, obj in self.given.items():
            out.setdefault(role, {"path": None, "checkpoint": None, "sha256": None, "object": type(obj).__name__})
        return out


class ClassConditioning:
    """Labels and captions for a conditional network, with label dropout to the null label
    (Ho & Salimans 2022: one network is both the conditional and the unconditional model).

    ``net.config['num_classes']`` set: ``y`` (the null label is ``num_classes``); ``captions``
    (a :class:`difflab.text.CaptionBank`): ``context`` / ``context_mask`` of a random caption of
    the label, or the empty prompt when dropped."""

    def __init__(self, net: nn.Module, captions: Any | None, dropout: float) -> None:
        self.num_classes = getattr(net, "config", {}).get("num_classes") or None
        self.captions, self.dropout = captions, dropout

    @property
    def active(self) -> bool:
        return bool(self.num_classes) or self.captions is not None

    def __call__(self, y: Tensor | None, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        if not self.active:
            return {}
        if y is None:
            raise ConfigError("this model is conditional (labels or captions) but the data set has no labels")
        drop = torch.rand(y.shape[0], generator=gen) < self.dropout
        cond = {}
        if self.num_classes:
            cond["y"] = torch.where(drop, torch.full_like(y, self.num_classes), y).to(device)
        if self.captions is not None:
            null = self.captions.num_classes
            ctx, mask = self.captions.lookup(torch.where(drop, torch.full_like(y, null), y), gen)
            cond["context"], cond["context_mask"] = ctx.to(device), mask.to(device)
        return cond


class Objective(nn.Module):
    """Base of every training method (module docstring).

    Args:
        cfg: the run's config; ``cfg.objective.args`` is parsed into ``self.args`` with ``Args``.
        spec: the data's item shape and classes.
        deps: the runs it reads (``roles`` lists the ones it needs).
        primary: a ready primary module (when a run is rebuilt from a checkpoint, the network
            stored there); else the objective builds it from ``cfg``.
        for_training: False when a run is rebuilt only to sample (skip work only training needs,
            e.g. loading a teacher).
    """

    name: ClassVar[str] = ""
    #: dataclass of the ``objective.args`` options (None: the objective takes none)
    Args: ClassVar[type | None] = None
    #: attribute name of the module that is sampled, EMA-averaged and saved as model / ema
    primary: ClassVar[str] = "net"
    #: dependency roles that must be given in ``objective.depends``
    roles: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        cfg: Config,
        spec: DataSpec,
        deps: Dependencies,
        primary: nn.Module | None = None,
        for_training: bool = True,
    ) -> None:
        super().__init__()
        self.cfg, self.spec, self.deps, self.for_training = cfg, spec, deps, for_training
        if self.Args is not None:
            self.args = parse_section(self.Args, cfg.objective.args, "config", "objective.args")
        elif cfg.objective.args:
            raise ConfigError(f"objective {self.name!r} takes no options, got objective.args = {cfg.objective.args!r}")
        missing = [r for r in self.roles if r not in deps]
        if missing:
            raise ConfigError(
                f"objective {self.name!r} needs objective.depends.{missing[0]} (a run directory); "
                f"it reads: {', '.join(self.roles)}"
            )
        self.frozen = nn.ModuleDict()
        self._given_primary = primary
        self.__dict__["_compiled"] = None  # not a submodule: its state would duplicate the primary's

    # --- modules ---------------------------------------------------------------------------
    @property
    def primary_module(self) -> nn.Module:
        return getattr(self, self.primary)

    def given_primary(self, build: Callable[[], nn.Module]) -> nn.Module:
        """The primary module handed to the constructor, or ``build()``."""
        net = self._given_primary if self._given_primary is not None else build()
        self._given_primary = None
        return net

    def freeze(self, role: str, module: nn.Module) -> nn.Module:
        """Keep ``module`` (read from a dependency) in ``self.frozen`` in eval mode, without gradients."""
        module = module.eval().requires_grad_(False)
        self.frozen[role] = module
        return module

    def owned_state(self) -> dict[str, Tensor]:
        """State of the owned modules other than the primary and the frozen ones (``name.key``)."""
        out = {}
        for name, child in self.named_children():
            if name in (self.primary, "frozen"):
                continue
            out.update({f"{name}.{k}": v for k, v in child.state_dict().items()})
        return out

    def load_owned_state(self, tensors: Mapping[str, Tensor]) -> None:
        for name, child in self.named_children():
            if name in (self.primary, "frozen"):
                continue
            sd = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == name}
            child.load_state_dict(sd)

    def train(self, mode: bool = True) -> Objective:
        """Train mode for the owned modules; frozen ones stay in eval mode."""
        super().train(mode)
        self.frozen.eval()
        return self

    def compile(self) -> None:
        """``train.compile``: the loss calls go through ``torch.compile(primary)`` (:attr:`train_net`)."""
        self.__dict__["_compiled"] = torch.compile(self.primary_module)

    @property
    def train_net(self) -> nn.Module:
        """The primary module as the losses should call it (compiled when ``train.compile``)."""
        return self.__dict__["_compiled"] or self.primary_module

    # --- training ---------------------------------------------------------------------------
    def dataset(self, data: Batch) -> Batch:
        """The tensors the Trainer draws batches from (aligned along dim 0); default: the config's
        data set as ``{"x": items, "y": labels}`` (``y`` only when labelled).  Objectives that make
        their own data (reflow's noise/sample pairs) return it here; it is called once per run."""
        return data

    def groups(self) -> dict[str, Group]:
        """Parameter groups, in the order they are stepped; default: one group of the primary."""
        return {self.primary: Group([p for p in self.primary_module.parameters() if p.requires_grad])}

    def loss(self, group: str, batch: Batch, gen: torch.Generator, step: int) -> dict[str, Tensor]:
        """Named losses for ``group`` on ``batch`` (``"loss"`` is back-propagated; every other
        value is logged and must be returned at every step).  ``gen`` is the Trainer's
        generator: draw all randomness from it (exact resume)."""
        raise NotImplementedError

    def after_step(self, step: int) -> dict[str, float]:
        """Called after each optimizer step with the new step count; returns values to log."""
        return {}

    def extra_state(self) -> dict[str, Tensor]:
        """Tensors beyond the modules that exact resume needs (saved as ``extra``)."""
        return {}

    def load_extra_state(self, tensors: Mapping[str, Tensor]) -> None:
        pass

    # --- sampling ---------------------------------------------------------------------------
    def model(self, net: nn.Module) -> Model:
        """The generating model around ``net`` (the EMA or the raw copy of the primary module)."""
        raise NotImplementedError

    def describe(self) -> str:
        n = sum(p.numel() for p in self.primary_module.parameters())
        return f"{self.name}: a {n / 1e6:.2f}M-parameter {type(self.primary_module).__name__}"


_REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: add an objective to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"objective name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered objective names."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Objective]:
    """The objective class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"objective.name = {name!r} is not one of {', '.join(names())}") from None
