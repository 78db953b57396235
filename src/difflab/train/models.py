"""What a trained run generates with: a :class:`Model`.

Every objective turns its primary module into a Model (:meth:`Objective.model
<difflab.train.objectives.base.Objective.model>`); :func:`difflab.train.runs.load_run` rebuilds
one from a run directory.  ``difflab sample``, ``difflab eval``, the web UI and the Trainer's
sample grids call only :meth:`Model.generate`, so every kind of run samples the same way.

:class:`DiffusionModel` is the Model of every diffusion network (pixel or latent, plain,
distilled, consistency, controlled): a denoiser over a schedule, sampled by any registered solver
on a time grid, with class labels, prompts and classifier-free guidance as options.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from difflab import images
from difflab.denoiser import DenoiserFn, clip_x0
from difflab.schedules import Schedule
from difflab.solvers import StepInfo, sample
from difflab.train.build import build_denoiser, build_solver, prompt_context, sample_grid
from difflab.train.config import Config

__all__ = ["DiffusionModel", "Model", "generate", "hash_seed", "prior_noise", "sample_batched"]


class Model:
    """A trained generator.  Subclasses set ``kind`` and ``options`` (the keyword options of
    :meth:`generate` beyond ``n`` / ``seed`` / ``batch_size`` / ``progress`` / ``callback``, name ->
    help text: what the CLI and the UI offer) and implement :meth:`generate`.

    ``cfg`` / ``state`` / ``path`` are the run's config, its checkpoint's state.json and the
    checkpoint directory when the model was loaded from a run (None / {} / None otherwise)."""

    kind: ClassVar[str] = ""
    options: ClassVar[dict[str, str]] = {}
    #: False for runs that are not generators (a noisy classifier, an autoencoder): no sample grids
    generates: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg
        self.state: dict[str, Any] = {}
        self.path: Path | None = None

    def generate(
        self,
        n: int,
        seed: int = 0,
        *,
        batch_size: int = 256,
        progress: bool = False,
        callback: Callable[[StepInfo], None] | None = None,
        **options: Any,
    ) -> Tensor:
        """n samples (images in [-1, 1] as (n, C, H, W), points as (n, d), ...); the same seed gives
        the same samples at any batch size."""
        raise NotImplementedError

    def check(self) -> None:
        """Validate the run's default sampling settings (the Trainer calls it before training)."""

    def check_options(self, options: dict[str, Any]) -> None:
        """A clear error for options this kind of model does not take."""
        bad = sorted(k for k, v in options.items() if v is not None and k not in self.options)
        if bad:
            raise ValueError(
                f"a {self.kind} model takes no option {', '.join(map(repr, bad))}; "
                f"its options: {', '.join(sorted(self.options)) or 'none'}"
            )

    def save_png(self, x: Tensor, path: str | os.PathLike, **kw: Any) -> Path:
        """Write samples as a picture: a grid of images, or a scatter plot of 2-D points."""
        if x.dim() == 2:
            return images.save_points(x, path)
        return images.save_grid(x, path, **kw)


def hash_seed(seed: int, index: int) -> int:
    """Per-sample seed (see :mod:`difflab.random`)."""
    from difflab.random import sample_seed

    return sample_seed(seed, index, stream=7)


def prior_noise(
    shape: Sequence[int], schedule: Schedule, seed: int, start: int, m: int
) -> tuple[Tensor, list[torch.Generator]]:
    """x_T for samples ``start .. start + m - 1`` of seed ``seed`` and the per-sample generators
    that continue their noise streams: sample j's noise depends on (seed, j) only."""
    gens = [torch.Generator().manual_seed(hash_seed(seed, start + j)) for j in range(m)]
    x_T = torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]) * schedule.prior_std()
    return x_T, gens


def sample_batched(
    den: DenoiserFn,
    schedule: Schedule,
    shape: Sequence[int],
    n: int,
    seed: int,
    solver: Any,
    ts: Tensor,
    *,
    batch_size: int = 256,
    callback: Callable[[StepInfo], None] | None = None,
    progress: bool = False,
    per_sample: dict[str, Tensor] | None = None,
    final_denoise: bool = True,
    **cond: Any,
) -> tuple[Tensor, int]:
    """Draw n samples of item ``shape`` with ``solver`` on the grid ``ts`` in batches of
    ``batch_size``; ``per_sample`` conditioning (labels, contexts, hints) is sliced with the
    batch, ``cond`` is passed whole.  Returns (samples, network evaluations per sample)."""
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out, nfe = [], 0
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x_T, gens = prior_noise(shape, schedule, seed, start, m)
        c = dict(cond)
        for k, v in (per_sample or {}).items():
            c[k] = v[start : start + m]
        x, nfe = sample(
            solver,
            den,
            schedule,
            x_T,
            ts,
            generator=gens,
            callback=callback,
            progress=progress,
            final_denoise=final_denoise,
            return_nfe=True,
            **c,
        )
        out.append(x)
    return torch.cat(out), nfe


class DiffusionModel(Model):
    """A diffusion model: ``net`` (a network, made a denoiser by ``cfg.model``'s prediction
    type) or a ready denoiser ``den``, over ``schedule``, for items of ``shape``.

    ``decode`` maps samples to what the user sees (a latent model's autoencoder decoder);
    ``cond`` is conditioning passed to every network call (e.g. nothing, or fixed inputs of a
    wrapper).  ``net`` is in eval mode while sampling.
    """

    kind = "diffusion"
    options: ClassVar[dict[str, str]] = {
        "solver": "solver name (default: the run's [sample] solver)",
        "steps": "solver steps (default: the run's [sample] steps)",
        "grid": "time grid name (default: the run's [sample] grid)",
        "label": "class label for class-conditional models",
        "prompt": "text prompt for text-conditional models",
        "guidance": "classifier-free guidance weight w (eps = (1+w) eps_c - w eps_u; 0: plain conditional)",
        "image": "edit this image (1 or n, C, H, W) in [-1, 1] instead of sampling from noise (SDEdit / inpainting)",
        "mask": "inpainting mask (H, W) or (1 or n, 1, H, W): 1 = generate, 0 = keep the image (needs image)",
        "strength": "edit strength in [0, 1]: the image is noised to t0 = strength * t_max (default 1 with a mask)",
        "resamplings": "RePaint resamplings per jump when inpainting (1: replacement only)",
        "refiner": "a refiner run (or Model) that denoises below the switch time",
        "switch": "the time t (t = 0 data) below which the refiner takes over (default 0.2)",
        "crop": "(top, left) crop micro-conditioning for micro-conditioned models (SDXL); (0, 0): uncropped",
        "orig_size": "(h, w) original-size micro-conditioning (SDXL); the native size asks for a sharp image",
    }

    def __init__(
        self,
        net: nn.Module | None,
        schedule: Schedule,
        cfg: Config | None = None,
        shape: Sequence[int] | None = None,
        den: DenoiserFn | None = None,
        decode: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(cfg if cfg is not None else Config())
        if net is None and den is None:
            raise ValueError("a DiffusionModel needs a network or a denoiser")
        self.net, self.schedule, self._den, self.decode = net, schedule, den, decode
        if shape is None:
            if net is None:
                raise ValueError("a DiffusionModel built from a denoiser needs the item shape")
            shape = item_shape(net)
        self.shape = tuple(int(s) for s in shape)

    # --- what the model takes -----------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        k = getattr(self.net, "config", {}).get("num_classes") if self.net is not None else None
        return int(k) if k else None

    @property
    def takes_text(self) -> bool:
        return self.cfg.model.captions is not None

    def denoiser(self) -> DenoiserFn:
        """The (unguided) denoiser ``den(x, t, **cond) -> x0_hat``, clipped to [-1, 1] when the
        run's ``sample.clip_x0`` asks for it."""
        den = self._den if self._den is not None else build_denoiser(self.net, self.schedule, self.cfg.model)
        return clip_x0(den) if self.cfg.sample.clip_x0 else den

    def conditioning(
        self, n: int, label: int | Tensor | None = None, prompt: str | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(per-sample conditioning, the null conditioning for guidance) for ``label`` / ``prompt``."""
        cond: dict[str, Tensor] = {}
        null: dict[str, Tensor] = {}
        k = self.num_classes
        if isinstance(label, Tensor):  # one label per sample, passed on as they are (e.g. to a classifier guide)
            cond["y"] = label
            if k:
                null["y"] = k
        elif label is not None:
            if not k:
                raise ValueError("a label needs a class-conditional model (this one has no classes)")
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < k:
                raise ValueError(f"label {label!r} is outside the model's classes 0..{k - 1}")
            cond["y"] = torch.full((n,), label, dtype=torch.long)
            null["y"] = k
        if prompt is not None:
            try:
                ctx, mask = prompt_context(self.cfg, [prompt, ""])
            except ValueError as e:
                raise ValueError(f"prompt: {e}") from None
            cond["context"], cond["context_mask"] = ctx[:1].expand(n, -1, -1), mask[:1].expand(n, -1)
            null["context"], null["context_mask"] = ctx[1:], mask[1:]
        return cond, null

    def grid(self, solver: str, steps: int | None = None, grid: str | None = None) -> Tensor:
        """The time grid for ``solver`` at ``steps`` (the run's ``[sample]`` grid by default)."""
        sc = self.cfg.sample
        if grid is not None:
            sc = type(sc)(**{**sc.__dict__, "grid": grid})
        return sample_grid(sc, self.schedule, steps)

    def check(self) -> None:
        sc = self.cfg.sample
        build_solver(sc.solver, sc.solver_args)
        self.grid(sc.solver)

    # --- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        n: int,
        seed: int = 0,
        *,
        batch_size: int = 256,
        progress: bool = False,
        callback: Callable[[StepInfo], None] | None = None,
        solver: str | None = None,
        steps: int | None = None,
        grid: str | None = None,
        label: int | Tensor | None = None,
        prompt: str | None = None,
        guidance: float | None = None,
        guide: Callable[[DenoiserFn], DenoiserFn] | None = None,
        return_nfe: bool = False,
        image: Tensor | None = None,
        mask: Tensor | None = None,
        strength: float | None = None,
        resamplings: int = 1,
        refiner: Any = None,
        switch: float = 0.2,
        crop: Sequence[int] | None = None,
        orig_size: Sequence[int] | None = None,
        **cond: Any,
    ) -> Tensor | tuple[Tensor, int]:
        """n samples (decoded when the model has a decoder).

        Args:
            solver, steps, grid: the sampler (default: the run's ``[sample]`` section).
            label: a class (int) or one label per sample (tensor); prompt: a text prompt.
            guidance: classifier-free guidance weight w with the null label / empty prompt
                (needs ``label`` or ``prompt``).
            guide: any denoiser -> denoiser wrapper (classifier guidance, a counted wrapper, ...),
                applied after classifier-free guidance.
            return_nfe: also return the network evaluations per sample.
            image, mask, strength, resamplings: edit ``image`` instead of sampling from the prior:
                SDEdit (:func:`difflab.editing.sdedit`) at ``strength``, or with ``mask`` inpainting
                (:func:`difflab.editing.inpaint`, strength 1 by default).
            refiner, switch: hand over to a refiner run below t = ``switch``
                (:class:`difflab.experts.Handover`; guidance applies to both experts).
            crop, orig_size: SDXL micro-conditioning (models trained with it).
            cond: further conditioning, per sample when it is a tensor with n rows.
        """
        from difflab import guidance as dl_guidance

        per, null = self.conditioning(n, label, prompt)
        micro = self.micro_conditioning(n, crop, orig_size)
        if micro is not None:
            per["micro_cond"] = micro
        den = self.denoiser()
        if refiner is not None:
            den = self.handover(den, refiner, switch)
        if guidance:
            if not null:
                raise ValueError("guidance needs a label or a prompt (classifier-free guidance)")
            den = dl_guidance.cfg(den, scale=guidance, null=null)
        if guide is not None:
            den = guide(den)
        fixed = {}
        for k, v in cond.items():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n:
                per[k] = v
            else:
                fixed[k] = v
        sc = self.cfg.sample
        sol = build_solver(solver or sc.solver, sc.solver_args if solver is None else {})
        ts = self.grid(solver or sc.solver, steps, grid)
        was_training = self.net.training if self.net is not None else False
        if self.net is not None:
            self.net.eval()
        try:
            if image is not None:
                x, nfe = self._edit(den, sol, ts, n, seed, image, mask, strength, resamplings, batch_size, per, fixed)
            elif mask is not None or strength is not None:
                raise ValueError("mask and strength edit an image: pass image= too")
            else:
                x, nfe = sample_batched(
                    den,
                    self.schedule,
                    self.shape,
                    n,
                    seed,
                    sol,
                    ts,
                    batch_size=batch_size,
                    callback=callback,
                    progress=progress,
                    per_sample=per,
                    **fixed,
                )
        finally:
            if self.net is not None:
                self.net.train(was_training)
        if self.decode is not None:
            x = self.decode(x)
        return (x, nfe) if return_nfe else x

    # --- control and editing ------------------------------------------------------------------
    def micro_conditioning(self, n: int, crop: Sequence[int] | None, orig_size: Sequence[int] | None) -> Tensor | None:
        """SDXL micro-conditioning values (n, 6) = (orig h, w, crop top, left, target h, w), or None."""
        if crop is None and orig_size is None:
            return None
        if not getattr(self.net, "config", {}).get("micro_conditioning"):
            raise ValueError(
                "crop / orig_size need a model trained with micro-conditioning (model.args.micro_conditioning)"
            )
        size = self.shape[-1]
        crop = (0, 0) if crop is None else tuple(crop)
        orig = (size, size) if orig_size is None else tuple(orig_size)
        if len(crop) != 2 or len(orig) != 2 or min(*crop) < 0 or min(*orig) < 1:
            raise ValueError(
                f"crop must be (top, left) >= 0 and orig_size (h, w) >= 1, got crop={crop}, orig_size={orig}"
            )
        return torch.tensor([[*orig, *crop, size, size]], dtype=torch.float32).expand(n, 6)

    def handover(self, den: DenoiserFn, refiner: Any, switch: float) -> DenoiserFn:
        """``den`` above t = ``switch``, the refiner run's (clipped) denoiser below it."""
        from difflab.experts import Handover, check_experts

        if isinstance(refiner, str | os.PathLike):
            from difflab.train.runs import load_run

            refiner = load_run(refiner)
        if not isinstance(refiner, DiffusionModel):
            raise ValueError(f"a refiner must be a diffusion run, got a {type(refiner).__name__}")
        check_experts(self.schedule, refiner.schedule, self.shape, refiner.shape)
        return Handover(den, refiner.denoiser(), switch)

    def _edit(
        self,
        den: DenoiserFn,
        sol: Any,
        ts: Tensor,
        n: int,
        seed: int,
        image: Tensor,
        mask: Tensor | None,
        strength: float | None,
        resamplings: int,
        batch_size: int,
        per: dict[str, Tensor],
        fixed: dict[str, Any],
    ) -> tuple[Tensor, int]:
        """SDEdit or inpainting of ``image`` (1 or n items), n results in batches."""
        from difflab import editing

        if not isinstance(image, Tensor) or tuple(image.shape[1:]) != self.shape or image.shape[0] not in (1, n):
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image must be (1 or {n}, {', '.join(map(str, self.shape))}) in [-1, 1], got {got}")
        image = image.expand(n, *self.shape)
        if strength is None:
            if mask is None:
                raise ValueError("an edit needs a strength in [0, 1] (SDEdit) or a mask (inpainting)")
            strength = 1.0
        if mask is not None:
            editing.check_mask(mask, image)
        out, nfe = [], 0
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            _, gens = prior_noise(self.shape, self.schedule, seed, start, m)
            img = image[start : start + m]
            c = {k: v[start : start + m] for k, v in per.items()} | fixed
            if mask is None:
                x, nfe = editing.sdedit(
                    sol, den, self.schedule, img, ts, strength, generator=gens, final_denoise=True, return_nfe=True, **c
                )
            else:
                mk = mask[start : start + m] if mask.dim() == 4 and mask.shape[0] == n else mask
                x, nfe = editing.inpaint(
                    sol, den, self.schedule, img, mk, ts, strength=strength, resamplings=resamplings,
                    jump_length=max(1, (len(ts) - 1) // 10), generator=gens, final_denoise=True, return_nfe=True, **c,
                )  # fmt: skip
            out.append(x)
        return torch.cat(out), nfe


def item_shape(net: nn.Module) -> tuple[int, ...]:
    """The item shape a network's config describes (U-Net images, MLP points)."""
    c = getattr(net, "config", {})
    if "image_size" in c:
        return (c["in_channels"], c["image_size"], c["image_size"])
    if "dim" in c:
        return (c["dim"],)
    raise ValueError(f"cannot tell the item shape of a {type(net).__name__} from its config; pass shape=")


@torch.no_grad()
def generate(
    net: nn.Module,
    schedule: Schedule,
    cfg: Config,
    n: int,
    seed: int,
    solver: str | None = None,
    steps: int | None = None,
    batch_size: int = 256,
    callback: Callable[[StepInfo], None] | None = None,
    progress: bool = False,
    y: Tensor | None = None,
    guide: Callable[[DenoiserFn], DenoiserFn] | None = None,
    context: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Draw n samples from the diffusion network ``net`` trained with ``cfg`` (see
    :meth:`DiffusionModel.generate`); seeds are per sample, so the result does not depend on
    ``batch_size``.  ``guide`` wraps the (clipped) denoiser, e.g.
    ``functools.partial(difflab.guidance.cfg, scale=3.0, null={'y': num_classes})``; ``context``
    is (token embeddings (n, L, D), mask (n, L)) for text-conditional models."""
    cond = {}
    if context is not None:
        cond["context"], cond["context_mask"] = context
    model = DiffusionModel(net, schedule, cfg)
    return model.generate(
        n, seed, solver=solver, steps=steps, batch_size=batch_size, callback=callback, progress=progress,
        label=y, guide=guide, **cond,
    )  # fmt: skip
