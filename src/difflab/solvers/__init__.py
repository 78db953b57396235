"""Samplers.  Every module in this package registers its solvers on import, so adding a
sampler touches one file: ``solvers.get(name, **hyper)``, ``solvers.names()``."""

import importlib
import pkgutil

from difflab.solvers.base import Context, Solver, StepInfo, get, names, register, sample

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Context", "Solver", "StepInfo", "get", "names", "register", "sample"]
