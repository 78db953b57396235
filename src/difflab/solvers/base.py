"""The solver protocol and the one sampling loop.

A :class:`Solver` is a frozen dataclass of hyperparameters.  It keeps nothing about a
sampling run: ``init`` makes the run's state (multistep history and the like) and
``step`` takes it and returns the new one, so one solver object serves many samplings
at once, from many threads.  Everything a run owns -- the denoiser, the grid, the NFE
counter, the noise streams -- lives in a :class:`Context` that ``sample`` creates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from difflab.random import GeneratorLike, NoiseStreams, check_generator
from difflab.schedules import Schedule, TimeLike
from difflab.timesteps import check_grid

__all__ = ["Context", "Solver", "StepInfo", "get", "names", "register", "sample"]

State = Any


@dataclass
class StepInfo:
    """What a callback sees after step ``i``: the new state ``x`` at time ``t`` and the
    most recent denoiser output ``x0``."""

    i: int
    t: float
    x: Tensor
    x0: Tensor | None
    nfe: int


@dataclass
class Context:
    """Everything one sampling run owns.  Solvers read times from ``ts`` (float64) and
    call ``denoise`` (counts NFE, casts to the state dtype) and ``randn_like``."""

    den: Callable[..., Tensor]
    schedule: Schedule
    ts: Tensor
    cond: dict[str, Any] = field(default_factory=dict)
    generators: NoiseStreams | list[torch.Generator] | torch.Generator | None = None
    nfe: int = 0
    last_x0: Tensor | None = None

    def __post_init__(self) -> None:
        # the grid's times and coefficients as Python floats, computed once per run: a schedule
        # call per step would cost more than a cheap solver's whole arithmetic
        la, ls = self.schedule.log_alpha(self.ts), self.schedule.log_sigma(self.ts)
        self.times: tuple[float, ...] = tuple(self.ts.tolist())
        self.alphas: tuple[float, ...] = tuple(la.exp().tolist())
        self.sigmas: tuple[float, ...] = tuple(ls.exp().tolist())
        self.lams: tuple[float, ...] = tuple((la - ls).tolist())
        self._coefs = list(zip(self.alphas, self.sigmas, self.lams))

    def t(self, i: int) -> float:
        return self.times[i]

    def at(self, i: int) -> tuple[float, float, float]:
        """(alpha, sigma, lambda) at grid point i (cached)."""
        return self._coefs[i]

    def is_data(self, i: int) -> bool:
        """Whether grid point i has sigma = 0 (reached by denoising, lambda = inf)."""
        return self._coefs[i][1] == 0.0

    def denoise(self, x: Tensor, t: TimeLike) -> Tensor:
        """x0_hat = den(x, t, **cond) in x's dtype; one network evaluation."""
        out = self.den(x, t, **self.cond)
        self.nfe += 1
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"denoiser returned {got} for input of shape {tuple(x.shape)}; it must return x0_hat of the same shape"
            )
        out = out.to(x.dtype)
        # one reduction: a NaN or an infinity anywhere makes the sum non-finite
        if not math.isfinite(float(out.sum())) and not torch.isfinite(out).all():
            tt = float(t) if not isinstance(t, Tensor) or t.numel() == 1 else "per-sample times"
            raise FloatingPointError(f"denoiser returned non-finite values at t = {tt}")
        self.last_x0 = out
        return out

    def denoise_with_variance(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(x0_hat, variance fraction) from a learned-variance denoiser; one network evaluation."""
        fn = getattr(self.den, "with_variance", None)
        if fn is None:
            raise ValueError("learned variances need a Denoiser(..., learned_variance=True) as the denoiser")
        x0, frac = fn(x, t, **self.cond)
        self.nfe += 1
        self.last_x0 = x0.to(x.dtype)
        return self.last_x0, frac.to(x.dtype)

    def score(self, x: Tensor, t: float) -> Tensor:
        """grad log p_t(x) from the denoiser by Tweedie's formula: (alpha x0_hat - x) / sigma^2."""
        a, s, _ = self.coefs(t)
        if s == 0:
            raise ValueError(f"the score is undefined at t = {t} where sigma = 0")
        return (a * self.denoise(x, t) - x) / (s * s)

    def randn_like(self, x: Tensor) -> Tensor:
        """Fresh standard normal noise; per-sample streams when the run was seeded."""
        g = self.generators
        if isinstance(g, NoiseStreams):
            return g.next(x.shape[1:], x.dtype).to(x.device)
        if isinstance(g, list):
            return torch.stack([torch.randn(x.shape[1:], generator=gi, dtype=x.dtype, device=x.device) for gi in g])
        return torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)

    def coefs(self, t: float) -> tuple[float, float, float]:
        """(alpha, sigma, lambda) at a scalar time, as Python floats (float64 precision)."""
        s = self.schedule
        return float(s.alpha(t)), float(s.sigma(t)), float(s.lam(t))


class Solver:
    """Base of every sampler.

    Subclasses are frozen dataclasses decorated with :func:`register` and set
    ``name``, ``order`` (global order of accuracy on the probability-flow ODE;
    strong order for SDE samplers) and ``stochastic``.  The default :meth:`run` calls
    :meth:`step` once per grid interval; a step to a time with sigma = 0 (t = 0) returns
    the x0 estimate at the previous time (the final denoising step), so solvers need not handle lambda = inf.
    Adaptive or parallel solvers override :meth:`run` instead.

    Every sample's result depends only on its own x_T and noise stream, so it is the same at
    any batch size -- except for adaptive solvers, which choose one step sequence for the
    whole batch from its worst error (as Lu et al. 2022's Alg. 4 and Dormand-Prince codes do);
    theirs agree across batch sizes within the solver's tolerance.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    #: NFE per step of the default loop (for reporting and budgeting)
    evals_per_step: ClassVar[int] = 1
    #: chooses its own steps (only ts[0] and ts[-1] matter); the order harness skips it
    adaptive: ClassVar[bool] = False

    def init(self, ctx: Context, x: Tensor) -> State:
        return None

    def step(self, ctx: Context, i: int, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def run(
        self, ctx: Context, x: Tensor, progress: bool = False, callback: Callable[[StepInfo], None] | None = None
    ) -> Tensor:
        state = self.init(ctx, x)
        n = len(ctx.ts) - 1
        for i in tqdm(range(n), desc=self.name, disable=not progress, leave=False):
            if ctx.is_data(i + 1):
                x = ctx.denoise(x, ctx.t(i))
            else:
                x, state = self.step(ctx, i, x, state)
            if callback is not None:
                callback(StepInfo(i, ctx.t(i + 1), x, ctx.last_x0, ctx.nfe))
        return x

    def hyper(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{self.name}({args})"


_REGISTRY: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"solver name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered solver names."""
    return sorted(_REGISTRY)


def get(name: str, **hyper: Any) -> Solver:
    """Instantiate a registered solver, e.g. ``get('ddim', eta=0.0)``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; valid names: {', '.join(names())}") from None
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    bad = sorted(set(hyper) - fields)
    if bad:
        raise ValueError(
            f"solver {name!r} has no option {', '.join(map(repr, bad))}; its options: {', '.join(sorted(fields)) or 'none'}"
        )
    return cls(**hyper)


def _noise(generator: GeneratorLike, batch: int) -> NoiseStreams | list[torch.Generator] | torch.Generator | None:
    check_generator(generator, batch)
    if isinstance(generator, int):
        # stream 1: independent of the prior draw schedule.prior_sample(..., generator=seed)
        return NoiseStreams(generator, batch, stream=1)
    return list(generator) if generator is not None and not isinstance(generator, torch.Generator) else generator


def sample(
    solver: Solver | str,
    den: Callable[..., Tensor],
    schedule: Schedule,
    x_T: Tensor,
    ts: Tensor,
    *,
    generator: GeneratorLike = None,
    progress: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    dtype: torch.dtype = torch.float32,
    final_denoise: bool = False,
    return_nfe: bool = False,
    **cond: Any,
) -> Tensor | tuple[Tensor, int]:
    """Integrate from x_T at ``ts[0]`` down the grid ``ts`` with ``solver``.

    Args:
        solver: a :class:`Solver` or a registered name.
        den: the denoiser ``den(x, t, **cond) -> x0_hat``.
        schedule: the schedule ``den`` belongs to.
        x_T: initial state at ``ts[0]`` (batch first), e.g. ``schedule.prior_sample``.
        ts: strictly decreasing times in [0, t_max] (see :mod:`difflab.timesteps`).
        generator: noise for stochastic samplers: an int seed gives every sample its
            own stream (same samples at any batch size); or a ``torch.Generator``, a
            list of one per sample, or ``None`` for torch's global RNG.
        progress: show a progress bar.
        callback: called with a :class:`StepInfo` after every step.
        dtype: dtype of the sampler state (float32 default, float64 on request).
        final_denoise: after the last time, return den(x, ts[-1]) (one more NFE).
        return_nfe: also return the number of denoiser evaluations spent.
        **cond: conditioning passed to every ``den`` call.
    """
    if isinstance(solver, str):
        solver = get(solver)
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a Solver or a registered name, got {type(solver).__name__}")
    if not isinstance(x_T, Tensor) or x_T.dim() < 1 or x_T.shape[0] < 1:
        raise ValueError(
            f"x_T must be a tensor with a batch dimension, got {getattr(x_T, 'shape', type(x_T).__name__)}"
        )
    if not torch.isfinite(x_T).all():
        n_bad = int((~torch.isfinite(x_T)).sum())
        raise ValueError(f"x_T contains {n_bad} non-finite values")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    ts = check_grid(ts, schedule)
    ctx = Context(den, schedule, ts, cond, _noise(generator, x_T.shape[0]))
    x = solver.run(ctx, x_T.to(dtype), progress=progress, callback=callback)
    if final_denoise and float(ts[-1]) > 0:
        x = ctx.denoise(x, ctx.t(-1))
    return (x, ctx.nfe) if return_nfe else x
