"""Editing: SDEdit and inpainting, as denoiser wrappers and the loops that start from an image.

- **SDEdit** (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
  Differential Equations", Alg. 1 and eq. 3 in the VP form): perturb a guide image x_g to the
  intermediate time t0 by the forward process, x(t0) = alpha(t0) x_g + sigma(t0) z, and solve
  the reverse process from t0 down to the data with any solver.  Here t0 = ``strength`` * ts[0]
  (ts[0] is normally t_max): strength 0 returns the image, strength 1 starts from the noised
  image at the grid's first time -- unconditional sampling up to the alpha(t_max) x_g term
  (exactly unconditional where alpha(t_max) = 0, e.g. rectified flow with t_max = 1).  The
  solver runs on the *tail* of the sampling grid: t0 followed by the grid's times below it.
- **Inpainting by replacement** (Song et al. 2021, "Score-Based Generative Modeling through
  SDEs", App. I.2; the baseline of Lugmayr et al. 2022, Sec. 4.1): the known region of the
  state is replaced, before every network evaluation, by the known image noised to the current
  time, x_k(t) = alpha(t) x_k + sigma(t) e, and the denoiser's estimate there by x_k itself.
  :class:`Replacement` does this as a denoiser wrapper, so every solver (single-step,
  multistep, stochastic, adaptive) inpaints.  For x0-form exponential integrators (DDIM,
  DPM-Solver++, UniPC, ...) the state's known region then follows the same noising path
  exactly, because their updates are combinations of x_t and x0_hat.
- **RePaint resampling** (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion
  Probabilistic Models", Alg. 1 and the jump schedule of Sec. 4.2 / their code's
  ``get_schedule_jump``): replacement alone harmonises the generated region poorly with the
  known one, since the network only ever sees the known pixels through noise.  RePaint
  descends ``jump_length`` grid steps, noises the state back up by the forward transition
  q(x_t | x_s) (Kingma et al. 2021, eq. 4) and descends again, ``resamplings`` times per block
  of ``jump_length`` steps (every block but the top one), giving the generated region many
  passes at each noise level to agree with the known region.  ``resamplings = 1`` is plain
  replacement.

Masks follow diffusers' inpainting pipelines: ``mask`` is 1 (white) where pixels are
generated and 0 (black) where the image is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from difflab.parameterization import batch_times
from difflab.random import GeneratorLike, NoiseStreams, randn
from difflab.schedules import Schedule, TimeLike, _bcast
from difflab.solvers.base import Context, Solver, StepInfo, _noise, get, sample
from difflab.timesteps import check_grid

__all__ = [
    "Replacement",
    "check_mask",
    "check_strength",
    "inpaint",
    "repaint_schedule",
    "sdedit",
    "tail_grid",
]

Den = Callable[..., Tensor]


# --- validation ----------------------------------------------------------------------------
def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 1], or a ValueError naming it."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength):
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1] (0: return the image, 1: start from noise), got {strength}")
    return float(strength)


def _check_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() < 2 or image.shape[0] < 1:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a batch (B, ...) of data, e.g. (B, C, H, W) images in [-1, 1], got {got}")
    if not torch.isfinite(image).all():
        raise ValueError(f"image contains {int((~torch.isfinite(image)).sum())} non-finite values")
    return image


def check_mask(mask: Tensor, image: Tensor) -> Tensor:
    """The inpainting mask as a bool tensor broadcastable to ``image`` (True: generate).

    ``mask`` holds 1 (or True) where the pixels are generated and 0 where the image is kept, as
    diffusers' inpainting pipelines (white = generated).  It has the image's shape, or drops or
    shrinks to 1 its leading dimensions: (H, W), (1, H, W), (B, 1, H, W) for (B, C, H, W) images;
    (d,) for (B, d) points.  Values other than 0 and 1 are an error, not silently thresholded.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    spatial = image.shape[-2:] if image.dim() >= 4 else image.shape[-1:]
    ok = mask.dim() <= image.dim() and tuple(mask.shape[-len(spatial) :]) == tuple(spatial)
    if ok:
        try:
            ok = torch.broadcast_shapes(mask.shape, image.shape) == image.shape
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(image.shape)}: it needs the "
            f"image's size {tuple(spatial)} in its last dimensions, e.g. {tuple(spatial)} or {tuple(image.shape)}"
        )
    if mask.dtype != torch.bool:
        binary = (mask == 0) | (mask == 1)
        if not bool(binary.all()):
            bad = mask[~binary]
            raise ValueError(
                f"mask must be binary (1 = generate, 0 = keep), but {bad.numel()} of its {mask.numel()} values are "
                f"neither, e.g. {float(bad[0]):.4g}; threshold it first (mask > 0.5)"
            )
        mask = mask == 1
    return mask.to(image.device)


def tail_grid(ts: Tensor, t0: float, schedule: Schedule) -> Tensor:
    """The grid SDEdit solves on: ``t0`` followed by the times of ``ts`` below it (a grid time
    within 1e-9 of t0 is t0 itself, so a t0 on the grid gives exactly the grid's tail)."""
    ts = check_grid(ts, schedule)
    if not 0 < t0 <= float(ts[0]) + 1e-12:
        raise ValueError(f"t0 = {t0} must lie in (0, ts[0] = {float(ts[0])}]")
    below = ts[ts < t0 - 1e-9]
    if below.numel() == 0:
        raise ValueError(
            f"t0 = {t0:.6g} is not above the grid's last time {float(ts[-1]):.6g}: nothing to solve; "
            "use a larger strength or a grid that ends lower (e.g. at t = 0)"
        )
    return torch.cat([torch.tensor([min(t0, float(ts[0]))], dtype=ts.dtype), below])


def _solver(solver: Solver | str) -> Solver:
    s = get(solver) if isinstance(solver, str) else solver
    if not isinstance(s, Solver):
        raise TypeError(f"solver must be a Solver or a registered name, got {type(solver).__name__}")
    return s


# --- SDEdit ------------------------------------------------------------------------------
def sdedit(
    solver: Solver | str,
    den: Den,
    schedule: Schedule,
    image: Tensor,
    ts: Tensor,
    strength: float,
    *,
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    final_denoise: bool = False,
    return_nfe: bool = False,
    **cond: Any,
) -> Tensor | tuple[Tensor, int]:
    """SDEdit (Meng et al. 2022, Alg. 1): noise ``image`` to t0 = strength * ts[0], solve back.

    Args:
        solver, den, schedule: as for :func:`difflab.sample`.
        image: the guide images (B, ...), e.g. (B, C, H, W) in [-1, 1].
        ts: the sampling grid (decreasing from t_max, as for :func:`difflab.sample`); the solver
            runs on its tail below t0 (:func:`tail_grid`).
        strength: in [0, 1]; 0 returns ``image`` unchanged (no network evaluation).
        generator: an int seed draws the perturbation z from the same per-sample streams as
            ``schedule.prior_sample(shape, generator=seed)`` and the solver's noise from
            :func:`difflab.sample`'s, so with alpha(t_max) = 0 strength 1 *is* ``sample`` from
            that prior draw; or a torch.Generator / a list of one per sample / None.
        final_denoise, return_nfe, dtype, progress, callback, **cond: as for :func:`difflab.sample`.
    """
    s = check_strength(strength)
    image = _check_image(image)
    solver = _solver(solver)
    if s == 0:
        return (image.clone(), 0) if return_nfe else image.clone()
    ts = check_grid(ts, schedule)
    grid = tail_grid(ts, s * float(ts[0]), schedule)
    z = randn(image.shape, generator, dtype=dtype, device=image.device)
    x_t0 = schedule.perturb(image.to(dtype), float(grid[0]), z)
    return sample(
        solver,
        den,
        schedule,
        x_t0,
        grid,
        generator=generator,
        progress=progress,
        callback=callback,
        dtype=dtype,
        final_denoise=final_denoise,
        return_nfe=return_nfe,
        **cond,
    )


# --- inpainting ------------------------------------------------------------------------------
class Replacement:
    """Inpainting by replacement as a denoiser wrapper (Song et al. 2021, App. I.2).

    ``Replacement(den, schedule, image, mask, noise)(x, t)`` evaluates ``den`` on x with its
    known region (``mask`` False) replaced by alpha(t) image + sigma(t) noise, and returns its
    x0 estimate with the known region replaced by ``image``: the known pixels are pinned to one
    forward-noising path, whatever the solver does to the state there.

    Args:
        den: the denoiser (with guidance already applied, if any: this wrapper goes outside).
        image: the known images (B, ...) in the state's dtype.
        mask: True / 1 where pixels are generated (see :func:`check_mask`).
        noise: the standard normal noise e of the known region's path, image's shape.
    """

    def __init__(self, den: Den, schedule: Schedule, image: Tensor, mask: Tensor, noise: Tensor) -> None:
        self.den, self.schedule = den, schedule
        self.image, self.mask, self.noise = image, check_mask(mask, image), noise
        if noise.shape != image.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} does not match the image {tuple(image.shape)}")

    def _tiled(self, v: Tensor, like: Tensor) -> Tensor:
        """``v`` (B, ...) for a state of k * B items: a parallel solver (ParaDiGMS) evaluates k
        grid points of the whole batch in one call, concatenated along the batch."""
        b = self.image.shape[0]
        if like.shape[1:] != self.image.shape[1:] or like.shape[0] % b:
            raise ValueError(
                f"state of shape {tuple(like.shape)} does not match the known image {tuple(self.image.shape)}"
            )
        v = v.to(like.dtype)
        return v if like.shape[0] == b else v.repeat(like.shape[0] // b, *([1] * (v.dim() - 1)))

    def _mask(self, like: Tensor) -> Tensor:
        m = self.mask
        if m.dim() == like.dim() and m.shape[0] not in (1, like.shape[0]):
            m = m.repeat(like.shape[0] // m.shape[0], *([1] * (m.dim() - 1)))
        return m

    def known(self, t: TimeLike, like: Tensor) -> Tensor:
        """The known region's state at time t: alpha(t) image + sigma(t) noise."""
        tb = batch_times(t, like)
        a, s = (_bcast(c, like) for c in (self.schedule.alpha(tb), self.schedule.sigma(tb)))
        return a * self._tiled(self.image, like) + s * self._tiled(self.noise, like)

    def _inputs(self, x: Tensor, t: TimeLike) -> Tensor:
        return torch.where(self._mask(x), x, self.known(t, x))

    def _paste(self, x0: Tensor) -> Tensor:
        return torch.where(self._mask(x0), x0, self._tiled(self.image, x0))

    def __call__(self, x: Tensor, t: TimeLike, **cond: Any) -> Tensor:
        return self._paste(self.den(self._inputs(x, t), t, **cond))

    def with_variance(self, x: Tensor, t: TimeLike, **cond: Any) -> tuple[Tensor, Tensor]:
        inner = getattr(self.den, "with_variance", None)
        if inner is None:
            raise ValueError("learned variances need a Denoiser(..., learned_variance=True) as the denoiser")
        x0, frac = inner(self._inputs(x, t), t, **cond)
        return self._paste(x0), frac


def repaint_schedule(steps: int, jump_length: int = 10, resamplings: int = 10) -> list[int]:
    """The grid positions RePaint visits (Lugmayr et al. 2022, Sec. 4.2, their code's
    ``get_schedule_jump``), on a grid of ``steps`` intervals whose positions are 0 (the first,
    noisiest time) .. ``steps`` (the last): one step down at a time, and on reaching a jump
    point -- ``jump_length``, 2 ``jump_length``, ... steps above the bottom, the bottom itself
    included, the top block excluded -- back up ``jump_length`` positions, ``resamplings - 1``
    times per jump point.  ``resamplings = 1`` gives 0, 1, ..., steps (no resampling)."""
    for name, v in (("steps", steps), ("jump_length", jump_length), ("resamplings", resamplings)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    # in "levels" = steps still to go (level `steps` is the grid's first time), as in their code
    jumps = {j: resamplings - 1 for j in range(0, steps - jump_length, jump_length)}
    level, levels = steps, [steps]
    while level > 0:
        level -= 1
        levels.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                levels.append(level)
    return [steps - lv for lv in levels]


def inpaint(
    solver: Solver | str,
    den: Den,
    schedule: Schedule,
    image: Tensor,
    mask: Tensor,
    ts: Tensor,
    *,
    strength: float = 1.0,
    resamplings: int = 1,
    jump_length: int = 10,
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    final_denoise: bool = False,
    return_nfe: bool = False,
    **cond: Any,
) -> Tensor | tuple[Tensor, int]:
    """Inpaint: generate the pixels where ``mask`` is 1 given the image where it is 0.

    Starts like :func:`sdedit` from the image noised to t0 = strength * ts[0] (strength 1, the
    default: from the first grid time; smaller strengths keep some of the masked region's
    content, as diffusers' inpainting ``strength``), then solves down the grid's tail with
    :class:`Replacement` around ``den``; with ``resamplings > 1`` RePaint's jumps
    (:func:`repaint_schedule`: after each descent of ``jump_length`` steps the state is noised
    back up by q(x_t | x_s) and the descent repeated).  Each descent restarts the solver, so
    multistep solvers keep no history across a jump.  The known region of the result is exactly
    ``image`` when the grid ends at t = 0 (or with ``final_denoise``); otherwise it is the image
    noised to the last time.

    Args:
        solver, den, schedule, ts: as for :func:`difflab.sample`.
        image: (B, ...) the images; their masked region is ignored at strength 1.
        mask: 1 = generate, 0 = keep (:func:`check_mask`).
        strength: in (0, 1].
        resamplings: RePaint's r (1: replacement only); jump_length: its j, in grid steps.
        generator: int seed (batch-size invariant), torch.Generator(s) or None.
        final_denoise, return_nfe, dtype, progress, callback, **cond: as for :func:`difflab.sample`;
            ``callback`` sees each descent's steps with that descent's step index.
    """
    s = check_strength(strength)
    if s == 0:
        raise ValueError("inpainting needs strength > 0 (at 0 nothing is generated)")
    image = _check_image(image).to(dtype)
    m = check_mask(mask, image)
    solver = _solver(solver)
    ts = check_grid(ts, schedule)
    grid = tail_grid(ts, s * float(ts[0]), schedule)
    visits = repaint_schedule(len(grid) - 1, jump_length, resamplings)
    noise = _noise(generator, image.shape[0])
    randn_like = Context(den, schedule, grid, cond, noise).randn_like
    # the first draw as sdedit's (an int seed: the prior's streams), the rest from the solver's
    e = randn(image.shape, generator, dtype=dtype, device=image.device) if isinstance(generator, int) else None
    e = randn_like(image) if e is None else e
    x = schedule.perturb(image, float(grid[0]), e)
    nfe, pos, k = 0, 0, 1
    wrapped = Replacement(den, schedule, image, m, e)
    bar = tqdm(total=len(visits) - 1, desc=f"inpaint ({solver.name})", disable=not progress, leave=False)
    while k < len(visits):
        # a maximal run of consecutive positions going down (a descent) or up (a jump)
        end = k
        down = visits[k] > visits[k - 1]
        while end + 1 < len(visits) and (visits[end + 1] > visits[end]) == down:
            end += 1
        target = visits[end]
        if down:
            ctx = Context(wrapped, schedule, grid[pos : target + 1], cond, noise)
            x = solver.run(ctx, x, callback=callback)
            nfe += ctx.nfe
        else:
            # pin the known region to its path, noise everything up by q(x_t | x_s), and carry the
            # known region's new noise on: e' = (x_t - alpha_t x_k) / sigma_t there
            t_s, t_t = float(grid[pos]), float(grid[target])
            x = torch.where(m, x, wrapped.known(t_s, x))
            x = schedule.transition(x, t_s, t_t, randn_like(x))
            a, sd = float(schedule.alpha(t_t)), float(schedule.sigma(t_t))
            e = torch.where(m, e, (x - a * image) / sd)
            wrapped = Replacement(den, schedule, image, m, e)
        bar.update(end - k + 1)
        pos, k = target, end + 1
    bar.close()
    t_end = float(grid[-1])
    if final_denoise and t_end > 0:
        x, nfe, t_end = wrapped(x, t_end, **cond).to(dtype), nfe + 1, 0.0
    x = torch.where(m, x, wrapped.known(t_end, x))
    return (x, nfe) if return_nfe else x


# --- asymptotically exact inpainting: sequential Monte Carlo ----------------------------------
def _systematic(logw: Tensor, g: torch.Generator) -> Tensor:
    """Systematic resampling (Kitagawa 1996) of each row of log-weights (B, K): ancestor indices (B, K)."""
    B, K = logw.shape
    w = torch.softmax(logw, dim=1)
    u = (torch.rand(B, 1, generator=g, dtype=w.dtype) + torch.arange(K, dtype=w.dtype)[None]) / K
    c = w.cumsum(1)
    c[:, -1] = 1.0  # guard against rounding
    return torch.searchsorted(c, u).clamp_max(K - 1)


def _resample(x: Tensor, logw: Tensor, which: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Resample the particles (B * K, ...) of the images ``which`` (B,) by their weights; the rest keep theirs."""
    B, K = logw.shape
    idx = torch.where(which[:, None], _systematic(logw, g), torch.arange(K)[None])
    x = x[(idx + K * torch.arange(B)[:, None]).flatten()]
    return x, torch.where(which[:, None], torch.full_like(logw, -math.log(K)), logw)


def inpaint_smc(
    den: Den,
    schedule: Schedule,
    image: Tensor,
    mask: Tensor,
    ts: Tensor,
    *,
    particles: int = 16,
    ess_threshold: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    return_nfe: bool = False,
    **cond: Any,
) -> Tensor | tuple[Tensor, int]:
    """Inpainting by sequential Monte Carlo (SMCDiff: Trippe et al. 2022, "Diffusion probabilistic
    modeling of protein backbones in 3D for the motif-scaffolding problem", Alg. 2), which is
    asymptotically exact -- as the number of particles grows, the generated region is drawn from
    the model's conditional p(x_u | x_k) -- where replacement and RePaint are not.

    The known region's noising path x_k(t_0), ..., x_k(t_N) is one draw of the forward Markov chain
    (x_k(t_N) = the image noised to the last time; each earlier point by q(x_t | x_s)).  Each of
    ``particles`` particles per image takes the ancestral (DDPM posterior) step
    x_s ~ q(x_s | x_t, x0_hat) = N(mu, v I) (Kingma et al. 2021, eqs. 32-33) from its state with the
    known region on the path, is weighted by the likelihood N(x_k(s); mu_k, v I) of the path's next
    point, and has its known region set to it; particles are resampled (systematically) whenever
    the effective sample size falls below ``ess_threshold * particles``.  A final step to a time
    with sigma = 0 returns x0_hat (the known region is then the image).

    Returns (B, particles, ...) equally weighted particles (resampled at the end); each image's
    particles are correlated draws, so take one per image for independent samples.  Costs
    ``particles`` network evaluations per image per step.  The weights degenerate as the known
    region grows (Trippe et al. 2022, Sec. 4), so for images with many known pixels prefer
    :func:`inpaint` with RePaint resampling.
    """
    image = _check_image(image).to(dtype)
    m = check_mask(mask, image)
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
    ts = check_grid(ts, schedule)
    B, K, shape = image.shape[0], particles, image.shape[1:]
    g = torch.Generator().manual_seed(seed)
    path_noise = NoiseStreams(seed, B, stream=3)
    step_noise = NoiseStreams(seed, B * K, stream=4)
    times = ts.tolist()
    # the known region's path, from the last time up (a forward Markov chain draw)
    path = [schedule.perturb(image, times[-1], path_noise.next(shape, dtype))]
    for i in range(len(times) - 2, -1, -1):
        path.append(schedule.transition(path[-1], times[i + 1], times[i], path_noise.next(shape, dtype)))
    path = [p.repeat_interleave(K, 0) for p in reversed(path)]
    mk = m.expand(image.shape).repeat_interleave(K, 0)
    big = {
        k: (v.repeat_interleave(K, 0) if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == B else v)
        for k, v in cond.items()
    }
    x = torch.where(mk, step_noise.next(shape, dtype) * float(schedule.sigma(times[0])), path[0])
    logw = torch.zeros(B, K, dtype=torch.float64)
    nfe = 0
    for i in tqdm(range(len(times) - 1), desc="inpaint (smc)", disable=not progress, leave=False):
        t, s = times[i], times[i + 1]
        x0 = den(x, t, **big).to(dtype)
        nfe += 1
        a_t, s_t = float(schedule.alpha(t)), float(schedule.sigma(t))
        a_s, s_s = float(schedule.alpha(s)), float(schedule.sigma(s))
        if s_s == 0.0:  # the final denoising step
            x = torch.where(mk, x0, path[-1])
            break
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        mu = (a_s * var_ts / s_t**2) * x0 + (a_ts * s_s**2 / s_t**2) * x
        v = var_ts * s_s**2 / s_t**2
        x = mu + math.sqrt(v) * step_noise.next(shape, dtype)
        # weight by the path's next point under the proposal (Trippe et al. 2022, Alg. 2, line 7)
        r = torch.where(mk, torch.zeros_like(x), path[i + 1] - mu).double().reshape(B, K, -1)
        logw = logw - 0.5 * r.pow(2).sum(-1) / v
        x = torch.where(mk, x, path[i + 1])
        logw = logw - logw.logsumexp(1, keepdim=True)
        ess = 1.0 / logw.exp().pow(2).sum(1)
        resample = ess < ess_threshold * K
        if bool(resample.any()):
            x, logw = _resample(x, logw, resample, g)
    # equally weighted particles at the end
    x, _ = _resample(x, logw, torch.ones(B, dtype=torch.bool), g)
    out = x.reshape(B, K, *shape)
    return (out, nfe) if return_nfe else out
