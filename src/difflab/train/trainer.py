"""The Trainer: one training loop for every objective (:mod:`difflab.train.objectives`).

It owns what every training method needs: the resumable data order, steps and time limits,
AdamW per parameter group with linear LR warm-up, gradient clipping and accumulation, bf16
autocast, optional torch.compile, the EMA of the sampled module, atomic checkpoints with exact
resume, periodic sample grids, CSV (and TensorBoard) logs and a progress bar.  What differs
between methods -- the modules, their parameter groups, batch -> losses, how to sample -- is the
objective's (DESIGN: "Training objectives").

Exact resume: the minibatch order is a pure function of (seed, step) (:func:`difflab.data.batch_stream`),
times / noise / label dropout come from the trainer's own generator, dropout from torch's
global RNG; both RNG states, the weights, the optimizer moments, the EMA, the objective's extra
state and the step are saved, so N steps straight and N/2 + resume + N/2 give the same weights
bit for bit.
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

from difflab import nn as dl_nn
from difflab.data import batch_stream
from difflab.train import objectives
from difflab.train.build import build_data, caption_bank, prompt_context
from difflab.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from difflab.train.config import Config, ConfigError, from_dict, to_dict
from difflab.train.models import Model, generate, hash_seed
from difflab.train.objectives.base import Batch, DataSpec, Dependencies, Objective
from difflab.train.runs import load_model

__all__ = [
    "EMA",
    "Trainer",
    "TrainingError",
    "caption_bank",
    "generate",
    "hash_seed",
    "load_model",
    "prompt_context",
]


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
    return {k: cfg[k] for k in ("data", "model", "schedule", "loss", "objective")}


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


def network_name(net: nn.Module) -> str | None:
    """The registry name of a network (:data:`difflab.nn.NETWORKS`), None if it is not registered."""
    for name, cls in dl_nn.NETWORKS.items():
        if type(net) is cls:
            return name
    return None


def _split(batch: Batch, k: int) -> list[Batch]:
    """``k`` micro-batches of a batch (gradient accumulation)."""
    if k == 1:
        return [batch]
    parts = {name: v.chunk(k) for name, v in batch.items()}
    return [{name: p[i] for name, p in parts.items()} for i in range(k)]


class Trainer:
    """Train the run described by a :class:`Config` into ``cfg.train.out`` with the objective
    ``cfg.objective.name`` (default ``denoising``).

    ``fit()`` resumes from the newest complete checkpoint in ``out/checkpoints`` when one
    exists (``resume=False`` starts over and ignores them).  ``deps`` gives dependencies as
    ready objects instead of run directories (e.g. an exact teacher in a test); ``data`` gives
    the data set as tensors ``(items, labels or None)`` instead of ``[data]`` (e.g. samples of
    an exact mixture; ``cfg.data`` then only names it).
    """

    def __init__(
        self,
        cfg: Config,
        progress: bool = True,
        log: Callable[[str], None] = print,
        device: str | torch.device = "cpu",
        deps: dict[str, Any] | None = None,
        data: tuple[Tensor, Tensor | None] | None = None,
    ) -> None:
        self.cfg, self.progress, self.log = cfg, progress, log
        tc = cfg.train
        self.device = torch.device(device)
        self._tuner = ThreadTuner() if tc.threads == 0 else None
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.out = Path(tc.out)
        data, labels = build_data(cfg.data) if data is None else data
        num_classes = int(labels.max()) + 1 if labels is not None else None
        self.spec = DataSpec(tuple(data.shape[1:]), num_classes, cfg.data.name)
        cls = objectives.get(cfg.objective.name)
        self.deps = Dependencies(dict(cfg.objective.depends), given=dict(deps or {}))
        torch.manual_seed(tc.seed)  # network initialisation
        self.objective: Objective = cls(cfg, self.spec, self.deps).to(self.device)
        self.dataset = self.objective.dataset({"x": data} if labels is None else {"x": data, "y": labels})
        self._memory_format = torch.contiguous_format
        if tc.channels_last:
            x = self.dataset["x"]
            if x.dim() != 4:
                raise ConfigError(
                    f"train.channels_last needs image data (N, C, H, W); data {cfg.data.name!r} has shape {tuple(x.shape)}"
                )
            self._memory_format = torch.channels_last
            self.net.to(memory_format=self._memory_format)
        self.model().check()  # validate the sampler now, not after an hour of training
        if tc.compile:
            self.objective.compile()
        self.groups = self.objective.groups()
        self.opts = {
            name: torch.optim.AdamW(
                g.params,
                lr=tc.lr if g.lr is None else g.lr,
                betas=g.betas or (tc.beta1, tc.beta2),
                weight_decay=tc.weight_decay if g.weight_decay is None else g.weight_decay,
            )
            for name, g in self.groups.items()
        }
        self.ema = EMA(self.net, tc.ema_decay, tc.ema_warmup)
        self.gen = torch.Generator().manual_seed(tc.seed + 1)
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self._tb = None

    # --- what is trained ----------------------------------------------------------------
    @property
    def net(self) -> nn.Module:
        """The objective's primary module (the one sampled and EMA-averaged)."""
        return self.objective.primary_module

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The first parameter group's optimizer (the only one of single-group objectives)."""
        return next(iter(self.opts.values()))

    @property
    def schedule(self) -> Any:
        return getattr(self.objective, "schedule", None)

    @property
    def data(self) -> Tensor:
        return self.dataset["x"]

    def model(self, use_ema: bool = True) -> Model:
        """The generating model of the current (EMA) weights."""
        return self.objective.model(self.ema.net if use_ema and hasattr(self, "ema") else self.net)

    # --- checkpoints --------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save(self) -> Path:
        tensors: dict[str, dict[str, Tensor]] = {"model": self.net.state_dict(), "ema": self.ema.net.state_dict()}
        optimizers = {}
        for i, (name, opt) in enumerate(self.opts.items()):
            stem = "optimizer" if i == 0 else f"optimizer_{name}"
            tensors[stem], groups = optimizer_to_tensors(opt)
            optimizers[name] = {"file": stem, "groups": groups}
        tensors["rng"] = {"torch": torch.get_rng_state(), "trainer": self.gen.get_state()}
        owned = self.objective.owned_state()
        if owned:
            tensors["modules"] = owned
        extra = self.objective.extra_state()
        if extra:
            tensors["extra"] = extra
        meta = {
            "config": to_dict(self.cfg),
            "objective": self.objective.name,
            "data_spec": self.spec.to_json(),
            "depends": self.deps.record(),
            "network": network_name(self.net),
            "net_config": getattr(self.net, "config", None),
            "optimizer_groups": next(iter(optimizers.values()))["groups"],
            "optimizers": optimizers,
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
                f"{path} was trained with a different data/model/schedule/loss/objective config; "
                f"use another train.out or start over with --fresh"
            )
        # checkpoints written before objectives had one optimizer, described by optimizer_groups
        optimizers = state.get("optimizers") or {
            next(iter(self.opts)): {"file": "optimizer", "groups": state["optimizer_groups"]}
        }
        try:
            self.net.load_state_dict(t["model"])
            self.ema.net.load_state_dict(t["ema"])
            for name, opt in self.opts.items():
                o = optimizers[name]
                opt.load_state_dict(optimizer_from_tensors(t[o["file"]], o["groups"]))
            self.objective.load_owned_state(t.get("modules", {}))
            self.objective.load_extra_state(t.get("extra", {}))
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this model: {e}") from None
        torch.set_rng_state(t["rng"]["torch"])
        self.gen.set_state(t["rng"]["trainer"])
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

    def _to_device(self, batch: Batch) -> Batch:
        out = {k: v.to(self.device) for k, v in batch.items()}
        if self._memory_format is not torch.contiguous_format:
            out["x"] = out["x"].contiguous(memory_format=self._memory_format)
        return out

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step of every parameter group on ``batch`` (split into ``grad_accum``
        micro-batches); returns the logged values (losses averaged over the micro-batches and the
        gradient norm before clipping; prefixed ``group/`` when there are several groups)."""
        tc = self.cfg.train
        self.objective.train()
        micro = [self._to_device(b) for b in _split(batch, tc.grad_accum)]
        logs: dict[str, float] = {}
        for name, group in self.groups.items():
            opt = self.opts[name]
            lr = _lr_at(self.step, tc.lr if group.lr is None else group.lr, tc.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for mb in micro:
                with self._autocast():
                    out = self.objective.loss(name, mb, self.gen, self.step)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()):
                    last = latest_checkpoint(self.ckpt_dir)
                    where = f" ({name})" if len(self.groups) > 1 else ""
                    raise TrainingError(
                        f"the loss{where} became {float(loss.detach())} at step {self.step}; stopping. "
                        + (f"The last good checkpoint is {last}." if last else "No checkpoint was written yet.")
                        + " Try a lower train.lr, train.grad_clip or disabling train.bf16."
                    )
                (loss / tc.grad_accum).backward()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / tc.grad_accum
            gn = float("nan")
            if tc.grad_clip and group.clip:
                gn = float(torch.nn.utils.clip_grad_norm_(group.params, tc.grad_clip))
            opt.step()
            prefix = f"{name}/" if len(self.groups) > 1 else ""
            logs.update({prefix + k: v for k, v in sums.items()})
            logs[prefix + "lr"], logs[prefix + "grad_norm"] = lr, gn
        self.ema.update(self.net)
        self.step += 1
        logs.update(self.objective.after_step(self.step))
        return logs

    def _log_row(self, row: dict[str, Any]) -> None:
        p = self.out / "log.csv"
        new = not p.exists() or p.stat().st_size == 0
        fields = list(row)
        if not new:  # the columns of the file's header (a resumed run keeps its columns)
            with open(p, newline="") as f:
                fields = next(csv.reader(f), fields)
        with open(p, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
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
        stream = batch_stream(self.dataset, tc.batch_size, seed=tc.seed, start_step=self.step)
        bar = tqdm(total=tc.steps, initial=self.step, disable=not self.progress, desc="train", unit="it")
        t0 = time.perf_counter()
        t_last, s_last = t0, self.step
        sums: dict[str, float] = {}
        n_logs = 0
        last_ckpt = None
        main_loss = "loss" if len(self.groups) == 1 else f"{next(iter(self.groups))}/loss"
        try:
            while self.step < tc.steps:
                batch = next(stream)
                if self._tuner:
                    self._tuner.before()
                logs = self.train_step(batch)
                if self._tuner:
                    self._tuner.after()
                self.history.append((self.step, logs[main_loss]))
                for k, v in logs.items():  # running means since the last log row
                    sums[k] = sums.get(k, 0.0) + v
                n_logs += 1
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.perf_counter()
                    ips = (self.step - s_last) / max(now - t_last, 1e-9)
                    row: dict[str, Any] = {"step": self.step}
                    for k, v in sums.items():  # lr and grad_norm: the last step's; losses: means
                        row[k] = logs[k] if k.endswith(("lr", "grad_norm")) else v / n_logs
                    row.update(it_per_s=ips, threads=torch.get_num_threads(), elapsed_s=now - t0)
                    self._log_row(row)
                    bar.set_postfix(loss=f"{row[main_loss]:.4f}", its=f"{ips:.1f}")
                    t_last, s_last, sums, n_logs = now, self.step, {}, 0
                if tc.ckpt_every and self.step % tc.ckpt_every == 0:
                    last_ckpt = self.save()
                if tc.sample_every and self.step % tc.sample_every == 0 and self.model().generates:
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
            from difflab import images

            s, lv = zip(*self.history)
            images.save_loss_curve(s, lv, self.out / "loss.png")
        return last_ckpt

    # --- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, n: int | None = None, seed: int | None = None, use_ema: bool = True, **kw: Any) -> Tensor:
        """n samples from the (EMA) model with the config's sampler (``kw``: the model's options)."""
        sc = self.cfg.sample
        return self.model(use_ema).generate(n or sc.n, sc.seed if seed is None else seed, **kw)

    def save_samples(self, path: Path) -> Path:
        model = self.model()
        return model.save_png(model.generate(self.cfg.sample.n, self.cfg.sample.seed), path)
