"""Are the samples of the faster U-Net layout worse?  diffusers' UNet2DModel and difflab's U-Net
from ``train_throughput.py`` trained side by side on Fashion-MNIST with the same everything.

Both models see the same batches, times and noise in the same order (one seeded generator each,
same seed), with the same loss (L_simple, eps-prediction, DDPM linear betas, T = 1000), AdamW,
warm-up, gradient clipping and EMA.  Afterwards, on the EMA weights:

- the held-out denoising loss: L_simple on test images at stratified times with fixed noise,
  the same (x0, t, noise) triples for both models, so the paired difference has a small error bar;
- FID / KID / precision / recall (shipped Fashion-MNIST classifier's features) of samples drawn
  from the same x_T with ``dpmpp_2m`` (20 steps), against the test set.

Each model trains in its own process (the two can run at once, one thread each):

    .venv/bin/python benchmarks/train_quality.py train --model diffusers --steps 600 &
    .venv/bin/python benchmarks/train_quality.py train --model difflab --steps 600 &
    wait; .venv/bin/python benchmarks/train_quality.py report

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
from difflab.train.trainer import EMA
from report import stamp, write_section
from train_throughput import make

OUT = Path("runs/bench_train_quality")
MODELS = ("diffusers", "difflab")


def schedule() -> schedules.Schedule:
    return schedules.get("ddpm_linear")


def denoiser(net: torch.nn.Module) -> Denoiser:
    return Denoiser(net, schedule(), prediction="eps")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data, _ = fashion_mnist(split="train", pad_to=32)
    model, opt = make(args.model, channels_last=True)
    for g in opt.param_groups:
        g["lr"] = args.lr
    ema = EMA(model, args.ema_decay)
    loss_fn = DiffusionLoss(schedule())
    den = denoiser(model)
    gen = torch.Generator().manual_seed(args.seed)
    it = batches(data, None, args.batch, seed=args.seed)
    log = []
    t0 = time.perf_counter()
    for step in tqdm(range(args.steps), desc=args.model):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        x, _ = next(it)
        if args.model == "difflab":
            x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(den, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        log.append(float(loss.detach()))
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ema.net.state_dict().items()}, OUT / f"{args.model}_ema.safetensors")
    meta = vars(args) | {"seconds": time.perf_counter() - t0, "params": count_parameters(model), "loss": log}
    (OUT / f"{args.model}.json").write_text(json.dumps(meta))


def load(kind: str) -> tuple[torch.nn.Module, dict]:
    model, _ = make(kind, channels_last=False)
    model.load_state_dict(load_file(OUT / f"{kind}_ema.safetensors"))
    return model.eval().requires_grad_(False), json.loads((OUT / f"{kind}.json").read_text())


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


def report(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    test, _ = fashion_mnist(split="test", pad_to=32)
    x0 = test[: args.heldout]
    real_feats = metrics.feature_net("fashion_mnist", adapt="center_crop").features(test)
    xT = torch.randn(args.samples, 1, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    ts = timesteps.get("log_snr_uniform", schedule(), 20)
    res, losses = {}, {}
    for kind in MODELS:
        model, meta = load(kind)
        den = denoiser(model)
        cache = OUT / f"{kind}_eval_{args.heldout}_{args.samples}_{args.seed}.pt"  # survives an interrupted report
        if cache.exists():
            losses[kind], samples = torch.load(cache).values()
        else:
            losses[kind] = heldout_losses(den, x0, args.seed)
            samples = torch.cat(
                [
                    difflab.sample("dpmpp_2m", den, schedule(), xT[s : s + 250], ts)
                    for s in tqdm(range(0, args.samples, 250), desc=f"sampling {kind}")
                ]
            ).clamp(-1, 1)
            torch.save({"losses": losses[kind], "samples": samples}, cache)
        save_grid(samples[:64], OUT / f"{kind}_samples.png")
        m = metrics.evaluate(
            samples,
            metrics="fid,kid,pr",
            feature_net="fashion_mnist",
            real_features=real_feats,
            adapt="center_crop",
            kid_subset_size=min(1000, args.samples),
        )
        tail = meta["loss"][-100:]
        res[kind] = dict(
            m,
            params=meta["params"],
            steps=meta["steps"],
            lr=meta["lr"],
            warmup=meta["warmup"],
            ema_decay=meta["ema_decay"],
            train_seconds=meta["seconds"],
            train_loss_last100=sum(tail) / len(tail),
            heldout=float(losses[kind].mean()),
        )
        print(kind, res[kind], flush=True)
    diff = losses["difflab"] - losses["diffusers"]
    se = float(diff.std() / math.sqrt(diff.numel()))
    n = x0.shape[0]
    bins = [(0, 100), (100, 300), (300, 1000)]
    a = res["diffusers"]
    cmd = "python benchmarks/train_quality.py " + " ".join(sys.argv[1:])
    md = [
        "## Training: sample quality of the faster layout (side by side with diffusers)",
        "",
        stamp(cmd.strip()),
        f"Trained with `python benchmarks/train_quality.py train --model {{diffusers,difflab}} --steps {a['steps']} "
        f"--batch {args.batch_used} --lr {a['lr']:g} --warmup {a['warmup']} --ema-decay {a['ema_decay']:g}` "
        "(the two at once, one thread each).",
        "",
        f"Both U-Nets of the throughput benchmark trained on Fashion-MNIST (padded to 32x32) for {a['steps']} steps "
        f"of batch {args.batch_used} with identical batches, times and noise (L_simple, eps, DDPM linear betas, "
        "AdamW, warm-up, clipping 1.0, EMA), one CPU thread each.  Measured on the EMA weights: held-out L_simple "
        f"on {n} test images (stratified t, fixed noise, the same triples for both), and FID/KID/precision/recall "
        f"(shipped Fashion-MNIST classifier) of {args.samples} samples from the same x_T with dpmpp_2m, "
        "20 steps, against the 10 000 test images.",
        "",
        "| model | parameters | train s/step (1 thread) | final train loss | held-out L_simple | FID | KID | precision | recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in MODELS:
        r = res[kind]
        md.append(
            f"| {kind} | {r['params'] / 1e6:.2f}M | {r['train_seconds'] / r['steps']:.2f} | "
            f"{r['train_loss_last100']:.4f} | {r['heldout']:.4f} | {r['fid']:.2f} | {r['kid']:.4f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} |"
        )
    per_bin = []
    for lo, hi in bins:
        sel = slice(lo * n // 1000, hi * n // 1000)
        per_bin.append(
            f"t in ({lo}, {hi}]: diffusers {float(losses['diffusers'][sel].mean()):.4f}, "
            f"difflab {float(losses['difflab'][sel].mean()):.4f}"
        )
    md += [
        "",
        f"Held-out loss difference difflab - diffusers: **{float(diff.mean()):+.5f} +- {se:.5f}** (paired standard "
        f"error; negative = difflab better).  By time step: {'; '.join(per_bin)}.",
        "",
        "Both models are early in training at this budget (most samples are not yet garments): read this as "
        "how fast the two learn, not as their converged quality."
        if a["steps"] < 5000
        else "",
        "",
        f"Sample grids: `{OUT}/diffusers_samples.png`, `{OUT}/difflab_samples.png` (not committed: runs/ is ignored).",
    ]
    text = "\n".join(md)
    print(text)
    (OUT / "report.json").write_text(json.dumps(res, indent=1))
    if not args.no_write:
        write_section("train_quality", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--model", choices=MODELS, required=True)
    tr.add_argument("--steps", type=int, default=600)
    tr.add_argument("--batch", type=int, default=64)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument("--warmup", type=int, default=100)
    tr.add_argument("--ema-decay", type=float, default=0.999)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1)
    rp = sub.add_parser("report")
    rp.add_argument("--heldout", type=int, default=2000)
    rp.add_argument("--samples", type=int, default=1000)
    rp.add_argument("--seed", type=int, default=1)
    rp.add_argument("--threads", type=int, default=2)
    rp.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.cmd == "train":
        train(args)
    else:
        args.batch_used = json.loads((OUT / "difflab.json").read_text())["batch"]
        report(args)


if __name__ == "__main__":
    main()
