"""Refiner, SDXL crop conditioning and retrieval on Fashion-MNIST, each trained on this CPU and
measured against its ablation.

    flock /tmp/difflab-cpu.lock python benchmarks/control_family.py refiner --minutes 10
    flock /tmp/difflab-cpu.lock python benchmarks/control_family.py retrieval --minutes 6
    flock /tmp/difflab-cpu.lock python benchmarks/control_family.py micro --minutes 6

- ``refiner``: configs/fashion_refiner.toml (t <= 0.2 only) under the base run; FID of 1000
  unconditional samples of the base alone vs base + refiner (switch 0.2) at the same 20 steps (the
  same network evaluations per sample).
- ``micro``: configs/fashion_micro.toml with and without the conditioning (the same random
  rescales and crops); the fraction of 500 samples whose object touches the image border, asked
  for crop (0, 0) at the native size vs a large crop (7, 7) of a 42 px original; real test images
  for reference.
- ``retrieval``: configs/fashion_retrieval.toml and the same U-Net trained without retrieval
  (plain denoising, no cross-attention); class accuracy (shipped classifier) of 100 samples per
  class when the database is swapped for that class only, and FID of 1000 samples with the full
  database vs the plain network.

Runs go to /work/runs/control/<name>; results to benchmarks/results/control_family.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from difflab import data
from difflab.metrics import evaluate, feature_net
from difflab.retrieval import RetrievalDatabase
from difflab.train import Trainer, load_config, load_run

RESULTS = Path(__file__).parent / "results"
RUNS = Path("/work/runs/control")  # --runs changes it (e.g. for a quick smoke test)


def _train(config: str, out: Path, minutes: float, *more: str) -> Path:
    cfg = load_config(config, [f"train.out='{out}'", f"train.max_minutes={minutes}", *more])
    Trainer(cfg, progress=True).fit()
    return out


def _fid(x_gen, x_real) -> float:
    return evaluate(x_gen, x_real, "fid", feature_net="fashion_mnist")["fid"]


def border_touch(x: torch.Tensor, level: float = -0.5) -> float:
    """Fraction of images with a pixel brighter than ``level`` (in [-1, 1]) in the outer frame."""
    frame = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    return float((frame > level).flatten(1).any(1).double().mean())


def refiner(args, x_test) -> dict:
    out = _train("configs/fashion_refiner.toml", RUNS / "fashion_refiner", args.minutes)
    base = load_run(args.base)
    alone, n1 = base.generate(1000, 0, steps=20, return_nfe=True)
    both, n2 = base.generate(1000, 0, steps=20, refiner=str(out), switch=0.2, return_nfe=True)
    return {"fid_base": _fid(alone, x_test), "fid_base_refiner": _fid(both, x_test), "nfe": [n1, n2],
            "refiner_steps": load_run(out).state["step"], "switch": 0.2}  # fmt: skip


def micro(args, x_test) -> dict:
    res = {"real_border_touch": border_touch(x_test)}
    for cond in (True, False):
        name = "fashion_micro" if cond else "fashion_micro_nocond"
        more = [] if cond else ["objective.args={min_size=14, max_size=42, condition=false}",
                                "model.args.micro_conditioning=false"]  # fmt: skip
        out = _train("configs/fashion_micro.toml", RUNS / name, args.minutes, *more)
        m = load_run(out)
        if cond:
            res["crop_0_0"] = border_touch(m.generate(500, 0, steps=20, crop=(0, 0), orig_size=(28, 28)))
            res["crop_7_7_of_42"] = border_touch(m.generate(500, 0, steps=20, crop=(7, 7), orig_size=(42, 42)))
            res["steps"] = m.state["step"]
        else:
            res["no_conditioning"] = border_touch(m.generate(500, 0, steps=20))
            res["steps_nocond"] = m.state["step"]
    return res


def retrieval(args, x_test, y_test) -> dict:
    out = _train("configs/fashion_retrieval.toml", RUNS / "fashion_retrieval", args.minutes)
    plain = _train("configs/fashion_retrieval.toml", RUNS / "fashion_retrieval_plain", args.minutes,
                   "objective.name='denoising'", "objective.args={}", "model.args.context_dim=false")  # fmt: skip
    m, p = load_run(out), load_run(plain)
    db = RetrievalDatabase.load(out / "retrieval")
    clf = feature_net("fashion_mnist")
    acc = {}
    for c in range(10):
        s = m.generate(100, c, steps=20, database=db.subset(db.labels == c))
        acc[str(c)] = float((clf.logits(s).argmax(1) == c).double().mean())
    full = m.generate(1000, 0, steps=20)
    return {"class_accuracy_swapped_db": acc, "mean_class_accuracy": sum(acc.values()) / 10,
            "fid_retrieval": _fid(full, x_test), "fid_plain": _fid(p.generate(1000, 0, steps=20), x_test),
            "steps": m.state["step"], "steps_plain": p.state["step"]}  # fmt: skip


def main() -> None:
    global RUNS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["refiner", "micro", "retrieval"])
    p.add_argument("--base", default="/work/runs/control/fashion_ddpm_cond")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--runs", default="/work/runs/control", help="where the runs go")
    p.add_argument("--results", default=str(RESULTS / "control_family.json"))
    args = p.parse_args()
    RUNS = Path(args.runs)
    torch.set_num_threads(2)
    x, y = data.fashion_mnist(split="test")
    f = Path(args.results)
    results = json.loads(f.read_text()) if f.exists() else {}
    if args.what == "refiner":
        r = refiner(args, x)
    elif args.what == "micro":
        r = micro(args, x)
    else:
        r = retrieval(args, x, y)
    r["command"] = f"python benchmarks/control_family.py {args.what} --minutes {args.minutes}"
    results[args.what] = r
    print(json.dumps(r, indent=1))
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
