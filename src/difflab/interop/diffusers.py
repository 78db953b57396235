"""diffusers models in difflab: a model directory saved by diffusers becomes a difflab denoiser
and schedule, so difflab's solvers, guidance, likelihoods and metrics run on it.

    from difflab import sample
    from difflab.interop import from_diffusers

    den, sch = from_diffusers("my-ddpm-pipeline")       # a DDPMPipeline.save_pretrained folder
    ts = den.grid(20)                                   # the scheduler config's own timestep spacing
    solver = solvers.get(*den.solver_for())             # the difflab solver its scheduler class runs
    x = sample(solver, den, sch, sch.prior_sample((16, *den.sample_shape), generator=0), ts)

What is read from the scheduler's config (``scheduler_config.json``):

- the betas: ``beta_schedule`` ``linear`` / ``scaled_linear`` / ``squaredcos_cap_v2`` or
  ``trained_betas``, computed in float32 exactly as diffusers does, into a
  :class:`~difflab.schedules.DiscreteVP` (its step index i is diffusers' timestep i: alpha-bar_i =
  ``alphas_cumprod[i]`` at t = (i + 1) / T);
- ``prediction_type`` ``epsilon`` / ``sample`` / ``v_prediction`` -> difflab's ``eps`` / ``x0`` / ``v``;
- ``timestep_spacing`` (``leading`` with ``steps_offset``, ``trailing``, ``linspace``; Lin et al. 2024,
  "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2) and the end point
  (``set_alpha_to_one``, ``final_sigmas_type``): :func:`diffusers_grid` gives the difflab time grid on
  which difflab's solvers evaluate the network at exactly the timesteps the diffusers scheduler class
  would, and end where it ends;
- ``clip_sample`` / ``thresholding``: post-processing of x0_hat that diffusers' schedulers apply; they
  are reported (``den.clip_sample``, ``den.thresholding``), not applied, since difflab treats them as
  sampling options (:func:`difflab.denoiser.clip_x0`, :func:`~difflab.denoiser.dynamic_thresholding`).

Only safetensors weights are read (``use_safetensors=True``): nothing is unpickled.  diffusers is an
optional dependency: ``pip install 'difflab[interop]'``.  This module is the only place in difflab
that imports it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab import timesteps
from difflab.denoiser import Denoiser
from difflab.schedules import DiscreteVP

__all__ = [
    "SUPPORTED_MODELS",
    "SUPPORTED_SCHEDULERS",
    "DiffusersDenoiser",
    "DiffusersNet",
    "diffusers_grid",
    "from_diffusers",
    "sample_with_scheduler",
    "schedule_from_config",
]

#: diffusers model classes :func:`from_diffusers` loads, and the folder name a pipeline stores each in
SUPPORTED_MODELS: dict[str, str] = {
    "UNet2DModel": "unet",
    "UNet2DConditionModel": "unet",
    "DiTTransformer2DModel": "transformer",
}

#: diffusers' ``prediction_type`` -> difflab's prediction
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}

# Schedulers whose set_timesteps picks N indices and whose DDIM-type step goes to the next one
# (to alpha-bar = 1 at the end: set_alpha_to_one, DDPM's "one").
_DDIM_FAMILY = ("DDIMScheduler", "DDPMScheduler")
# Multistep exponential integrators: N + 1 indices with the last dropped, then a final sigma
# (0, "zero"; or alpha-bar_0's, "sigma_min").
_MULTISTEP_FAMILY = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
#: scheduler classes :func:`diffusers_grid` reproduces (the betas of every DDPM-type scheduler are read)
SUPPORTED_SCHEDULERS = _DDIM_FAMILY + _MULTISTEP_FAMILY

_INSTALL = (
    "diffusers is not installed; install the interop extra: pip install 'difflab[interop]' (or pip install diffusers)"
)


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError(_INSTALL) from None
    return diffusers


# --- the schedule -------------------------------------------------------------------------
def _betas(sc: dict[str, Any]) -> Tensor:
    """diffusers' betas for a scheduler config, in float32 as diffusers computes them
    (``DDPMScheduler.__init__``), returned as float64."""
    T = int(sc.get("num_train_timesteps", 1000))
    if sc.get("trained_betas") is not None:
        betas = torch.tensor(sc["trained_betas"], dtype=torch.float32)
        if betas.numel() != T:
            raise ValueError(f"scheduler config: trained_betas has {betas.numel()} values, num_train_timesteps is {T}")
        return betas.to(torch.float64)
    kind = sc.get("beta_schedule", "linear")
    b0, b1 = float(sc.get("beta_start", 1e-4)), float(sc.get("beta_end", 0.02))
    if kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float32)
    elif kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float32) ** 2
    elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999
        abar = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
        betas = torch.tensor([min(1 - abar[i + 1] / abar[i], 0.999) for i in range(T)], dtype=torch.float32)
    else:
        raise ValueError(
            f"scheduler config: beta_schedule {kind!r} is not supported; supported: linear, scaled_linear, "
            "squaredcos_cap_v2 (or trained_betas)"
        )
    return betas.to(torch.float64)


def schedule_from_config(sc: dict[str, Any]) -> DiscreteVP:
    """The :class:`~difflab.schedules.DiscreteVP` of a diffusers DDPM-type scheduler config."""
    if sc.get("rescale_betas_zero_snr"):
        raise ValueError(
            "scheduler config: rescale_betas_zero_snr = true makes alpha-bar_T = 0 (zero terminal SNR, Lin et al. "
            "2024), which difflab's DiscreteVP (finite log-SNR at t = 1) does not represent"
        )
    if sc.get("use_flow_sigmas") or "shift" in sc or sc.get("_class_name", "").startswith("FlowMatch"):
        raise ValueError(
            f"scheduler config: {sc.get('_class_name')} is a flow-matching scheduler; only DDPM-type betas are read"
        )
    return DiscreteVP(_betas(sc))


# --- time grids ---------------------------------------------------------------------------
def _scheduler_class(sc: dict[str, Any], scheduler: str | None) -> str:
    name = scheduler or sc.get("_class_name") or "DDIMScheduler"
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"no difflab time grid for diffusers' {name}; supported scheduler classes: {', '.join(SUPPORTED_SCHEDULERS)}"
        )
    for flag in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas"):
        if sc.get(flag):
            raise ValueError(
                f"scheduler config: {flag} = true rounds its own sigmas to timesteps; use difflab's grids "
                "(timesteps.karras, timesteps.log_snr_uniform) instead of diffusers_grid"
            )
    return name


def diffusers_grid(schedule: DiscreteVP, sc: dict[str, Any], steps: int, scheduler: str | None = None) -> Tensor:
    """The difflab time grid (``steps`` network evaluations) on which difflab's solvers evaluate the
    network at the timesteps diffusers' ``scheduler`` class (default: the config's ``_class_name``)
    picks in ``set_timesteps(steps)`` for this config, and end where it ends.  Timestep i sits at
    t = (i + 1) / T; alpha-bar = 1 is t = 0 (reached by the final denoising step), alpha-bar_0 is t = 1/T.

    - DDIM / DDPM: ``leading`` (with ``steps_offset``), ``trailing`` and ``linspace`` are
      :func:`difflab.timesteps.leading` / ``trailing`` / ``linspace``; DDIM ends at alpha-bar = 1 with
      ``set_alpha_to_one`` (its default) and at alpha-bar_0 without.  DDIM steps from timestep tau to
      tau - T // steps, which is the next timestep only for ``leading`` or when ``steps`` divides T:
      with other spacings diffusers' DDIM evaluates the network at a time its state is not at, which
      no grid reproduces (the difflab grid then takes the timesteps, the consistent discretisation).
    - DPMSolverMultistep / UniPC / DEIS: N + 1 indices with the last dropped (their own ``linspace``
      and ``leading``; DPM-Solver's ``lambda_min_clipped`` honoured), then ``final_sigmas_type``:
      ``zero`` -> t = 0, ``sigma_min`` -> t = 1/T (DEIS always ends at sigma_min).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be an integer in [1, T={schedule.T}], got {steps!r}")
    name = _scheduler_class(sc, scheduler)
    T = schedule.T
    spacing = sc.get("timestep_spacing", "leading" if name == "DDIMScheduler" else "linspace")
    offset = int(sc.get("steps_offset", 0))
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"scheduler config: timestep_spacing {spacing!r} is not one of leading, trailing, linspace")
    if name in _DDIM_FAMILY:
        if spacing == "linspace" and steps == 1:
            # np.linspace(0, T - 1, 1) is [0]: diffusers' one-step linspace "sampler" evaluates at timestep 0
            grid = torch.tensor([1 / T, 0.0], dtype=torch.float64)
        elif spacing == "leading":
            grid = timesteps.leading(schedule, steps, offset)
        else:
            grid = timesteps.get(spacing, schedule, steps)
        if name == "DDIMScheduler" and not sc.get("set_alpha_to_one", True):
            # end at alpha-bar_0 (t = 1/T) instead of t = 0; where the last timestep is index 0 already,
            # diffusers' last step has zero length (the identity) and the grid just ends there
            grid = grid[:-1]
            if float(grid[-1]) > 1 / T + 1e-12:
                grid = torch.cat([grid, torch.tensor([1 / T], dtype=torch.float64)])
        return grid
    # multistep family (diffusers' DPMSolverMultistepScheduler.set_timesteps)
    last = T
    lam_min = sc.get("lambda_min_clipped")
    if name == "DPMSolverMultistepScheduler" and lam_min is not None and math.isfinite(float(lam_min)):
        ac = schedule.alphas_cumprod.to(torch.float32)
        lam = torch.log(ac.sqrt()) - torch.log((1 - ac).sqrt())
        last = T - int(torch.searchsorted(torch.flip(lam, [0]), float(lam_min)))
    if spacing == "linspace":
        idx = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        idx = (np.arange(0, steps + 1) * (last // (steps + 1))).round()[::-1][:-1] + offset
    else:
        idx = np.arange(last, 0, -T / steps).round() - 1
    idx = idx.astype(np.int64)
    final = "sigma_min" if name == "DEISMultistepScheduler" else sc.get("final_sigmas_type", "zero")
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"scheduler config: final_sigmas_type {final!r} is not one of zero, sigma_min")
    ts = (torch.from_numpy(idx.copy()).to(torch.float64) + 1) / T
    end = 0.0 if final == "zero" else 1 / T
    if float(ts[-1]) <= end:  # already at the end point: diffusers' last step has zero length
        ts = ts[:-1]
    return torch.cat([ts, torch.tensor([end], dtype=torch.float64)])


def solver_for(sc: dict[str, Any], scheduler: str | None = None) -> tuple[str, dict[str, Any]]:
    """(difflab solver name, options) that run the update of diffusers' ``scheduler`` class
    (default: the config's) with this config: DDIM (eta = 0) -> ``ddim``; DDPM -> ``ddpm``;
    DPM-Solver++ 2M / 3M (``algorithm_type = dpmsolver++``, midpoint) -> ``dpmpp_2m`` / ``dpmpp_3m``
    with ``solver_type='dpmsolver'``; UniPC (x0 prediction, ``bh1``/``bh2``) -> ``unipc``; DEIS -> ``deis``."""
    name = _scheduler_class(sc, scheduler)
    order = int(sc.get("solver_order", 2))
    final_sigma_min = name == "DEISMultistepScheduler" or sc.get("final_sigmas_type", "zero") == "sigma_min"
    # diffusers lowers the last step's order below 15 steps; to sigma = 0 it is the final denoising step anyway
    lof = bool(sc.get("lower_order_final", True)) and final_sigma_min
    if name == "DDIMScheduler":
        return "ddim", {}
    if name == "DDPMScheduler":
        return "ddpm", {}
    if name == "DPMSolverMultistepScheduler":
        if sc.get("algorithm_type", "dpmsolver++") != "dpmsolver++" or sc.get("solver_type", "midpoint") != "midpoint":
            raise ValueError(
                f"no difflab solver for DPMSolverMultistepScheduler with algorithm_type {sc.get('algorithm_type')!r}, "
                f"solver_type {sc.get('solver_type')!r}; supported: dpmsolver++ with midpoint"
            )
        if order not in (2, 3):
            raise ValueError(f"DPMSolverMultistepScheduler solver_order {order} has no difflab solver (2 or 3)")
        return ("dpmpp_2m" if order == 2 else "dpmpp_3m"), {"solver_type": "dpmsolver", "lower_order_final": lof}
    if name == "UniPCMultistepScheduler":
        if not sc.get("predict_x0", True):
            return "unipc", {"prediction": "eps", "variant": sc.get("solver_type", "bh2"), "predictor_order": order}
        return "unipc", {"variant": sc.get("solver_type", "bh2"), "predictor_order": order, "lower_order_final": lof}
    return "deis", {"order": order}


# --- the network --------------------------------------------------------------------------
class DiffusersNet(nn.Module):
    """A diffusers model as a difflab network ``net(x, t, y=None, context=None, context_mask=None)``:
    ``t`` is diffusers' (possibly fractional) timestep, ``y`` its ``class_labels``, ``context`` /
    ``context_mask`` its ``encoder_hidden_states`` / ``encoder_attention_mask``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.kind = type(model).__name__
        c = dict(model.config)
        size = c.get("sample_size", 32)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        # what difflab's own networks record (see train.trainer._item_shape)
        self.config = {"in_channels": c["in_channels"], "image_size": h, "image_hw": (h, w)}
        self.out_channels = c.get("out_channels") or c["in_channels"]
        if self.kind == "DiTTransformer2DModel":
            self.num_classes = c.get("num_embeds_ada_norm")
        else:
            self.num_classes = c.get("num_class_embeds")
        self.config["num_classes"] = self.num_classes
        self.cross_attention_dim = c.get("cross_attention_dim") if self.kind == "UNet2DConditionModel" else None

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        kw: dict[str, Any] = {"return_dict": False}
        if y is not None:
            if self.num_classes is None and self.kind != "UNet2DConditionModel":
                raise ValueError(f"this {self.kind} is not class-conditional; it takes no y (class labels)")
            kw["class_labels"] = y
        elif self.kind == "DiTTransformer2DModel":
            raise ValueError(
                "a DiTTransformer2DModel is class-conditional: pass y (class labels; the null class is num_classes)"
            )
        if self.kind == "UNet2DConditionModel":
            if context is None:
                raise ValueError(
                    f"a UNet2DConditionModel needs context (encoder_hidden_states of width {self.cross_attention_dim})"
                )
            kw["encoder_hidden_states"] = context
            if context_mask is not None:
                kw["encoder_attention_mask"] = context_mask
        elif context is not None:
            raise ValueError(f"this {self.kind} has no cross-attention; it takes no context")
        if self.kind == "DiTTransformer2DModel":
            return self.model(x, timestep=t, **kw)[0]
        return self.model(x, t, **kw)[0]


class DiffusersDenoiser(Denoiser):
    """:class:`~difflab.denoiser.Denoiser` of a diffusers model, with what its scheduler config says.

    Attributes:
        model: the diffusers module; ``net`` is it wrapped as :class:`DiffusersNet`.
        scheduler_config: the scheduler config (dict) the schedule and the grid come from.
        sample_shape: (C, H, W) of one sample.
        num_classes: class labels the model takes (``y``; the null class for guidance is
            ``num_classes`` where it was trained with label dropout), or ``None``.
        clip_sample, thresholding: the x0_hat post-processing the config asks diffusers to apply.
    """

    def __init__(self, net: DiffusersNet, schedule: DiscreteVP, scheduler_config: dict[str, Any], source: Path) -> None:
        sc = scheduler_config
        pt = sc.get("prediction_type", "epsilon")
        if pt not in PREDICTIONS:
            raise ValueError(
                f"scheduler config: prediction_type {pt!r} is not supported; supported: {', '.join(PREDICTIONS)}"
            )
        c_in = net.config["in_channels"]
        if net.out_channels not in (c_in, 2 * c_in):
            raise ValueError(f"{net.kind}: out_channels {net.out_channels} is neither in_channels {c_in} nor twice it")
        # twice the channels: the second half is the learned variance (DiT; "learned_range",
        # Nichol & Dhariwal 2021, eq. 15) -- only the first half is the prediction
        super().__init__(net, schedule, PREDICTIONS[pt], learned_variance=net.out_channels == 2 * c_in)
        self.model = net.model
        self.scheduler_config = dict(sc)
        self.source = source
        h, w = net.config["image_hw"]
        self.sample_shape = (c_in, h, w)
        self.num_classes = net.num_classes
        self.clip_sample = bool(sc.get("clip_sample", False))
        self.thresholding = bool(sc.get("thresholding", False))

    def grid(self, steps: int, scheduler: str | None = None) -> Tensor:
        """:func:`diffusers_grid` for this model's scheduler config."""
        return diffusers_grid(self.schedule, self.scheduler_config, steps, scheduler)

    def solver_for(self, scheduler: str | None = None) -> tuple[str, dict[str, Any]]:
        """:func:`solver_for` for this model's scheduler config."""
        return solver_for(self.scheduler_config, scheduler)

    def __repr__(self) -> str:
        return f"DiffusersDenoiser({self.net.kind} from {self.source}, {self.prediction}, {self.schedule!r})"


# --- loading ------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _listing(path: Path) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError:
        return "nothing readable"
    return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "an empty folder"


def _locate(path: Path, scheduler: str | os.PathLike | dict | None) -> tuple[Path, str, dict[str, Any]]:
    """(model folder, model class, scheduler config) of a pipeline or model folder."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a directory (a diffusers model or pipeline folder saved with save_pretrained)"
        )
    supported = ", ".join(SUPPORTED_MODELS)
    if (path / "model_index.json").is_file():  # a pipeline: model_index.json names its parts
        index = _read_json(path / "model_index.json")
        parts = {k: v[1] for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[1]}
        models = {k: v for k, v in parts.items() if k in ("unet", "transformer")}
        if not models:
            raise ValueError(
                f"{path}: the pipeline {index.get('_class_name')} has no unet/ or transformer/ part "
                f"(parts: {', '.join(f'{k}={v}' for k, v in parts.items()) or 'none'}); supported model classes: {supported}"
            )
        sub, cls = next(iter(models.items()))
        model_dir = path / sub
        if scheduler is None:
            if "scheduler" not in parts:
                raise ValueError(f"{path}: the pipeline has no scheduler part; pass scheduler=<folder or config dict>")
            scheduler = path / "scheduler"
    elif (path / "config.json").is_file():
        model_dir, cls = path, _read_json(path / "config.json").get("_class_name", "?")
    else:
        raise ValueError(
            f"{path} holds neither model_index.json (a pipeline) nor config.json (a model); it holds {_listing(path)}"
        )
    if cls not in SUPPORTED_MODELS:
        raise ValueError(f"{model_dir}: model class {cls} is not supported; supported model classes: {supported}")
    if scheduler is None:
        for cand in (model_dir / "scheduler_config.json", model_dir.parent / "scheduler" / "scheduler_config.json"):
            if cand.is_file():
                scheduler = cand
                break
        else:
            raise ValueError(
                f"{model_dir}: no scheduler_config.json beside the model (nor in ../scheduler/); save the scheduler "
                "with scheduler.save_pretrained(folder) or pass scheduler=<folder or config dict>"
            )
    if isinstance(scheduler, dict):
        sc = dict(scheduler)
    else:
        p = Path(scheduler)
        sc = _read_json(p / "scheduler_config.json" if p.is_dir() else p)
    return model_dir, cls, sc


def from_diffusers(
    path: str | os.PathLike,
    scheduler: str | os.PathLike | dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[DiffusersDenoiser, DiscreteVP]:
    """Load a diffusers model directory as ``(denoiser, schedule)``.

    Args:
        path: a folder written by ``save_pretrained``: a pipeline (``model_index.json`` with ``unet/``
            or ``transformer/`` and ``scheduler/``, e.g. ``DDPMPipeline``, ``DiTPipeline`` -- a latent
            pipeline's VAE is not loaded: the denoiser works on its latents) or a model folder
            (``config.json`` of a ``UNet2DModel``, ``UNet2DConditionModel`` or
            ``DiTTransformer2DModel``, with ``scheduler_config.json`` beside it or in ``../scheduler/``).
        scheduler: the scheduler config to use instead (a folder, a JSON file or a dict).
        device, dtype: where and in which dtype the network runs.

    Returns:
        The denoiser ``den(x, t, y=..., context=..., context_mask=...) -> x0_hat`` (a
        :class:`DiffusersDenoiser`: ``den.grid(steps)``, ``den.solver_for()``, ``den.sample_shape``) and
        the :class:`~difflab.schedules.DiscreteVP` of the scheduler's betas.

    Raises:
        ImportError: diffusers is not installed (the message says how to install it).
        ValueError: not a diffusers folder (it lists what it found), an unsupported model class (it
            names the supported ones), or a scheduler config difflab does not represent.
    """
    model_dir, cls, sc = _locate(Path(path), scheduler)
    D = _diffusers()
    if not any(p.suffix == ".safetensors" for p in model_dir.iterdir()):
        raise ValueError(
            f"{model_dir}: no .safetensors weights ({_listing(model_dir)}); difflab never unpickles .bin files -- "
            "re-save the model with save_pretrained(folder, safe_serialization=True)"
        )
    schedule = schedule_from_config(sc)
    if int(sc.get("num_train_timesteps", 1000)) != schedule.T:  # pragma: no cover - guarded by _betas
        raise ValueError("scheduler config: num_train_timesteps does not match its betas")
    model = getattr(D, cls).from_pretrained(model_dir, use_safetensors=True, local_files_only=True)
    if cls == "UNet2DModel" and model.config.get("time_embedding_type", "positional") != "positional":
        raise ValueError(
            f"{model_dir}: UNet2DModel with time_embedding_type {model.config.time_embedding_type!r} (a score-SDE VE "
            "model) is not supported; supported: positional time embeddings with a DDPM-type scheduler"
        )
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return DiffusersDenoiser(DiffusersNet(model), schedule, sc, Path(path)), schedule


# --- the reference: diffusers' own loop ---------------------------------------------------------
def sample_with_scheduler(
    scheduler: Any,
    eps_model: Callable[[Tensor, Any], Tensor],
    x_T: Tensor,
    steps: int | None = None,
) -> Tensor:
    """Run a diffusers scheduler as its pipelines do (``set_timesteps``, then per timestep
    ``scale_model_input``, the model, ``step``), from x_T in the variance-preserving frame
    (k-diffusion-type schedulers start from x_T * ``init_noise_sigma``).  ``eps_model(x, tau)`` returns
    what the scheduler's ``prediction_type`` expects.  The reference difflab's samplers are compared with
    (``benchmarks/samplers.py``, ``tests/test_interop.py``)."""
    if steps is not None:
        scheduler.set_timesteps(steps)
    x = x_T * float(scheduler.init_noise_sigma)
    for tau in scheduler.timesteps:
        x = scheduler.step(eps_model(scheduler.scale_model_input(x, tau), tau), tau, x).prev_sample
    return x
