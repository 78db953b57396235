"""Evaluating a trained checkpoint: sample it (optionally guided), measure the samples, and
measure test-set bits/dim -- what ``difflab eval CKPT --metrics fid,kid,pr,nll`` reports.

- Sample quality: :func:`difflab.metrics.evaluate` (FID, Heusel et al. 2017; KID, Binkowski et
  al. 2018; precision/recall, Kynkaanniemi et al. 2019; classifier accuracy) in the feature
  space of the shipped classifier for the data set, against training images.
- ``nll``: test-set bits/dim by both estimators of :mod:`difflab.likelihood`: the
  probability-flow ODE with uniform dequantisation (Song et al. 2021, Sec. 4.3 and App. D.2;
  Hutchinson trace) and, for discrete DDPM schedules, the variational bound (Ho et al. 2020,
  eq. 5 and 13), both of the unconditional model (the null label of a class-conditional one).
- Guidance: classifier-free (Ho & Salimans 2022, eq. 6) with scale w, or classifier guidance
  (Dhariwal & Nichol 2021) with a noisy classifier from :mod:`difflab.train.classifier`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import metrics as dl_metrics
from difflab.guidance import cfg as cfg_guidance
from difflab.guidance import classifier_guidance
from difflab.likelihood import bits_per_dim, ddpm_bits_per_dim
from difflab.schedules import DiscreteVP, Schedule
from difflab.train.build import build_data, build_denoiser
from difflab.train.checkpoint import CheckpointError
from difflab.train.config import Config
from difflab.train.models import DiffusionModel, Model
from difflab.train.runs import load_run

__all__ = [
    "class_labels",
    "evaluate_checkpoint",
    "guided_generate",
    "real_features",
    "test_bits_per_dim",
    "to_uint8",
    "write_report",
]

#: the shipped feature network for each data set of the config
FEATURE_NETS = {"fashion_mnist": "fashion_mnist", "digits": "digits"}
_FEATURE_CACHE: dict[tuple[str, str, int, str | None], Tensor] = {}


def num_classes(net: nn.Module) -> int | None:
    """The number of classes of a class-conditional network (None if unconditional)."""
    k = getattr(net, "config", {}).get("num_classes")
    return int(k) if k else None


def class_labels(n: int, k: int, label: int | None = None) -> Tensor:
    """Labels for n class-conditional samples: ``label`` repeated, or all k classes in turn
    (0, 1, ..., k-1, 0, ...); an out-of-range or non-integer label is an error."""
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < k:
            raise ValueError(f"label {label!r} is outside the model's trained classes 0..{k - 1}")
        return torch.full((n,), label, dtype=torch.long)
    return torch.arange(n) % k


def _check_finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _load_classifier(classifier: str | os.PathLike | nn.Module) -> nn.Module:
    if isinstance(classifier, nn.Module):
        return classifier
    from difflab.train.classifier import load_noisy_classifier

    return load_noisy_classifier(classifier)[0]


def guided_generate(
    model: DiffusionModel,
    n: int,
    seed: int = 0,
    solver: str | None = None,
    steps: int | None = None,
    label: int | None = None,
    unconditional: bool = False,
    guidance: float | None = None,
    classifier: str | os.PathLike | nn.Module | None = None,
    batch_size: int = 250,
    progress: bool = False,
) -> tuple[Tensor, Tensor | None, int]:
    """Draw n samples from a diffusion ``model``, class-conditional when it is (balanced classes,
    or ``label``).

    ``guidance``: None (plain conditional sampling), the classifier-free guidance weight w
    (``convention='w'``: 0 is the conditional model; a class-conditional model trained with
    label dropout), or with ``classifier`` the classifier-guidance scale s, applied to the
    unconditional (null-label) denoiser.  ``unconditional`` samples the null label.

    Returns (samples, the labels they were conditioned on or None, network evaluations per sample).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    k, schedule = model.num_classes, model.schedule
    if guidance is not None:
        _check_finite(guidance, "guidance scale")
    if classifier is not None and guidance is None:
        raise ValueError("a classifier was given but no guidance scale")
    y = None
    if classifier is not None:
        clf = _load_classifier(classifier)
        kc = int(clf.config["num_classes"]) if hasattr(clf, "config") else None
        if k is not None and kc is not None and kc != k:
            raise ValueError(f"the classifier has {kc} classes but the model {k}")
        y = class_labels(n, kc or k or 0, label)
    elif k is not None and not unconditional:
        y = class_labels(n, k, label)
    elif guidance is not None:
        raise ValueError("classifier-free guidance needs a class-conditional model (model.args.num_classes)")
    elif label is not None:
        raise ValueError("label= needs a class-conditional model or a classifier")
    calls = [0]

    def guide(den: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if classifier is not None:
            den = classifier_guidance(den, clf.log_prob, schedule, guidance)  # den sees no label: null token
        elif guidance is not None:
            den = cfg_guidance(den, guidance, null={"y": k})

        def counted(x: Tensor, t: Any, **c: Any) -> Tensor:
            calls[0] += 1
            return den(x, t, **c)

        return counted

    batch_size = min(batch_size, n)
    x = model.generate(
        n, seed, solver=solver, steps=steps, batch_size=batch_size, progress=progress, label=y, guide=guide
    )
    nfe = calls[0] // math.ceil(n / batch_size)
    return x, y, nfe


def _plain_generate(
    model: Model,
    n: int,
    seed: int,
    label: int | None,
    batch_size: int,
    progress: bool,
    guidance: float | None,
    classifier: Any,
) -> tuple[Tensor, Tensor | None, None]:
    """Samples of a model that is not a diffusion model (a GAN generator, ...): labels only; the
    network evaluations are the model's own business (reported as None)."""
    if guidance is not None or classifier is not None:
        raise ValueError(f"guidance applies to diffusion models; this run is a {model.kind} model")
    opts = {"label": label} if label is not None else {}
    model.check_options(opts)
    x = model.generate(n, seed, batch_size=batch_size, progress=progress, **opts)
    y = torch.full((n,), label, dtype=torch.long) if label is not None else None
    return x, y, None


def _feature_spec(cfg: Config, feature_net: str | None) -> tuple[str, str | None]:
    name = feature_net or FEATURE_NETS.get(cfg.data.name)
    if name is None:
        raise ValueError(f"no shipped feature network for data {cfg.data.name!r}; pass feature_net=")
    return name, ("center_crop" if cfg.data.pad_to else None)


def real_features(cfg: Config, n_real: int = 10000, feature_net: str | None = None, split: str = "train") -> Tensor:
    """Features of the first ``n_real`` images of the config's data set ``split`` (cached per process)."""
    name, adapt = _feature_spec(cfg, feature_net)
    key = (cfg.data.name, split, n_real, name)
    if key not in _FEATURE_CACHE:
        dc = type(cfg.data)(**{**cfg.data.__dict__, "split": split, "limit": n_real})
        x, _ = build_data(dc)
        _FEATURE_CACHE[key] = dl_metrics.feature_net(name, adapt).features(x)
    return _FEATURE_CACHE[key]


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> 8-bit integers k = round((x + 1) * 127.5)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def test_bits_per_dim(
    net: nn.Module,
    schedule: Schedule,
    cfg: Config,
    n: int = 64,
    batch_size: int = 32,
    rtol: float = 1e-4,
    vlb_terms: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Bits/dim of the first n test images under the unconditional model, by the PF-ODE
    (dequantised, Hutchinson trace; Song et al. 2021) and, for a DiscreteVP schedule, by DDPM's
    variational bound (Ho et al. 2020; ``vlb_terms`` t's drawn per image for an unbiased
    estimate, all T by default).  Means and their standard errors over the images."""
    dc = type(cfg.data)(**{**cfg.data.__dict__, "split": "test", "limit": n})
    x, _ = build_data(dc)
    if x.dim() != 4:
        raise ValueError("bits/dim needs image data")
    k = to_uint8(x)
    den = build_denoiser(net, schedule, cfg.model)  # no label: the null token of a conditional net
    out: dict[str, float] = {"nll_n": float(k.shape[0])}
    t0 = time.perf_counter()
    ode = torch.cat(
        [
            bits_per_dim(den, schedule, kb, generator=seed + i, divergence="hutchinson", rtol=rtol, atol=rtol)
            for i, kb in enumerate(k.split(batch_size))
        ]
    )
    out.update(bpd_ode=float(ode.mean()), bpd_ode_sem=float(ode.std() / ode.numel() ** 0.5))
    out["bpd_ode_seconds"] = time.perf_counter() - t0
    if isinstance(schedule, DiscreteVP):
        t0 = time.perf_counter()
        with torch.no_grad():
            vlb = torch.cat(
                [
                    ddpm_bits_per_dim(den, schedule, kb, n_terms=vlb_terms, generator=seed + i)
                    for i, kb in enumerate(k.split(batch_size))
                ]
            )
        out.update(bpd_vlb=float(vlb.mean()), bpd_vlb_sem=float(vlb.std() / vlb.numel() ** 0.5))
        out["bpd_vlb_seconds"] = time.perf_counter() - t0
        out["bpd_vlb_terms"] = float(vlb_terms or schedule.T - 1)
    return out


def evaluate_checkpoint(
    ckpt: str | os.PathLike,
    metrics: Sequence[str] | str = "fid,kid,pr",
    solver: str | None = None,
    steps: int | None = None,
    n: int = 1000,
    seed: int = 0,
    guidance: float | None = None,
    *,
    classifier: str | os.PathLike | nn.Module | None = None,
    label: int | None = None,
    unconditional: bool = False,
    n_real: int = 10000,
    feature_net: str | None = None,
    nll_n: int = 64,
    nll_rtol: float = 1e-4,
    nll_vlb_terms: int | None = None,
    batch_size: int = 250,
    use_ema: bool = True,
    out: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint (a run directory or one ``checkpoints/step_*`` directory).

    Args:
        metrics: names or a comma-separated string from :data:`difflab.metrics.METRICS`
            (``fid``, ``kid``, ``pr``, ``accuracy``, ...) plus ``nll`` (test bits/dim).
        solver, steps: the sampler and its steps (default: the checkpoint config's ``[sample]``).
        n, seed: samples to draw and their seed.
        guidance: classifier-free guidance weight w, or with ``classifier`` (a noisy-classifier
            checkpoint or module) the classifier-guidance scale s; see :func:`guided_generate`.
        label: sample only this class (class-conditional models); ``unconditional``: the null label.
        n_real: training images the feature statistics are computed from.
        nll_n, nll_rtol, nll_vlb_terms: test images, ODE tolerance and VLB terms for ``nll``.
        out: also write the report as JSON there.

    Returns:
        A flat JSON-able dict: checkpoint, step, sampler settings, nfe, sample_seconds, the
        metric values and for ``nll`` ``bpd_ode`` (+ ``_sem``) and ``bpd_vlb`` (+ ``_sem``).
    """
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    sample_metrics = [m for m in names if m != "nll"]
    if sample_metrics:
        bad = [m for m in sample_metrics if m not in dl_metrics.METRICS]
        if bad:
            raise ValueError(
                f"unknown metric(s) {', '.join(map(repr, bad))}; valid: nll, {', '.join(dl_metrics.METRICS)}"
            )
    if not names:
        raise ValueError("no metrics asked for")
    if guidance is not None:
        _check_finite(guidance, "guidance scale")
    try:
        model = load_run(ckpt, use_ema=use_ema)
    except CheckpointError as e:
        raise CheckpointError(f"cannot evaluate {ckpt}: {e}") from None
    cfg, state = model.cfg, model.state
    diffusion = isinstance(model, DiffusionModel)
    report: dict[str, Any] = {
        "checkpoint": str(state.get("path", ckpt)),
        "step": state.get("step"),
        "metrics": names,
    }
    if sample_metrics:
        t0 = time.perf_counter()
        if diffusion:
            k = model.num_classes
            if label is not None and k is not None:
                class_labels(1, k, label)  # fail before sampling
            x, y, nfe = guided_generate(
                model, n, seed, solver, steps, label, unconditional, guidance, classifier, batch_size, progress
            )
            report.update(
                solver=solver or cfg.sample.solver,
                steps=steps or cfg.sample.steps,
                guidance=guidance,
                guidance_kind=None if guidance is None else ("classifier" if classifier is not None else "cfg"),
            )
        else:
            x, y, nfe = _plain_generate(model, n, seed, label, batch_size, progress, guidance, classifier)
        report.update(
            nfe=nfe, n=n, seed=seed, conditional=y is not None, sample_seconds=time.perf_counter() - t0, kind=model.kind
        )
        if "accuracy" in sample_metrics and y is None:
            raise ValueError("metric 'accuracy' needs class-conditional samples (a conditional model or a classifier)")
        name, adapt = _feature_spec(cfg, feature_net)
        if x.dim() == 4:  # measure what would be saved: 8-bit images (as ADM's evaluation suite does)
            x = to_uint8(x).float() / 127.5 - 1
        needs_real = any(m in ("fid", "kid", "pr") for m in sample_metrics)
        report.update(
            dl_metrics.evaluate(
                x,
                metrics=sample_metrics,
                feature_net=name,
                adapt=adapt,
                labels=y,
                real_features=real_features(cfg, n_real, feature_net) if needs_real else None,
                kid_subset_size=min(1000, n),
            )
        )
        report["n_real"] = n_real
    if "nll" in names:
        if not diffusion or model.net is None:
            raise ValueError(f"metric 'nll' needs a diffusion model, this run is a {model.kind} model")
        report.update(
            test_bits_per_dim(model.net, model.schedule, cfg, nll_n, rtol=nll_rtol, vlb_terms=nll_vlb_terms, seed=seed)
        )
    if out is not None:
        write_report(report, out)
    return report


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a report as indented JSON (atomically: a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
    tmp.replace(path)
    return path
