"""SDEdit and inpainting on Fashion-MNIST with a trained class-conditional run: a strip of examples
and the faithfulness / realism trade-off against strength (Meng et al. 2022, Fig. 4: more strength,
more realistic, less faithful).

    flock /tmp/difflab-cpu.lock python benchmarks/editing.py --run /work/runs/control/fashion_ddpm_cond

Faithfulness: the RMS distance (in [-1, 1] pixel units) of each edit to its input, and the shipped
classifier's agreement between the input's label and the edit's.  Realism: FID (shipped
fashion_mnist features) of the edits against the test set.  The inputs are test images made
unrealistic by the paper's kind of guide -- a coarse stroke painting: 4x4 block means, upsampled.
Inpainting: the right half generated, replacement vs RePaint (10 resamplings) vs SMC (16 particles),
with the RMS mismatch across the mask's edge column as a measure of harmony.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from difflab import data, images
from difflab.editing import inpaint_smc
from difflab.metrics import evaluate, feature_net
from difflab.train import load_run

RESULTS = Path(__file__).parent / "results"


def strokes(x: torch.Tensor) -> torch.Tensor:
    """A stroke-painting guide: 4x4 block means, quantised to 4 grey levels, upsampled."""
    c = F.avg_pool2d(x, 4, ceil_mode=True)
    c = torch.round((c + 1) * 1.5) / 1.5 - 1
    return F.interpolate(c, size=x.shape[-2:], mode="nearest")


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="/work/runs/control/fashion_ddpm_cond")
    p.add_argument("--n", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(2)
    model = load_run(args.run)
    x, y = data.fashion_mnist(split="test")
    clf = feature_net("fashion_mnist")
    xs, ys = x[: args.n], y[: args.n]
    guide = strokes(xs)
    res: dict = {
        "command": f"python benchmarks/editing.py --run {args.run} --n {args.n}",
        "run": args.run,
        "sdedit": {},
    }
    strip = [xs[:8], guide[:8]]
    for s in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        out = model.generate(args.n, 0, image=guide, strength=s, steps=20) if s > 0 else guide.clone()
        rms = float((out - guide).pow(2).mean((1, 2, 3)).sqrt().mean())
        rms_true = float((out - xs).pow(2).mean((1, 2, 3)).sqrt().mean())
        agree = float((clf.logits(out).argmax(1) == ys).double().mean())
        fid = evaluate(out, x, "fid", feature_net="fashion_mnist")["fid"]
        res["sdedit"][str(s)] = {"rms_to_guide": rms, "rms_to_original": rms_true, "label_agreement": agree, "fid": fid}
        print(f"SDEdit strength {s}: RMS to guide {rms:.3f}, label agreement {agree:.3f}, FID {fid:.2f}", flush=True)
        if s > 0:
            strip.append(out[:8])
    images.save_strip(strip, RESULTS / "sdedit_strip.png", scale=3)

    # inpainting: generate the right half of 200 test images
    m = min(args.n, 200)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:] = 1
    res["inpaint"] = {}
    rows = [xs[:8], torch.where(mask.bool(), torch.zeros_like(xs[:8]), xs[:8])]
    for name, kw in (("replacement", {"resamplings": 1}), ("repaint_r10", {"resamplings": 10})):
        out, nfe = model.generate(m, 0, image=xs[:m], mask=mask, steps=20, return_nfe=True, **kw)
        res["inpaint"][name] = _inpaint_stats(out, xs[:m], ys[:m], x, clf, nfe)
        print(name, res["inpaint"][name], flush=True)
        rows.append(out[:8])
    den, sch = model.denoiser(), model.schedule
    ts = model.grid("dpmpp_2m", 20)
    smc = inpaint_smc(den, sch, xs[:m], mask, ts, particles=16, seed=0)[:, 0]
    res["inpaint"]["smc_16"] = _inpaint_stats(smc, xs[:m], ys[:m], x, clf, 20 * 16)
    print("smc_16", res["inpaint"]["smc_16"], flush=True)
    rows.append(smc[:8])
    images.save_strip(rows, RESULTS / "inpaint_strip.png", scale=3)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "editing.json").write_text(json.dumps(res, indent=1))
    _plot(res)


def _inpaint_stats(out, xs, ys, x_all, clf, nfe) -> dict:
    seam = float((out[..., 14] - out[..., 13]).pow(2).mean().sqrt())
    kept = float((out[..., :14] - xs[..., :14]).abs().max())
    return {
        "nfe_per_image": nfe,
        "seam_rms": seam,
        "seam_rms_real": float((xs[..., 14] - xs[..., 13]).pow(2).mean().sqrt()),
        "kept_max_abs_error": kept,
        "label_agreement": float((clf.logits(out).argmax(1) == ys).double().mean()),
        "fid": evaluate(out, x_all, "fid", feature_net="fashion_mnist")["fid"],
    }


def _plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sorted(res["sdedit"], key=float)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    rms = [res["sdedit"][k]["rms_to_guide"] for k in s]
    fid = [res["sdedit"][k]["fid"] for k in s]
    ax.plot(rms, fid, "o-")
    for k, a, b in zip(s, rms, fid):
        ax.annotate(k, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("RMS distance to the guide (less = more faithful)")
    ax.set_ylabel("FID (less = more realistic)")
    ax.set_title("SDEdit: faithfulness vs realism by strength")
    fig.tight_layout()
    fig.savefig(RESULTS / "sdedit_tradeoff.png", dpi=120)


if __name__ == "__main__":
    main()
