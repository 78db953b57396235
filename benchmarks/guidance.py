"""Classifier-free guidance (Ho & Salimans 2022) against classifier guidance (Dhariwal & Nichol
2021) on Fashion-MNIST, with the model of ``benchmarks/quality.py`` (class-conditional DDPM
trained with label dropout: the null label gives the unconditional model).

- CFG: eps~ = (1 + w) eps(x, y) - w eps(x, null) for w in (0, 1, 3, 5) (w = 0: conditional).
- Classifier guidance: the unconditional model's score plus s grad log p_phi(y | x_t, t) for
  s in (0, 1, 3, 5) (s = 0: unconditional), p_phi the noise-conditional classifier of
  :mod:`difflab.train.classifier` (trained here if ``runs/fashion_noisy_classifier`` is empty).

For each: accuracy of the samples under the shipped Fashion-MNIST classifier (against the label
they were conditioned on), FID/KID/precision/recall in its feature space; with an ODE solver
(DPM-Solver++(2M)) and, at scale 3, with ancestral DDPM sampling.  Results are cached in
``benchmarks/results/guidance_points.json``; plots and class grids (one row per class) go to
``benchmarks/results/guidance_*.png``, the table into BENCHMARKS.md (section ``guidance``).

    .venv/bin/python benchmarks/guidance.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from difflab.data import fashion_mnist
from difflab.evaluation import evaluate_checkpoint, guided_generate, write_report
from difflab.images import save_grid
from difflab.train import latest_checkpoint, load_run
from difflab.train.classifier import load_noisy_classifier, noisy_accuracy
from difflab.train.classifier import main as train_classifier
from quality import N_REAL, RUN, ensure_model
from report import RESULTS, ROOT, stamp, write_section

CLASSIFIER = ROOT / "runs" / "fashion_noisy_classifier"
SCALES = (0.0, 1.0, 3.0, 5.0)
POINTS = RESULTS / "guidance_points.json"
CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def ensure_classifier() -> Path:
    if latest_checkpoint(CLASSIFIER / "checkpoints") is None:
        train_classifier(["--out", str(CLASSIFIER), "--minutes", "7"])
    return CLASSIFIER


def points(solver: str, steps: int, ancestral_steps: int) -> list[dict[str, Any]]:
    """(method, scale, solver, steps) of every measurement."""
    out = [{"method": m, "scale": s, "solver": solver, "steps": steps} for m in ("cfg", "classifier") for s in SCALES]
    out += [{"method": m, "scale": 3.0, "solver": "ddpm", "steps": ancestral_steps} for m in ("cfg", "classifier")]
    return out


def key(p: dict[str, Any]) -> str:
    return f"{p['method']}@{p['scale']:g}/{p['solver']}{p['steps']}"


def measure(pts: list[dict[str, Any]], n: int, n_ancestral: int) -> dict[str, Any]:
    data = json.loads(POINTS.read_text()) if POINTS.exists() else {}
    for p in pts:
        k = key(p)
        m = n if p["solver"] != "ddpm" else n_ancestral
        if k in data and data[k]["n"] == m:
            continue
        t0 = time.perf_counter()
        r = evaluate_checkpoint(
            RUN,
            "fid,kid,pr,accuracy",
            p["solver"],
            p["steps"],
            n=m,
            seed=0,
            guidance=p["scale"],
            classifier=CLASSIFIER if p["method"] == "classifier" else None,
            n_real=N_REAL,
        )
        data[k] = {**r, "method": p["method"], "scale": p["scale"]}
        write_report(data, POINTS)
        print(f"{k}: acc {r['accuracy']:.3f} FID {r['fid']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return data


def class_grids(solver: str, steps: int, scale: float, per_class: int = 10) -> list[Path]:
    """One row per class (classes 0..9 top to bottom), for CFG and classifier guidance."""
    model = load_run(RUN)
    paths = []
    for method in ("cfg", "classifier"):
        path = RESULTS / f"guidance_grid_{method}.png"
        if path.exists():
            paths.append(path)
            continue
        clf = CLASSIFIER if method == "classifier" else None
        x, y, _ = guided_generate(model, 10 * per_class, 1, solver, steps, guidance=scale, classifier=clf)
        order = torch.argsort(y, stable=True)
        paths.append(save_grid(x[order], path, nrow=per_class))
    return paths


def plot(data: dict[str, Any], solver: str, steps: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, color in (("cfg", "C0"), ("classifier", "C3")):
        rows = sorted(
            (r for r in data.values() if r["method"] == method and r["solver"] == solver and r["steps"] == steps),
            key=lambda r: r["scale"],
        )
        if not rows:
            continue
        label = "classifier-free (w)" if method == "cfg" else "classifier guidance (s)"
        for ax, (xk, yk) in zip(axes, (("fid", "accuracy"), ("recall", "precision"))):
            xs, ys = [r[xk] for r in rows], [r[yk] for r in rows]
            ax.plot(xs, ys, marker="o", color=color, label=label)
            for r, xv, yv in zip(rows, xs, ys):
                ax.annotate(f"{r['scale']:g}", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[0].set(xlabel="FID (lower: closer to the data distribution)", ylabel="accuracy under the shipped classifier")
    axes[1].set(xlabel="recall (diversity)", ylabel="precision (fidelity)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Fashion-MNIST guidance trade-off ({solver}, {steps} steps; labels: guidance scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(data: dict[str, Any], solver: str, steps: int, grids: list[Path], command: str) -> None:
    png = plot(data, solver, steps, RESULTS / "guidance_tradeoff.png")
    clf, schedule, state = load_noisy_classifier(CLASSIFIER)
    xt, yt = fashion_mnist(split="test", limit=1000)
    acc = noisy_accuracy(clf, schedule, xt, yt, (0.0, 0.25, 0.5, 0.75))
    n_params = sum(p.numel() for p in clf.parameters())
    lines = [stamp(command), ""]
    lines.append(
        "Model: the class-conditional DDPM of the quality section (`runs/fashion_ddpm_cond`, label dropout 0.1). "
        f"Noisy classifier (`src/difflab/nn/noisy_classifier.py`: the U-Net's encoder half + attention pooling, "
        f"{n_params / 1e3:.0f} k parameters) trained {state['steps']} steps of batch {state['batch_size']} "
        f"(`python -m difflab.train.classifier`); its accuracy on 1000 noised test images at t = 0 / 0.25 / 0.5 / "
        f"0.75: " + " / ".join(f"{v:.2f}" for v in acc.values()) + "."
    )
    lines.append("")
    first = next(iter(data.values()))
    lines.append(
        f"Each row: {first['n']} samples (classes in turn) unless stated, seed 0, 8-bit quantised; accuracy = share "
        "classified as the conditioning label by the shipped Fashion-MNIST classifier (91.2 % on real test images); "
        f"FID/KID/precision/recall in its feature space against {N_REAL} training images. CFG scale w: 0 = "
        "conditional model; classifier-guidance scale s on the unconditional (null-label) model: 0 = unconditional."
    )
    lines.append("")
    lines.append("| guidance | scale | sampler | n | accuracy | FID | KID | precision | recall | s / sample |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(data.values(), key=lambda r: (r["solver"] != solver, r["method"], r["scale"])):
        name = "classifier-free" if r["method"] == "cfg" else "classifier"
        lines.append(
            f"| {name} | {r['scale']:g} | {r['solver']} {r['steps']} steps ({r['nfe']} calls) | {r['n']} | "
            f"{r['accuracy']:.3f} | {r['fid']:.1f} | {r['kid']:.3f} | {r['precision']:.2f} | {r['recall']:.2f} | "
            f"{r['sample_seconds'] / r['n']:.2f} |"
        )
    lines.append("")
    lines.append(
        "CFG batches the conditional and unconditional evaluations into one network call of twice the batch; "
        "classifier guidance adds a classifier forward and backward pass per call. s / sample is wall time "
        "with three or four benchmark processes sharing the 2 cores: a rough guide only."
    )
    lines.append("")
    lines.append(f"![trade-off]({png.relative_to(ROOT)})")
    lines.append("")
    rows = ", ".join(f"{i} {c}" for i, c in enumerate(CLASSES))
    lines.append(f"Class grids (one row per class, top to bottom: {rows}), scale 3, {solver} {steps} steps:")
    lines.append("")
    lines += [f"![{p.stem}]({p.relative_to(ROOT)})" for p in grids]
    write_section("guidance", "## Guidance (Fashion-MNIST): classifier-free vs classifier\n\n" + "\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=250, help="samples per point (ODE solver)")
    p.add_argument("--n-ancestral", type=int, default=130, help="samples per ancestral-DDPM point")
    p.add_argument("--solver", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--ancestral-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-report", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    ensure_model()
    ensure_classifier()
    data = measure(points(a.solver, a.steps, a.ancestral_steps), a.n, a.n_ancestral)
    grids = class_grids(a.solver, a.steps, 3.0)
    if not a.no_report:
        report(data, a.solver, a.steps, grids, " ".join(["python benchmarks/guidance.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
