"""Training throughput (images/s) of difflab's U-Net against diffusers' UNet2DModel, side by side.

Both networks get the same job: 32x32 one-channel images (Fashion-MNIST padded), batch 128,
an eps-prediction MSE step with AdamW, float32 on the CPU.  The diffusers model is a standard
DDPM-style configuration; difflab's U-Net is sized to at least its parameter count.  The two
are timed in alternating rounds (so that load from other processes hits both alike) and the
median step time per model is reported.  A torch.profiler breakdown of both is printed and
written with the result into BENCHMARKS.md (section ``train_throughput``).

    .venv/bin/python benchmarks/train_throughput.py [--rounds 3] [--steps 4] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from difflab.nn import UNet, count_parameters
from report import stamp, write_section

RES, BATCH, CH = 32, 128, 1


def diffusers_unet() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=RES,
        in_channels=CH,
        out_channels=CH,
        layers_per_block=2,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=32,
    )


#: difflab's configuration: the same widths, with the parameters moved from the 32x32 level (where
#: FLOPs are expensive) to the 8x8 / 16x16 levels (where they are cheap): one residual block at
#: 32x32 instead of two, wider 8x8 level, and channels-last convolutions.
DIFFLAB_ARGS = dict(
    in_channels=CH,
    channels=64,
    channel_mults=(1, 2, 3),
    num_res_blocks=(1, 2, 2),
    attention_resolutions=(16,),
    image_size=RES,
    head_channels=32,
)


#: difflab with diffusers' layout (same widths and blocks per level), default memory format: isolates
#: the implementation from the architecture choice.
SAME_LAYOUT_ARGS = dict(
    in_channels=CH,
    channels=64,
    channel_mults=(1, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(16,),
    image_size=RES,
    head_channels=32,
)
MODELS = ("diffusers", "difflab", "difflab_same_layout")


class _Wrap(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "diffusers":
            return self.net(x, t).sample
        return self.net(x, t)


def make(kind: str, channels_last: bool = True) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    if kind == "diffusers":
        net = diffusers_unet()
    else:
        net = UNet(**(DIFFLAB_ARGS if kind == "difflab" else SAME_LAYOUT_ARGS))
    if kind == "difflab" and channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = _Wrap(net, kind)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor) -> None:
    noise = torch.randn_like(x)
    loss = (model(x + noise, t) - noise).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_steps(model, opt, x, t, steps: int) -> float:
    train_step(model, opt, x, t)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, x, t)
    return (time.perf_counter() - t0) / steps


def profile(model, opt, x, t, rows: int = 8) -> str:
    from torch.profiler import profile as prof

    train_step(model, opt, x, t)
    with prof() as p:
        train_step(model, opt, x, t)
    return p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CH, RES, RES, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g).float()
    models = {k: make(k) for k in MODELS}
    params = {k: count_parameters(m) for k, (m, _) in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        for k in MODELS if r % 2 == 0 else MODELS[::-1]:
            m, o = models[k]
            xx = x.to(memory_format=torch.channels_last) if k == "difflab" else x
            times[k].append(time_steps(m, o, xx, t, args.steps))
            print(f"round {r}: {k:9s} {BATCH / times[k][-1]:7.1f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: BATCH / v for k, v in med.items()}
    ratio = ips["difflab"] / ips["diffusers"]
    profiles = {}
    if not args.no_profile:
        for k in ("diffusers", "difflab"):
            m, o = models[k]
            xx = x.to(memory_format=torch.channels_last) if k == "difflab" else x
            profiles[k] = profile(m, o, xx, t)
            print(f"--- {k} profile ---\n{profiles[k]}")
    cmd = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    md = [
        "## Training throughput: difflab U-Net vs diffusers UNet2DModel",
        "",
        stamp(cmd.strip()),
        f"One AdamW training step (eps-MSE, float32, CPU) on a batch of {BATCH} {CH}x{RES}x{RES} images; "
        f"models timed in {args.rounds} alternating rounds of {args.steps} steps (after a warm-up step), median reported.",
        "",
        "| model | parameters | images/s | step time (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k in MODELS:
        md.append(f"| {k} | {params[k] / 1e6:.2f}M | {ips[k]:.1f} | {med[k]:.2f} |")
    md += [
        "",
        f"**difflab / diffusers throughput: {ratio:.2f}x** at {params['difflab'] / params['diffusers']:.2f}x the parameters "
        f"(same layout: {ips['difflab_same_layout'] / ips['diffusers']:.2f}x at "
        f"{params['difflab_same_layout'] / params['diffusers']:.2f}x the parameters).",
        "",
        "diffusers: `UNet2DModel(block_out_channels=(64, 128, 128), layers_per_block=2, attention at 16x16)`.  ",
        f"difflab: `UNet({', '.join(f'{k}={v}' for k, v in DIFFLAB_ARGS.items())})`, channels-last: "
        "the parameters moved from the 32x32 level (one residual block instead of two) to a wider 8x8 level, "
        "where they cost a sixteenth of the FLOPs.  ",
        f"difflab_same_layout: `UNet({', '.join(f'{k}={v}' for k, v in SAME_LAYOUT_ARGS.items())})`, default memory format.",
        "",
        "Where the time goes (profiles below): convolutions (forward and backward) take about three quarters of "
        "a step in both libraries, GroupNorm/SiLU/attention the rest; so the fixes are fewer convolution FLOPs at "
        "the highest resolution and oneDNN's faster channels-last convolution kernels.  The sample quality of the "
        "re-balanced layout at equal training has not been measured here (see the report).",
        "",
        "No GPU was available to this task: bf16 throughput and model FLOP utilisation on a GPU are not measured.",
    ]
    if profiles:
        for k, p in profiles.items():
            md += [
                "",
                f"<details><summary>profile: {k} (one step, top ops by self CPU time)</summary>",
                "",
                "```",
                p.strip(),
                "```",
                "</details>",
            ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("train_throughput", text)


if __name__ == "__main__":
    main()
