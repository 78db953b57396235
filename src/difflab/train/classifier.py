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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.nn.noisy_classifier import NoisyClassifier
from difflab.schedules import Schedule
from difflab.train.build import build_schedule
from difflab.train.checkpoint import CheckpointError, load_checkpoint
from difflab.train.config import from_dict
from difflab.train.objectives.noisy_classifier import ClassifierModel, noise

__all__ = ["load_noisy_classifier", "noise", "noisy_accuracy", "train_noisy_classifier"]

KIND = "noisy_classifier"


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
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[NoisyClassifier, dict[str, Any]]:
    """Train :class:`~difflab.nn.noisy_classifier.NoisyClassifier` on images ``x`` (N, C, H, W) in
    [-1, 1] with labels ``y`` (N,) noised by the named schedule, with the Trainer and the
    ``noisy_classifier`` objective (AdamW with linear warm-up and weight decay, gradient clipping
    1.0; Dhariwal & Nichol train theirs with AdamW too).  Stops after ``steps`` or
    ``max_minutes``; a run in ``out`` that has started already is resumed.

    Returns (network in eval mode, info); ``out`` (default: a temporary directory) holds the run.
    """
    import tempfile

    from difflab.train.trainer import Trainer

    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    tmp = tempfile.TemporaryDirectory() if out is None else None
    cfg = from_dict(
        {
            "model": {"network": "noisy_classifier", "args": dict(net_args or {})},
            "schedule": {"name": schedule_name, "args": dict(schedule_args or {})},
            "objective": {"name": "noisy_classifier"},
            "train": {
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "warmup": warmup,
                "weight_decay": weight_decay,
                "seed": seed,
                "max_minutes": max_minutes,
                "ema_decay": 0.0,  # the classifier is used as trained
                "log_every": 50,
                "sample_every": 0,
                "ckpt_every": 0,
                "keep": 1,
                "out": str(out) if out is not None else tmp.name,
            },
        },
        "train_noisy_classifier",
    )
    try:
        tr = Trainer(cfg, progress=progress, log=log, data=(x, y))
        path = tr.fit()
        net = tr.net.eval()
    finally:
        if tmp is not None:
            tmp.cleanup()
    info = {
        "kind": KIND,
        "net_config": net.config,
        "schedule": {"name": schedule_name, "args": dict(schedule_args or {})},
        "steps": tr.step,
        "batch_size": batch_size,
        "lr": lr,
        "seconds": tr.train_seconds,
        "parameters": sum(p.numel() for p in net.parameters()),
        "history": tr.history,
    }
    if out is not None:
        info["path"] = str(path)
    return net, info


def load_noisy_classifier(path: str | os.PathLike) -> tuple[NoisyClassifier, Schedule, dict[str, Any]]:
    """(classifier in eval mode, the schedule it was trained for, state.json) from a run or
    checkpoint directory of the ``noisy_classifier`` objective (or of this module's earlier,
    pre-objective format)."""
    from difflab.train.runs import load_run

    state, t = load_checkpoint(path, parts=())
    if state.get("kind") == KIND:  # written before the Trainer had objectives
        state, t = load_checkpoint(path)
        net = NoisyClassifier(**state["net_config"])
        try:
            net.load_state_dict(t["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{state['path']} does not fit its network config: {e}") from None
        schedule = build_schedule(state["schedule"]["name"], state["schedule"]["args"])
        return net.eval().requires_grad_(False), schedule, state
    if state.get("objective") != KIND:
        raise CheckpointError(
            f"{state.get('path', path)} is not a noisy-classifier checkpoint "
            f"(objective {state.get('objective', state.get('kind'))!r})"
        )
    model = load_run(path)
    if not isinstance(model, ClassifierModel):
        raise CheckpointError(f"{model.path} is a {model.kind} model, not a noisy classifier")
    state = {**model.state, "steps": model.state["step"]}
    return model.net.requires_grad_(False), model.schedule, state


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
    )
    xt, yt = fashion_mnist(split="test", limit=2000)
    acc = noisy_accuracy(net, build_schedule("ddpm_linear", {}), xt, yt, (0.05, 0.25, 0.5, 0.75, 1.0))
    print(f"{info['steps']} steps in {info['seconds']:.0f} s, {info['parameters']} parameters -> {info.get('path')}")
    print("test accuracy at t:", {k: round(v, 3) for k, v in acc.items()}, f"(chance {1 / net.num_classes:.2f})")
    return 0 if all(math.isfinite(h[1]) for h in info["history"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
