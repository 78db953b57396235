"""ControlNet on Fashion-MNIST edges: adherence (edge F1) with and without control, FID, the training
curve (Zhang et al. 2023's "sudden convergence"), and the CPU time of a ControlNet training step
relative to a step of the base model, measured side by side.

    flock /tmp/difflab-cpu.lock python benchmarks/controlnet.py all --base /work/runs/fashion_ddpm_cond \
        --out /work/runs/control/fashion_controlnet_edges

Stages (each resumable; ``all`` runs them in order): ``train`` (configs/fashion_controlnet_edges.toml,
checkpoints every 100 steps kept), ``time`` (alternating rounds of base and ControlNet training
steps on the same batches), ``eval`` (every checkpoint: edge F1 of samples to the hints of 200 test
images; the last: FID of 1000 samples with and without control).  Results go to
benchmarks/results/controlnet.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from difflab import data, images
from difflab.data import hints
from difflab.metrics import edge_f1, evaluate
from difflab.train import Trainer, load_config, load_run
from difflab.train.checkpoint import list_checkpoints

RESULTS = Path(__file__).parent / "results"
QUIET = dict(progress=True, log=print)


def _cfg(args, *more):
    return load_config(
        "configs/fashion_controlnet_edges.toml",
        [f"objective.depends.base='{args.base}'", f"train.out='{args.out}'", "train.keep=100",
         f"train.max_minutes={args.minutes}", f"train.steps={args.steps}", *more],
    )  # fmt: skip


def train(args) -> None:
    Trainer(_cfg(args), **QUIET).fit()


def time_steps(args) -> dict:
    """Seconds per training step of the base model and of the ControlNet (same batch size, same
    data, alternating rounds so that machine load affects both alike)."""
    th = args.threads
    torch.set_num_threads(th)
    base_cfg = load_run(args.base).cfg
    tmp = Path(args.out).parent / "timing_tmp"
    lim = [f"data.limit={args.limit}"] if args.limit else []
    ctl = Trainer(_cfg(args, f"train.out='{tmp}/cn'", f"train.threads={th}", *lim), progress=False, log=lambda s: None)
    from dataclasses import replace

    bcfg = replace(base_cfg, train=replace(base_cfg.train, out=str(tmp / "base"), threads=th))
    if args.limit:
        bcfg = replace(bcfg, data=replace(bcfg.data, limit=args.limit))
    base = Trainer(bcfg, progress=False, log=lambda s: None)
    g = torch.Generator().manual_seed(0)
    n = ctl.dataset["x"].shape[0]
    rounds, per = args.rounds, args.per
    tb, tc = [], []
    for r in range(rounds + 1):
        idx = torch.randint(0, n, (per, 64), generator=g)
        for tr, out in ((base, tb), (ctl, tc)):
            t0 = time.process_time()
            for i in range(per):
                tr.train_step({k: v[idx[i]] for k, v in tr.dataset.items()})
            if r > 0:  # round 0 warms up
                out.append((time.process_time() - t0) / per)
    res = {
        "base_cpu_s_per_step": statistics.median(tb),
        "controlnet_cpu_s_per_step": statistics.median(tc),
        "ratio": statistics.median(tc) / statistics.median(tb),
        "rounds": rounds,
        "steps_per_round": per,
        "batch_size": 64,
        "threads": th,
        "clock": "process CPU time (time.process_time), alternating rounds after one warm-up round",
    }
    print(json.dumps(res, indent=1))
    return res


@torch.no_grad()
def _adherence(model, x_test, seed, steps=20, control_only=False):
    """Edge F1 between the test images' edges and the edges of unconditional samples made with
    them as hints (and, unless ``control_only``, without control: the base alone)."""
    h = hints.edges(x_test)
    n = len(x_test)
    out = {}
    for name, kw in (("control", {"hint": h}), ("no_control", {})):
        if name == "no_control" and control_only:
            continue
        s = model.generate(n, seed, steps=steps, label=None, **kw)
        out[name] = (float(edge_f1(h, hints.edges(s)).mean()), s)
    return out, h


def evaluate_runs(args, results: dict) -> dict:
    torch.set_num_threads(2)
    x, _y = data.fashion_mnist(split="test")
    xs = x[:200]
    curve = results.setdefault("curve", {})
    for step, path in list_checkpoints(Path(args.out) / "checkpoints"):
        if str(step) in curve:
            continue
        model = load_run(path)
        first = "f1_no_control" not in results  # the base alone: the same at every step
        ad, h = _adherence(model, xs, seed=0, control_only=not first)
        if first:
            results["f1_no_control"] = ad["no_control"][0]
        curve[str(step)] = {"f1_control": ad["control"][0]}
        print(
            f"step {step}: edge F1 {ad['control'][0]:.3f} with control, {results['f1_no_control']:.3f} without",
            flush=True,
        )
        _save(results)
    last = list_checkpoints(Path(args.out) / "checkpoints")[-1][1]
    model = load_run(last)
    if "fid" not in results:
        n = 1000
        hx = hints.edges(x[200 : 200 + n])
        fid = {}
        for name, kw in (("control", {"hint": hx}), ("no_control", {})):
            s = model.generate(n, 1, steps=20, **kw)
            fid[name] = evaluate(s, x, "fid", feature_net="fashion_mnist")["fid"]
            if name == "control":
                fid["f1_control_1000"] = float(edge_f1(hx, hints.edges(s)).mean())
        results["fid"] = fid
        print("FID", fid, flush=True)
        _save(results)
    ad, h = _adherence(model, xs[:10], seed=2)
    images.save_strip(
        [xs[:10], h * 2 - 1, ad["control"][1], ad["no_control"][1]], RESULTS / "controlnet_strip.png", scale=3
    )
    return results


def _save(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "controlnet.json").write_text(json.dumps(results, indent=1))


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(int(s) for s in results.get("curve", {}))
    if not steps:
        return
    c = results["curve"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, [c[str(s)]["f1_control"] for s in steps], "o-", label="with control")
    ax.axhline(results["f1_no_control"], ls="--", color="gray", label="without control (base alone)")
    ax.set_xlabel("ControlNet training step")
    ax.set_ylabel("edge F1 (hint vs sample)")
    ax.set_title("ControlNet on Fashion-MNIST edges")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "controlnet.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["train", "time", "eval", "all"])
    p.add_argument("--base", default="/work/runs/fashion_ddpm_cond")
    p.add_argument("--out", default="/work/runs/control/fashion_controlnet_edges")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=6, help="timing: alternating rounds (after one warm-up round)")
    p.add_argument("--per", type=int, default=8, help="timing: training steps per round and model")
    p.add_argument("--threads", type=int, default=2, help="timing: torch threads")
    p.add_argument("--limit", type=int, default=0, help="timing: use only this many training images (0: all)")
    args = p.parse_args()
    f = RESULTS / "controlnet.json"
    results = json.loads(f.read_text()) if f.exists() else {}
    results["command"] = "python benchmarks/controlnet.py all"
    results["base"] = args.base
    if args.stage in ("train", "all"):
        train(args)
    if args.stage in ("time", "all") and "timing" not in results:
        results["timing"] = time_steps(args)
        _save(results)
    if args.stage in ("eval", "all"):
        evaluate_runs(args, results)
    _save(results)
    plot(results)


if __name__ == "__main__":
    main()
