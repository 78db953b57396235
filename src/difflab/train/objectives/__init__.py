"""Training methods as **objectives** for the one :class:`~difflab.train.Trainer`.

The Trainer owns the loop (data order, steps and time limits, optimizers, LR warm-up, clipping,
accumulation, autocast, EMA, atomic checkpoints and exact resume, logs, sample grids, progress);
an objective owns what differs between methods: the modules it trains and those it only reads,
its parameter groups (one optimizer each) and the map from a batch to named losses.  One file
per method in this package; every module here registers its objectives on import, so
``objectives.get(name)`` / ``objectives.names()`` see them (``[objective] name = ...`` in a config).
"""

import importlib
import pkgutil

from difflab.train.objectives.base import (
    DataSpec,
    Dependencies,
    Group,
    Objective,
    get,
    names,
    register,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DataSpec", "Dependencies", "Group", "Objective", "get", "names", "register"]
