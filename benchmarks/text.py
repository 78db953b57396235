"""Text-conditional Fashion-MNIST: are prompt-conditioned samples of the prompted class?

Trains (or loads) ``configs/fashion_text.toml`` (a U-Net cross-attending to MiniLM tokens of
label captions), then for each class's prompt "a photo of a <noun>" draws samples with
classifier-free guidance w (Ho & Salimans 2022; the empty prompt is the null condition) and
reports the share the shipped Fashion-MNIST classifier assigns to the prompted class, plus a
grid with one row per prompt.  Usage: python benchmarks/text.py [--n 100] [--no-write]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from difflab import guidance
from difflab.images import save_grid
from difflab.metrics import evaluate
from difflab.text import FASHION_MNIST_NOUNS
from difflab.train import Trainer, generate, load_config, load_model, prompt_context
from difflab.train.checkpoint import latest_checkpoint
from report import RESULTS, stamp, write_section

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_text.toml"
SCALES = (0.0, 2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="samples per prompt and scale")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg = load_config(CONFIG)
    if latest_checkpoint(Path(cfg.train.out) / "checkpoints") is None:
        Trainer(cfg).fit()
    net, sch, cfg, state = load_model(cfg.train.out)
    prompts = [f"a photo of a {nouns[0]}" for nouns in FASHION_MNIST_NOUNS]
    ctx, mask = prompt_context(cfg, [*prompts, ""])
    null = {"context": ctx[-1:], "context_mask": mask[-1:]}
    rows, acc = [], {}
    t0 = time.perf_counter()
    for w in SCALES:
        correct = 0
        for k, _ in enumerate(prompts):
            context = (ctx[k : k + 1].expand(args.n, -1, -1), mask[k : k + 1].expand(args.n, -1))
            guide = None if w == 0 else (lambda den, w=w: guidance.cfg(den, w, null=null))
            x = generate(
                net, sch, cfg, args.n, seed=k, solver="dpmpp_2m", steps=args.steps, context=context, guide=guide
            )
            labels = torch.full((args.n,), k)
            correct += evaluate(x, metrics="accuracy", feature_net="fashion_mnist", labels=labels)["accuracy"] * args.n
            if w == SCALES[-1]:
                rows.append(x[:10])
        acc[w] = correct / (args.n * len(prompts))
    grid = RESULTS / "text_prompts_grid.png"
    save_grid(torch.cat(rows), grid, nrow=10)
    log = (Path(cfg.train.out) / "log.csv").read_text().strip().splitlines()
    minutes = float(log[-1].split(",")[-1]) / 60  # elapsed_s of the last logged step
    lines = [
        "## Text-conditional Fashion-MNIST (prompt -> class accuracy)",
        "",
        stamp("python benchmarks/text.py"),
        f"Model: `configs/fashion_text.toml` ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, "
        f"step {state['step']}, about {minutes:.0f} min of training on 2 shared CPU cores), cross-attention to "
        "MiniLM token embeddings of captions built from the labels. Prompts: 'a photo of a <noun>' for the ten "
        f"classes, {args.n} samples each, DPM-Solver++(2M) {args.steps} steps; accuracy = share of samples the "
        "shipped Fashion-MNIST classifier assigns to the prompted class (chance: 10%).",
        "",
        "| CFG weight w | accuracy |",
        "| --- | --- |",
        *(f"| {w:g} | {100 * a:.1f}% |" for w, a in acc.items()),
        "",
        f"One row per prompt (w = {SCALES[-1]:g}), top to bottom: {', '.join(p.removeprefix('a photo of a ') for p in prompts)}.",
        "",
        f"![prompt grid](benchmarks/results/{grid.name})",
        "",
        f"Sampling took {time.perf_counter() - t0:.0f} s.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("text", "\n".join(lines))


if __name__ == "__main__":
    main()
