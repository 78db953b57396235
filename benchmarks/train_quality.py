"""Are the samples of the faster U-Net layout worse?  diffusers' UNet2DModel and difflab's U-Net
from ``train_throughput.py`` trained side by side on Fashion-MNIST with the same everything.

Both models see the same batches, times and noise in the same order (one seeded generator each,
same seed), with the same loss (L_simple, eps-prediction, DDPM linear betas, T = 1000), AdamW,
warm-up, gradient clipping and EMA.  Afterwards, on the EMA weights:

- the held-out denoising loss: L_simple on test images at stratified times with fixed noise,
  the same (x0, t, noise) triples for both models, so the paired difference has a small error bar;
- FID / KID / precision / recall (shipped Fashion-MNIST classifier's features) of samples drawn
  from the same x_T with ``dpmpp_2m`` (20 steps), against the test set, and the fraction of
  speckled samples (pixel noise left in);
- the gain slope of the noise prediction at t = T (``gain_slope``): how much the net's eps_hat
  fails to scale with the amplitude of x_T, which is what decides whether a sample ends speckled.

``difflab_no_input_skip`` is difflab's U-Net without ``input_skip``: the ablation that found the
cause.  Each model trains in its own process (two can run at once on two cores, one thread each):

    .venv/bin/python benchmarks/train_quality.py train --model diffusers --steps 1280 &
    .venv/bin/python benchmarks/train_quality.py train --model difflab --steps 1280 &
    wait; .venv/bin/python benchmarks/train_quality.py train --model difflab_no_input_skip --steps 1280
    .venv/bin/python benchmarks/train_quality.py report

Training resumes from its last checkpoint, so ``--steps`` can be raised later and the run continued;
``report --step N`` evaluates the EMA weights saved after N steps (every ``--save-every``), and
``report --models difflab`` evaluates one model alone (cached) while the other still trains.

``report`` writes BENCHMARKS.md section ``train_quality`` and a sample grid per model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import difflab
from difflab import metrics, schedules, timesteps
from difflab.data import batches, fashion_mnist
from difflab.denoiser import Denoiser
from difflab.images import save_grid
from difflab.losses import DiffusionLoss, denoising_loss
from difflab.nn import count_parameters
from difflab.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from difflab.train.trainer import EMA
from report import stamp, write_section
from train_throughput import DIFFLAB_KINDS, make

OUT = Path("runs/bench_train_quality")
#: difflab_no_input_skip: the same U-Net without ``input_skip`` (the ablation)
MODELS = ("diffusers", "difflab", "difflab_no_input_skip")


def schedule() -> schedules.Schedule:
    return schedules.get("ddpm_linear")


def denoiser(net: torch.nn.Module) -> Denoiser:
    return Denoiser(net, schedule(), prediction="eps")


HPARAMS = ("batch", "lr", "warmup", "ema_decay", "seed")


def ckpt_dir(kind: str) -> Path:
    return OUT / f"ckpt_{kind}"


def ema_path(kind: str, step: int) -> Path:
    return OUT / f"{kind}_ema_step{step:06d}.safetensors"


def train(args: argparse.Namespace) -> None:
    """Train ``args.model`` up to ``args.steps``, resuming exactly from its last checkpoint.

    Every ``--save-every`` steps a full checkpoint (weights, AdamW moments, EMA, generator state,
    loss log) replaces the previous one and the EMA weights are kept as ``{model}_ema_step*.safetensors``
    for ``report --step``.  So a long run can be spread over several sessions.
    """
    torch.set_num_threads(args.threads)
    data, _ = fashion_mnist(split="train", pad_to=32)
    model, opt = make(args.model, channels_last=True)
    for g in opt.param_groups:
        g["lr"] = args.lr
    ema = EMA(model, args.ema_decay)
    loss_fn = DiffusionLoss(schedule())
    den = denoiser(model)
    gen = torch.Generator().manual_seed(args.seed)
    start, log, seconds, seconds_at = 0, [], 0.0, {}
    OUT.mkdir(parents=True, exist_ok=True)
    if latest_checkpoint(ckpt_dir(args.model)) is not None:
        state, t = load_checkpoint(ckpt_dir(args.model))
        bad = {k: (state["hparams"][k], getattr(args, k)) for k in HPARAMS if state["hparams"][k] != getattr(args, k)}
        if bad:
            sys.exit(f"{ckpt_dir(args.model)} was trained with other settings (saved, given): {bad}")
        model.load_state_dict(t["model"])
        ema.net.load_state_dict(t["ema"])
        opt.load_state_dict(optimizer_from_tensors(t["optimizer"], state["param_groups"]))
        gen.set_state(t["rng"]["generator"])
        start, log, ema.updates, seconds_at = state["step"], state["loss"], state["ema_updates"], state["seconds_at"]
        seconds = seconds_at[str(start)]
        print(f"resuming {args.model} at step {start}", flush=True)
    it = batches(data, None, args.batch, seed=args.seed, start_step=start)
    t0 = time.perf_counter() - seconds
    for step in tqdm(range(start, args.steps), desc=args.model, initial=start, total=args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        x, _ = next(it)
        if DIFFLAB_KINDS.get(args.model, ({}, False))[1]:  # the net is channels-last: so is its input
            x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(den, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        log.append(float(loss.detach()))
        done = step + 1
        if done % args.save_every == 0 or done == args.steps:
            seconds_at[str(done)] = time.perf_counter() - t0
            save_file({k: v.contiguous() for k, v in ema.net.state_dict().items()}, ema_path(args.model, done))
            opt_t, groups = optimizer_to_tensors(opt)
            tensors = {
                "model": model.state_dict(),
                "ema": ema.net.state_dict(),
                "optimizer": opt_t,
                "rng": {"generator": gen.get_state()},
            }
            meta = {
                "hparams": {k: getattr(args, k) for k in HPARAMS},
                "param_groups": groups,
                "loss": log,
                "seconds_at": seconds_at,
                "ema_updates": ema.updates,
                "params": count_parameters(model),
            }
            save_checkpoint(ckpt_dir(args.model), done, tensors, meta, keep=1)


def load(kind: str, step: int) -> tuple[torch.nn.Module, dict]:
    """The EMA network of ``kind`` after ``step`` steps and its training record up to there."""
    model, _ = make(kind, channels_last=False)
    model.load_state_dict(load_file(ema_path(kind, step)))
    state, _ = load_checkpoint(ckpt_dir(kind), parts=(), verify=False)  # only state.json is read
    meta = state["hparams"] | {
        "params": state["params"],
        "steps": step,
        "loss": state["loss"][:step],
        "seconds": state["seconds_at"][str(step)],
    }
    return model.eval().requires_grad_(False), meta


def saved_steps(kind: str) -> set[int]:
    return {int(p.stem.split("_step")[1]) for p in OUT.glob(f"{kind}_ema_step*.safetensors")}


@torch.no_grad()
def heldout_losses(den: Denoiser, x0: torch.Tensor, seed: int, batch: int = 250) -> torch.Tensor:
    """Per-example L_simple on ``x0`` at stratified times i = 1..T and fixed noise (same for every model)."""
    g = torch.Generator().manual_seed(seed)
    n, T = x0.shape[0], 1000
    i = (torch.arange(n) * T // n + torch.randint(0, max(1, T // n), (n,), generator=g)).clamp(max=T - 1)
    t = (i + 1).double() / T
    noise = torch.randn(x0.shape, generator=g)
    return torch.cat(
        [denoising_loss(den, x0[s : s + batch], t[s : s + batch], noise[s : s + batch]) for s in range(0, n, batch)]
    )


def speckled(x: torch.Tensor, threshold: float = 0.3) -> float:
    """Fraction of images whose mean |discrete Laplacian| exceeds ``threshold`` (pixel noise left in
    by the sampler: 3 of the 10 000 Fashion-MNIST test images, whose mean is 0.10)."""
    c = x[:, :, 1:-1, 1:-1]
    nb = (x[:, :, :-2, 1:-1] + x[:, :, 2:, 1:-1] + x[:, :, 1:-1, :-2] + x[:, :, 1:-1, 2:]) / 4
    return float(((c - nb).abs().flatten(1).mean(1) > threshold).float().mean())


@torch.no_grad()
def gain_slope(den: Denoiser, xT: torch.Tensor) -> float:
    """d gain / d std(x_T) of the noise prediction at t = T, gain = <eps_hat, x_T> / <x_T, x_T>.

    At t = T (alpha_T = 0.006) x_T is pure noise to within 4e-5 of its variance, so the exact
    eps_hat is x_T and the slope is 0; a net that normalises each sample's amplitude away (GroupNorm)
    has slope -1, and leaves the excess noise of an x_T with above-average norm in the sample."""
    t = torch.ones(xT.shape[0], dtype=torch.float64)
    sch = den.schedule
    a, s = (v.float()[:, None, None, None] for v in (sch.alpha(t), sch.sigma(t)))
    eps = (xT - a * den(xT, t)) / s
    gain = (eps * xT).flatten(1).sum(1) / xT.flatten(1).square().sum(1)
    sd = xT.flatten(1).std(1)
    return float(((gain - gain.mean()) * (sd - sd.mean())).sum() / (sd - sd.mean()).square().sum())


def cache_path(kind: str, step: int, args: argparse.Namespace) -> Path:
    return OUT / f"{kind}_eval_step{step:06d}_{args.heldout}_{args.samples}_{args.seed}.pt"


def evaluate(kind: str, step: int, args: argparse.Namespace, x0: torch.Tensor, real_feats: torch.Tensor):
    """Held-out losses, sample metrics and training record of ``kind``'s EMA weights after ``step`` steps.

    Losses and samples are cached, so an interrupted report resumes and one model can be evaluated
    while the other still trains."""
    model, meta = load(kind, step)
    den = denoiser(model)
    cache = cache_path(kind, step, args)
    if cache.exists():
        losses, samples = torch.load(cache).values()
    else:
        losses = heldout_losses(den, x0, args.seed)
        xT = torch.randn(args.samples, 1, 32, 32, generator=torch.Generator().manual_seed(args.seed))
        ts = timesteps.get("log_snr_uniform", schedule(), 20)
        samples = torch.cat(
            [
                difflab.sample("dpmpp_2m", den, schedule(), xT[s : s + 250], ts)
                for s in tqdm(range(0, args.samples, 250), desc=f"sampling {kind} at step {step}")
            ]
        ).clamp(-1, 1)
        torch.save({"losses": losses, "samples": samples}, cache)
    save_grid(samples[:64], OUT / f"{kind}_samples_step{step:06d}.png")
    m = metrics.evaluate(
        samples,
        metrics="fid,kid,pr",
        feature_net="fashion_mnist",
        real_features=real_feats,
        adapt="center_crop",
        kid_subset_size=min(1000, args.samples),
    )
    tail = meta["loss"][-100:]
    row = dict(
        m,
        params=meta["params"],
        steps=step,
        lr=meta["lr"],
        warmup=meta["warmup"],
        ema_decay=meta["ema_decay"],
        train_seconds=meta["seconds"],
        train_loss_last100=sum(tail) / len(tail),
        heldout=float(losses.mean()),
        speckled=speckled(samples),
        gain_slope=gain_slope(den, torch.randn(400, 1, 32, 32, generator=torch.Generator().manual_seed(args.seed))),
    )
    print(kind, step, row, flush=True)
    return row, losses


def report(args: argparse.Namespace) -> None:
    """Evaluate every model at ``args.step`` and write a table over every step evaluated so far."""
    torch.set_num_threads(args.threads)
    test, _ = fashion_mnist(split="test", pad_to=32)
    x0 = test[: args.heldout]
    real_feats = metrics.feature_net("fashion_mnist", adapt="center_crop").features(test)
    if set(args.models) != set(MODELS):
        for kind in args.models:
            evaluate(kind, args.step, args, x0, real_feats)
        return
    cached = {(s, k) for k in MODELS for s in saved_steps(k) if cache_path(k, s, args).exists()}
    todo = cached | {(args.step, k) for k in MODELS}
    steps = sorted({s for s, _ in todo})
    res = {s: {k: evaluate(k, s, args, x0, real_feats) for k in MODELS if (s, k) in todo} for s in steps}
    n = x0.shape[0]
    bins = [(0, 100), (100, 300), (300, 1000)]
    a = res[args.step]["diffusers"][0]
    cmd = "python benchmarks/train_quality.py " + " ".join(sys.argv[1:])
    md = [
        "## Training: sample quality of the faster layout (side by side with diffusers)",
        "",
        stamp(cmd.strip()),
        f"Trained with `python benchmarks/train_quality.py train --model MODEL --steps {args.step} "
        f"--batch {args.batch_used} --lr {a['lr']:g} --warmup {a['warmup']} --ema-decay {a['ema_decay']:g}` "
        "(EMA weights saved every 320 steps).",
        "",
        f"The U-Nets of the throughput benchmark trained on Fashion-MNIST (padded to 32x32) with batch "
        f"{args.batch_used}, identical batches, times and noise (L_simple, eps, DDPM linear betas, AdamW, warm-up, "
        "clipping 1.0, EMA).  `difflab_no_input_skip` is difflab's U-Net without `input_skip` (the ablation).  "
        "Measured on the EMA weights after each listed number of steps: "
        f"held-out L_simple on {n} test images (stratified t, fixed noise, the same triples for all), and "
        f"FID/KID/precision/recall (shipped Fashion-MNIST classifier) of {args.samples} samples from the same "
        "x_T with dpmpp_2m, 20 steps, against the 10 000 test images.  The gain slope is d gain / d std(x_T) of "
        "the noise prediction at t = T, gain = <eps_hat, x_T> / <x_T, x_T> (exact: 0; an output normalised "
        "per sample: -1), over the first 400 x_T.",
        "",
        "| steps | model | parameters | train s/step | train loss (last 100) | held-out L_simple "
        "| FID | KID | precision | recall | speckled samples | gain slope at t = T |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in steps:
        for kind, (r, _) in res[s].items():
            md.append(
                f"| {s} | {kind} | {r['params'] / 1e6:.2f}M | {r['train_seconds'] / r['steps']:.2f} | "
                f"{r['train_loss_last100']:.4f} | {r['heldout']:.4f} | {r['fid']:.2f} | {r['kid']:.4f} | "
                f"{r['precision']:.3f} | {r['recall']:.3f} | {r['speckled']:.1%} | {r['gain_slope']:+.2f} |"
            )
    md += [
        "",
        "Train s/step: one thread, two trainings at once on the two cores, except difflab's steps 320-1280 "
        "(two threads, alone); the throughput section above is the controlled timing.",
        "",
        "Speckled samples: mean absolute discrete Laplacian above 0.3 (pixel noise the sampler left in; "
        "3 of the 10 000 test images, whose mean is 0.10).",
        "",
        "Held-out loss, model - diffusers, paired over the same (x0, t, noise) (negative = model better):",
        "",
        "| steps | model | mean difference +- standard error | "
        + " | ".join(f"t in ({lo}, {hi}]: diffusers / model" for lo, hi in bins)
        + " |",
        "| ---: | --- | ---: | " + " | ".join("---:" for _ in bins) + " |",
    ]
    for s in steps:
        for kind in MODELS[1:]:
            if kind not in res[s] or "diffusers" not in res[s]:
                continue
            ld, lf = res[s][kind][1], res[s]["diffusers"][1]
            diff = ld - lf
            cells = []
            for lo, hi in bins:
                sel = slice(lo * n // 1000, hi * n // 1000)
                cells.append(f"{float(lf[sel].mean()):.4f} / {float(ld[sel].mean()):.4f}")
            md.append(
                f"| {s} | {kind} | {float(diff.mean()):+.5f} +- {float(diff.std() / math.sqrt(diff.numel())):.5f} | "
                + " | ".join(cells)
                + " |"
            )
    md += [
        "",
        f"Sample grids: `{OUT}/MODEL_samples_step*.png` (not committed: runs/ is ignored).",
    ]
    text = "\n".join(md)
    print(text)
    (OUT / "report.json").write_text(json.dumps({s: {k: v[0] for k, v in r.items()} for s, r in res.items()}, indent=1))
    if not args.no_write:
        write_section("train_quality", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--model", choices=MODELS, required=True)
    tr.add_argument("--steps", type=int, default=600)
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument("--warmup", type=int, default=100)
    tr.add_argument("--ema-decay", type=float, default=0.995)
    tr.add_argument("--save-every", type=int, default=320)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1)
    rp = sub.add_parser("report")
    rp.add_argument("--heldout", type=int, default=2000)
    rp.add_argument("--samples", type=int, default=1000)
    rp.add_argument("--seed", type=int, default=1)
    rp.add_argument("--threads", type=int, default=2)
    rp.add_argument("--step", type=int, default=None, help="evaluate after this many steps (default: latest common)")
    rp.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="evaluate only these (no report)")
    rp.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.cmd == "train":
        train(args)
        return
    common = set.intersection(*(saved_steps(k) for k in args.models))
    if args.step is None:
        if not common:
            sys.exit(f"no step saved for all of {args.models} in {OUT}; run `train` first")
        args.step = max(common)
    elif args.step not in common:
        sys.exit(f"--step {args.step}: not saved for all of {args.models}; saved: {sorted(common)}")
    args.batch_used = load_checkpoint(ckpt_dir(args.models[0]), parts=())[0]["hparams"]["batch"]
    report(args)


if __name__ == "__main__":
    main()
