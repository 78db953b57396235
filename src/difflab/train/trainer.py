"""The Trainer: AdamW with linear LR warm-up, gradient clipping and accumulation, EMA with
warm-up, bf16 autocast, optional torch.compile, atomic checkpoints with exact resume,
periodic sample grids, CSV (and TensorBoard) logs and a progress bar.

Exact resume: the minibatch order is a pure function of (seed, step) (:func:`difflab.data.batches`),
times / noise / label dropout come from the trainer's own generator, dropout from torch's
global RNG; both RNG states, the weights, the AdamW moments, the EMA and the step are saved,
so N steps straight and N/2 + resume + N/2 give the same weights bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from difflab import images
from difflab.data import batches
from difflab.denoiser import Denoiser, clip_x0
from difflab.solvers import sample
from difflab.train.build import (
    build_data,
    build_denoiser,
    build_loss,
    build_network,
    build_schedule,
    build_solver,
    sample_grid,
)
from difflab.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from difflab.train.config import Config, ConfigError, ModelConfig, from_dict, to_dict

__all__ = ["EMA", "Trainer", "TrainingError", "caption_bank", "generate", "load_model", "prompt_context"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class EMA:
    """Exponential moving average of the weights (Polyak averaging; Ho et al. 2020 use decay
    0.9999) with the warm-up decay_n = min(decay, (1 + n) / (10 + n)) so that early averages
    are not dominated by the random initialisation (Tarvainen & Valpola 2017's ramp-up)."""

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ConfigError(f"train.ema_decay = {decay} must lie in [0, 1)")
        self.decay, self.warmup = decay, warmup
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        d = self.current_decay()
        ema_p = list(self.net.parameters())
        src_p = list(net.parameters())
        torch._foreach_lerp_(ema_p, src_p, 1 - d)
        for eb, b in zip(self.net.buffers(), net.buffers()):
            eb.copy_(b)
        self.updates += 1


def _lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up from lr / warmup to lr over ``warmup`` steps, then constant (Ho et al. 2020, App. B)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def _meta_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match to resume (not steps / logging / sampling)."""
    return {k: cfg[k] for k in ("data", "model", "schedule", "loss")}


class ThreadTuner:
    """``train.threads = 0``: pick the faster of 1 and all intra-op threads, re-checked now and
    then.  On a shared machine OpenMP's barriers stall when a core is taken by another process,
    and one thread can then be many times faster than two."""

    def __init__(self, every: int = 200, probe: int = 3) -> None:
        self.max = max(1, os.cpu_count() or 1)
        self.every, self.probe = every, probe
        self.choice = self.max
        self.times: dict[int, list[float]] = {}
        self.k = 0

    def before(self) -> None:
        phase = self.k % self.every
        n = self.choice
        if self.max > 1 and phase < 2 * self.probe:
            n = 1 if phase < self.probe else self.max
        torch.set_num_threads(n)
        self._n, self._t = n, time.perf_counter()

    def after(self) -> None:
        phase = self.k % self.every
        if self.max > 1 and phase < 2 * self.probe:
            if phase % self.probe:  # the first step of each probe warms up
                self.times.setdefault(self._n, []).append(time.perf_counter() - self._t)
            if phase == 2 * self.probe - 1:
                self.choice = min(self.times, key=lambda n: sorted(self.times[n])[len(self.times[n]) // 2])
                self.times = {}
        self.k += 1


class Trainer:
    """Train the model described by a :class:`Config` into ``cfg.train.out``.

    ``fit()`` resumes from the newest complete checkpoint in ``out/checkpoints`` when one
    exists (``resume=False`` starts over and ignores them).
    """

    def __init__(
        self,
        cfg: Config,
        progress: bool = True,
        log: Callable[[str], None] = print,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg, self.progress, self.log = cfg, progress, log
        tc = cfg.train
        self.device = torch.device(device)
        self._tuner = ThreadTuner() if tc.threads == 0 else None
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.out = Path(tc.out)
        self.data, self.labels = build_data(cfg.data)
        self.schedule = build_schedule(cfg.schedule.name, cfg.schedule.args)
        num_classes = int(self.labels.max()) + 1 if self.labels is not None else None
        torch.manual_seed(tc.seed)  # network initialisation
        self.net = build_network(cfg.model, tuple(self.data.shape[1:]), num_classes).to(self.device)
        self._memory_format = torch.contiguous_format
        if tc.channels_last:
            if self.data.dim() != 4:
                raise ConfigError(
                    f"train.channels_last needs image data (N, C, H, W); data {cfg.data.name!r} has shape "
                    f"{tuple(self.data.shape)}"
                )
            self._memory_format = torch.channels_last
            self.net = self.net.to(memory_format=self._memory_format)
        self.conditional = bool(getattr(self.net, "config", {}).get("num_classes"))
        if self.conditional and self.labels is None:
            raise ConfigError("model.args.num_classes is set but the data set has no labels")
        self.captions = caption_bank(cfg.model, num_classes) if cfg.model.captions else None
        self.den = build_denoiser(self.net, self.schedule, cfg.model)
        self.loss_fn = build_loss(cfg, self.schedule)
        self.solver = build_solver(cfg.sample.solver, cfg.sample.solver_args)
        sample_grid(cfg.sample, self.schedule)  # validate now, not after an hour of training
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay
        )
        self.ema = EMA(self.net, tc.ema_decay, tc.ema_warmup)
        self.gen = torch.Generator().manual_seed(tc.seed + 1)
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self._fwd_net: nn.Module = torch.compile(self.net) if tc.compile else self.net
        self._train_den = Denoiser(
            self._fwd_net, self.schedule, self.den.prediction, self.den.time_input, self.den.learned_variance
        )
        self._tb = None

    # --- checkpoints --------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save(self) -> Path:
        opt_t, groups = optimizer_to_tensors(self.opt)
        tensors = {
            "model": self.net.state_dict(),
            "ema": self.ema.net.state_dict(),
            "optimizer": opt_t,
            "rng": {"torch": torch.get_rng_state(), "trainer": self.gen.get_state()},
        }
        if self.loss_fn.importance is not None:
            tensors["extra"] = {f"importance.{k}": v for k, v in self.loss_fn.importance.state_dict().items()}
        meta = {
            "config": to_dict(self.cfg),
            "network": self.cfg.model.network,
            "net_config": self.net.config,
            "optimizer_groups": groups,
            "ema_updates": self.ema.updates,
            "history": self.history[-5000:],
        }
        return save_checkpoint(self.ckpt_dir, self.step, tensors, meta, keep=self.cfg.train.keep)

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load the newest complete checkpoint (or ``path``); False if there is none."""
        path = Path(path) if path else latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        state, t = load_checkpoint(path)
        try:  # through the current Config: fields added since the checkpoint take their defaults
            saved = to_dict(from_dict(state.get("config", {}), f"{path}/state.json"))
        except ConfigError as e:
            raise CheckpointError(f"{path}: its config no longer loads: {e}") from None
        if _meta_key(saved) != _meta_key(to_dict(self.cfg)):
            raise ConfigError(
                f"{path} was trained with a different data/model/schedule/loss config; "
                f"use another train.out or start over with --fresh"
            )
        try:
            self.net.load_state_dict(t["model"])
            self.ema.net.load_state_dict(t["ema"])
            self.opt.load_state_dict(optimizer_from_tensors(t["optimizer"], state["optimizer_groups"]))
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path} does not fit this model: {e}") from None
        torch.set_rng_state(t["rng"]["torch"])
        self.gen.set_state(t["rng"]["trainer"])
        if self.loss_fn.importance is not None and "extra" in t:
            self.loss_fn.importance.load_state_dict(
                {k.split(".", 1)[1]: v for k, v in t["extra"].items() if k.startswith("importance.")}
            )
        self.ema.updates = state["ema_updates"]
        self.step = state["step"]
        self.history = [tuple(h) for h in state.get("history", [])]
        self.log(f"resumed from {path} (step {self.step})")
        return True

    # --- training -----------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, x: Tensor, y: Tensor | None) -> tuple[float, float]:
        """One optimizer step on the batch (x, y) (split into grad_accum micro-batches); returns (loss, grad norm)."""
        tc = self.cfg.train
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = _lr_at(self.step, tc.lr, tc.warmup)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for xm, ym in zip(
            x.chunk(tc.grad_accum), (y.chunk(tc.grad_accum) if y is not None else [None] * tc.grad_accum)
        ):
            cond = {}
            if self.conditional or self.captions is not None:
                drop = torch.rand(ym.shape[0], generator=self.gen) < tc.label_dropout
            if self.conditional:
                null = self.net.config["num_classes"]
                cond["y"] = torch.where(drop, torch.full_like(ym, null), ym).to(self.device)
            if self.captions is not None:  # a random caption of the label, or the empty prompt
                null = self.captions.num_classes
                ctx, mask = self.captions.lookup(torch.where(drop, torch.full_like(ym, null), ym), self.gen)
                cond["context"], cond["context_mask"] = ctx.to(self.device), mask.to(self.device)
            with self._autocast():
                xm = xm.to(self.device).contiguous(memory_format=self._memory_format)
                loss = self.loss_fn(self._train_den, xm, self.gen, **cond)
            if not torch.isfinite(loss.detach()):
                last = latest_checkpoint(self.ckpt_dir)
                raise TrainingError(
                    f"the loss became {float(loss.detach())} at step {self.step}; stopping. "
                    + (f"The last good checkpoint is {last}." if last else "No checkpoint was written yet.")
                    + " Try a lower train.lr, train.grad_clip or disabling train.bf16."
                )
            (loss / tc.grad_accum).backward()
            total += float(loss.detach()) / tc.grad_accum
        gn = float("nan")
        if tc.grad_clip:
            gn = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip))
        self.opt.step()
        self.ema.update(self.net)
        self.step += 1
        return total, gn

    def _log_row(self, row: dict[str, Any]) -> None:
        p = self.out / "log.csv"
        new = not p.exists()
        with open(p, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # TensorBoard is optional; the CSV log always exists
                self._tb = False
        if self._tb:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, row["step"])

    def fit(self, resume: bool = True) -> Path:
        """Train up to ``train.steps`` (or ``train.max_minutes``); returns the final checkpoint."""
        tc = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=1))
        if resume:
            self.resume()
        stream = batches(self.data, self.labels, tc.batch_size, seed=tc.seed, start_step=self.step)
        bar = tqdm(total=tc.steps, initial=self.step, disable=not self.progress, desc="train", unit="it")
        t0 = time.perf_counter()
        t_last, s_last = t0, self.step
        run_loss, n_loss = 0.0, 0
        last_ckpt = None
        try:
            while self.step < tc.steps:
                x, y = next(stream)
                if self._tuner:
                    self._tuner.before()
                loss, gn = self.train_step(x, y)
                if self._tuner:
                    self._tuner.after()
                self.history.append((self.step, loss))
                run_loss, n_loss = run_loss + loss, n_loss + 1
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.perf_counter()
                    ips = (self.step - s_last) / max(now - t_last, 1e-9)
                    row = {
                        "step": self.step,
                        "loss": run_loss / n_loss,
                        "lr": self.opt.param_groups[0]["lr"],
                        "grad_norm": gn,
                        "it_per_s": ips,
                        "threads": torch.get_num_threads(),
                        "elapsed_s": now - t0,
                    }
                    self._log_row(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", its=f"{ips:.1f}")
                    t_last, s_last, run_loss, n_loss = now, self.step, 0.0, 0
                if tc.ckpt_every and self.step % tc.ckpt_every == 0:
                    last_ckpt = self.save()
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self.save_samples(self.out / "samples" / f"step_{self.step:07d}.png")
                if tc.max_minutes is not None and time.perf_counter() - t0 > 60 * tc.max_minutes:
                    self.log(f"stopping at step {self.step}: train.max_minutes = {tc.max_minutes} reached")
                    break
        finally:
            bar.close()
        self.train_seconds = time.perf_counter() - t0
        if last_ckpt is None or not last_ckpt.name.endswith(f"{self.step:07d}"):
            last_ckpt = self.save()
        if self.history:
            s, lv = zip(*self.history)
            images.save_loss_curve(s, lv, self.out / "loss.png")
        return last_ckpt

    # --- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, n: int | None = None, seed: int | None = None, use_ema: bool = True, **kw) -> Tensor:
        """n samples from the (EMA) model with the config's solver and grid."""
        sc = self.cfg.sample
        net = self.ema.net if use_ema else self.net
        return generate(net, self.schedule, self.cfg, n or sc.n, sc.seed if seed is None else seed, **kw)

    def save_samples(self, path: Path) -> Path:
        x = self.generate()
        if x.dim() == 2:
            return images.save_points(x, path)
        return images.save_grid(x, path)


@torch.no_grad()
def generate(
    net: nn.Module,
    schedule,
    cfg: Config,
    n: int,
    seed: int,
    solver: str | None = None,
    steps: int | None = None,
    batch_size: int = 256,
    callback: Callable | None = None,
    progress: bool = False,
    y: Tensor | None = None,
    guide: Callable[[Callable[..., Tensor]], Callable[..., Tensor]] | None = None,
    context: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Draw n samples from ``net`` (in eval mode) in batches; seeds are per sample, so the
    result does not depend on ``batch_size``.  ``guide`` wraps the (clipped) denoiser, e.g.
    ``lambda den: difflab.guidance.cfg(den, 3.0, null={'y': num_classes})``; ``context`` is
    (token embeddings (n, L, D), mask (n, L)) for text-conditional models (see
    :func:`prompt_context`)."""
    was_training = net.training
    net.eval()
    try:
        den = build_denoiser(net, schedule, cfg.model)
        if cfg.sample.clip_x0:
            den = clip_x0(den)

        if guide is not None:
            den = guide(den)
        sol = build_solver(solver or cfg.sample.solver, cfg.sample.solver_args if solver is None else {})
        ts = sample_grid(cfg.sample, schedule, steps)
        shape = _item_shape(net)
        out = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            seeds = [(seed, start + j) for j in range(m)]
            gens = [torch.Generator().manual_seed(hash_seed(s, j)) for s, j in seeds]
            x_T = torch.stack([torch.randn(shape, generator=g) for g in gens]) * schedule.prior_std()
            cond = {}
            if y is not None:
                cond["y"] = y[start : start + m]
            if context is not None:
                cond["context"], cond["context_mask"] = (c[start : start + m] for c in context)
            x = sample(
                sol,
                den,
                schedule,
                x_T,
                ts,
                generator=gens,
                callback=callback,
                progress=progress,
                final_denoise=True,
                **cond,
            )
            out.append(x)
        return torch.cat(out)
    finally:
        net.train(was_training)


def caption_bank(model: ModelConfig, num_classes: int | None):
    """The caption embeddings a text-conditional model trains on (checks the label count)."""
    from difflab.text import CaptionBank, TextEncoder, caption_set

    try:
        nouns = caption_set(model.captions)
    except ValueError as e:
        raise ConfigError(f"model.captions: {e}") from None
    if num_classes is None:
        raise ConfigError("model.captions (text conditioning) needs a labelled data set")
    if num_classes > len(nouns):
        raise ConfigError(
            f"model.captions = {model.captions!r} captions {len(nouns)} classes, the data has {num_classes}"
        )
    return CaptionBank(TextEncoder(model.text_max_length), nouns)


def prompt_context(cfg: Config, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Token embeddings of ``prompts`` for a text-conditional model trained with ``cfg``;
    the empty prompt is the unconditional (null) prompt."""
    if cfg.model.captions is None:
        raise ValueError("this model was trained without text (model.captions is not set); it takes no prompt")
    from difflab.text import TextEncoder

    return TextEncoder(cfg.model.text_max_length).encode(prompts)


def hash_seed(seed: int, index: int) -> int:
    """Per-sample seed (see :mod:`difflab.random`)."""
    from difflab.random import sample_seed

    return sample_seed(seed, index, stream=7)


def _item_shape(net: nn.Module) -> tuple[int, ...]:
    c = net.config
    if "image_size" in c:
        return (c["in_channels"], c["image_size"], c["image_size"])
    return (c["dim"],)


def load_model(path: str | os.PathLike, use_ema: bool = True) -> tuple[nn.Module, Any, Config, dict[str, Any]]:
    """(network, schedule, config, state) from a checkpoint directory or a run directory."""
    from difflab import nn as dl_nn

    state, t = load_checkpoint(path, parts=("ema" if use_ema else "model",))
    try:
        cfg = from_dict(state["config"], f"{state['path']}/state.json")
        net = dl_nn.build(state["network"], **state["net_config"])
        net.load_state_dict(t["ema" if use_ema else "model"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{state['path']} is not a usable difflab model checkpoint: {e}") from None
    schedule = build_schedule(cfg.schedule.name, cfg.schedule.args)
    return net.eval(), schedule, cfg, state
