"""Training throughput (images/s) of difflab's DiT against diffusers' DiTTransformer2DModel, side by side.

Both get the same job at the same size (DiT-S/2 by default: 12 blocks, width 384, 6 heads, patch 2,
on 4x32x32 inputs -- the paper's latent size for 256x256 images -- class-conditional with 10 classes,
batch 32): an eps-prediction MSE step with AdamW, float32 on the CPU.  The timing, FLOP counting and
profiling are ``train_throughput.py``'s; the models are timed in alternating rounds and the median step
time is reported (section ``dit_throughput`` of BENCHMARKS.md).

    .venv/bin/python benchmarks/dit_throughput.py [--size S] [--patch 2] [--input-size 32] [--batch 32]
        [--rounds 3] [--steps 3] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from difflab.nn import count_parameters
from difflab.nn.dit import DIT_SIZES, DiT
from report import stamp, write_section
from train_throughput import profile, step_flops, time_steps

NUM_CLASSES = 10
MODELS = ("diffusers", "difflab")


class _Conditioned(torch.nn.Module):
    """``model(x, t)`` for the shared timing code: the class labels ride along as a buffer."""

    def __init__(self, net: torch.nn.Module, kind: str, labels: torch.Tensor) -> None:
        super().__init__()
        self.net, self.kind = net, kind
        self.register_buffer("labels", labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "diffusers":
            return self.net(x, timestep=t, class_labels=self.labels).sample
        return self.net(x, t, y=self.labels)


def make(kind: str, size: str, patch: int, res: int, ch: int, labels: torch.Tensor):
    depth, hidden, heads = DIT_SIZES[size]
    torch.manual_seed(0)
    if kind == "diffusers":
        from diffusers import DiTTransformer2DModel

        net = DiTTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=hidden // heads,
            in_channels=ch,
            out_channels=ch,
            num_layers=depth,
            sample_size=res,
            patch_size=patch,
            num_embeds_ada_norm=NUM_CLASSES,
            norm_eps=1e-6,  # DiT's
        )
    elif kind == "difflab":
        net = DiT(input_size=res, patch_size=patch, in_channels=ch, size=size, num_classes=NUM_CLASSES)
    else:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODELS)}")
    model = _Conditioned(net, kind, labels)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="S", choices=list(DIT_SIZES))
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, C, R = args.batch, args.channels, args.input_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, R, R, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    labels = torch.randint(0, NUM_CLASSES, (B,), generator=g)
    models = {k: make(k, args.size, args.patch, R, C, labels) for k in MODELS}
    params = {k: count_parameters(m) for k, (m, _) in models.items()}
    flops = {k: step_flops(m, x, t) for k, (m, _) in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        for k in MODELS if r % 2 == 0 else MODELS[::-1]:
            m, o = models[k]
            times[k].append(time_steps(m, o, x, t, args.steps))
            print(f"round {r}: {k:9s} {B / times[k][-1]:7.1f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: B / v for k, v in med.items()}
    ratio = ips["difflab"] / ips["diffusers"]
    profiles = {}
    if not args.no_profile:
        for k in MODELS:
            m, o = models[k]
            profiles[k] = profile(m, o, x, t, rows=12)
            print(f"--- {k} profile ---\n{profiles[k]}")
    depth, hidden, heads = DIT_SIZES[args.size]
    tokens = (R // args.patch) ** 2
    cmd = "python benchmarks/dit_throughput.py " + " ".join(sys.argv[1:])
    md = [
        f"## Training throughput: difflab DiT vs diffusers DiTTransformer2DModel (DiT-{args.size}/{args.patch})",
        "",
        stamp(cmd.strip()),
        f"One AdamW training step (eps-MSE, float32, CPU) on a batch of {B} {C}x{R}x{R} inputs ({tokens} tokens), "
        f"class-conditional ({NUM_CLASSES} classes); both models DiT-{args.size}/{args.patch} (depth {depth}, width "
        f"{hidden}, {heads} heads, MLP ratio 4, GELU-tanh, LayerNorm eps 1e-6); timed in {args.rounds} alternating "
        f"rounds of {args.steps} steps after a warm-up step, median reported.",
        "",
        "| model | parameters | GFLOP / step | images/s | step time (s) | achieved GFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in MODELS:
        md.append(
            f"| {k} | {params[k] / 1e6:.2f}M | {flops[k] / 1e9:.0f} | {ips[k]:.2f} | {med[k]:.2f} | "
            f"{flops[k] / med[k] / 1e9:.0f} |"
        )
    md += [
        "",
        f"**difflab / diffusers throughput: {ratio:.2f}x** (target 1.3x: {'met' if ratio >= 1.3 else 'missed'}).",
        "",
    ]
    if profiles:
        for k, p in profiles.items():
            md += [
                f"<details><summary>profile: {k} (one step, top ops by self CPU time)</summary>",
                "",
                "```",
                p.strip(),
                "```",
                "</details>",
                "",
            ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("dit_throughput", text)


if __name__ == "__main__":
    main()
