"""Training a noise-conditional classifier p_phi(y | x_t, t) for classifier guidance
(Dhariwal & Nichol 2021, Sec. 4.1): minimise the cross-entropy -log p_phi(y | x_t, t) on
noised data x_t = alpha(t) x_0 + sigma(t) eps, t drawn as the diffusion model's training times
(:func:`difflab.losses.sample_times`), eps ~ N(0, I).  The classifier is saved as a
checkpoint like the Trainer's (safetensors + state.json, written atomically).

``python -m difflab.train.classifier --out runs/fashion_noisy_classifier --minutes 6`` trains
the Fashion-MNIST classifier that ``benchmarks/guidance.py`` uses.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from difflab.data import batches
from difflab.losses import sample_times
from difflab.nn.noisy_classifier import NoisyClassifier
from difflab.schedules import Schedule
from difflab.train.build import build_schedule
from difflab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from difflab.train.trainer import _lr_at

__all__ = ["load_noisy_classifier", "noise", "noisy_accuracy", "train_noisy_classifier"]

KIND = "noisy_classifier"


def noise(schedule: Schedule, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I) (the forward marginal q(x_t | x_0))."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    return schedule.alpha(t).to(x0.dtype).reshape(shape) * x0 + schedule.sigma(t).to(x0.dtype).reshape(shape) * eps


def train_noisy_classifier(
    x: Tensor,
    y: Tensor,
    schedule_name: str = "ddpm_linear",
    schedule_args: dict[str, Any] | None = None,
    net_args: dict[str, Any] | None = None,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 100,
    weight_decay: float = 0.05,
    seed: int = 0,
    max_minutes: float | None = None,
    out: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[NoisyClassifier, dict[str, Any]]:
    """Train :class:`~difflab.nn.noisy_classifier.NoisyClassifier` on images ``x`` (N, C, H, W) in
    [-1, 1] with labels ``y`` (N,) noised by the named schedule; AdamW with linear warm-up
    (Dhariwal & Nichol train theirs with AdamW too).  Stops after ``steps`` or ``max_minutes``.

    ``init``: continue from the weights of an earlier checkpoint (fresh optimizer; its steps
    are added to the count).  Returns (network in eval mode, info) and, with ``out``, saves a
    checkpoint under ``out/checkpoints``.
    """
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    schedule_args = dict(schedule_args or {})
    schedule = build_schedule(schedule_name, schedule_args)
    args = {"in_channels": x.shape[1], "image_size": x.shape[-1], "num_classes": int(y.max()) + 1, **(net_args or {})}
    torch.manual_seed(seed)
    net = NoisyClassifier(**args)
    done = 0
    if init is not None:
        net, _, prev = load_noisy_classifier(init)
        net.requires_grad_(True)
        done = int(prev["steps"])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    stream = batches(x, y, batch_size, seed=seed, start_step=done)
    t0 = time.perf_counter()
    step, run_loss, run_acc, history = 0, 0.0, 0.0, []
    bar = tqdm(total=steps, disable=not progress, desc="classifier", unit="it")
    net.train()
    while step < steps:
        xb, yb = next(stream)
        t = sample_times("uniform", schedule, xb.shape[0], gen)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, lr, warmup)
        logits = net(noise(schedule, xb, t, gen), t.float())
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += float(loss.detach())
        run_acc += float((logits.argmax(1) == yb).float().mean())
        bar.update(1)
        if step % 50 == 0:
            history.append((step, run_loss / 50, run_acc / 50))
            bar.set_postfix(loss=f"{run_loss / 50:.3f}", acc=f"{run_acc / 50:.3f}")
            run_loss, run_acc = 0.0, 0.0
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            log(f"stopping at step {step}: max_minutes = {max_minutes} reached")
            break
    bar.close()
    net.eval()
    info = {
        "kind": KIND,
        "net_config": net.config,
        "schedule": {"name": schedule_name, "args": schedule_args},
        "steps": done + step,
        "batch_size": batch_size,
        "lr": lr,
        "seconds": time.perf_counter() - t0,
        "parameters": sum(p.numel() for p in net.parameters()),
        "history": history,
    }
    if out is not None:
        info["path"] = str(
            save_checkpoint(Path(out) / "checkpoints", done + step, {"model": net.state_dict()}, info, keep=1)
        )
    return net, info


def load_noisy_classifier(path: str | os.PathLike) -> tuple[NoisyClassifier, Schedule, dict[str, Any]]:
    """(classifier in eval mode, the schedule it was trained for, state.json) from a checkpoint
    or run directory written by :func:`train_noisy_classifier`."""
    state, t = load_checkpoint(path)
    if state.get("kind") != KIND or "model" not in t:
        raise CheckpointError(
            f"{state.get('path', path)} is not a noisy-classifier checkpoint (kind {state.get('kind')!r})"
        )
    net = NoisyClassifier(**state["net_config"])
    try:
        net.load_state_dict(t["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{state['path']} does not fit its network config: {e}") from None
    schedule = build_schedule(state["schedule"]["name"], state["schedule"]["args"])
    return net.eval().requires_grad_(False), schedule, state


@torch.no_grad()
def noisy_accuracy(
    net: NoisyClassifier, schedule: Schedule, x: Tensor, y: Tensor, times: tuple[float, ...], seed: int = 0
) -> dict[float, float]:
    """Accuracy of the classifier on ``x`` noised to each of ``times`` (one noise draw each)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in times:
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        correct = sum(
            int((net(noise(schedule, xb, tt[: xb.shape[0]], gen), float(t)).argmax(1) == yb).sum())
            for xb, yb in zip(x.split(500), y.split(500))
        )
        out[float(t)] = correct / x.shape[0]
    return out


def main(argv: list[str] | None = None) -> int:
    from difflab.data import fashion_mnist

    p = argparse.ArgumentParser(description="train a noise-conditional Fashion-MNIST classifier")
    p.add_argument("--out", default="runs/fashion_noisy_classifier")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", default=None, help="continue from this classifier checkpoint")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    x, y = fashion_mnist(split="train")
    net_args = {"channels": a.channels, "channel_mults": [1, 2, 4], "num_res_blocks": 1, "pool": "attention"}
    net, info = train_noisy_classifier(
        x,
        y,
        net_args=net_args,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        max_minutes=a.minutes,
        out=a.out,
        init=a.init,
    )
    xt, yt = fashion_mnist(split="test", limit=2000)
    acc = noisy_accuracy(net, build_schedule("ddpm_linear", {}), xt, yt, (0.05, 0.25, 0.5, 0.75, 1.0))
    print(f"{info['steps']} steps in {info['seconds']:.0f} s, {info['parameters']} parameters -> {info.get('path')}")
    print("test accuracy at t:", {k: round(v, 3) for k, v in acc.items()}, f"(chance {1 / net.num_classes:.2f})")
    return 0 if all(math.isfinite(h[1]) for h in info["history"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
