"""Train the feature classifiers shipped in ``src/difflab/weights/`` (the feature networks of
difflab's FID / KID / precision-recall), and record their real-data floors.

    .venv/bin/python scripts/train_feature_classifiers.py                 # both, then floors
    .venv/bin/python scripts/train_feature_classifiers.py --dataset digits
    .venv/bin/python scripts/train_feature_classifiers.py --floors-only   # recompute the floors

Data (through :mod:`difflab.data`, images in [-1, 1]):

- ``digits``: scikit-learn's 1797 8x8 digits, the fixed split of ``difflab.data.digits``
  (seeded shuffle, seed 0, 20 % = 359 images held out as test); target >= 97 % test accuracy.
- ``fashion_mnist``: the official 60 000 / 10 000 split; target >= 90 % test accuracy.

Each run writes ``{name}_classifier.safetensors`` (float32 weights and BatchNorm buffers) and
``{name}_classifier.json`` (architecture, data split, test accuracy, training budget).  The
floors -- FID / KID / precision / recall of held-out test images against training images in
the classifier's feature space, the best a generator can hope for with that many samples --
are added to the JSON by the floor step.

Runs on a CPU in a few minutes (one thread by default so that it shares the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from difflab import data
from difflab.nn.classifier import ConvClassifier

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "difflab" / "weights"

# per data set: loader, training hyperparameters, target accuracy
RECIPES: dict[str, dict] = {
    "digits": {
        "load": lambda split: data.digits(split=split),
        "split": "difflab.data.digits(split=...): seeded shuffle (seed 0), test_fraction 0.2",
        "widths": (32, 64, 64),
        "epochs": 60,
        "batch": 64,
        "lr": 3e-3,
        "shift": 1,
        "flip": False,
        "target": 0.97,
    },
    "fashion_mnist": {
        "load": lambda split: data.fashion_mnist(split=split),
        "split": "official Fashion-MNIST train (60000) / t10k test (10000)",
        "widths": (32, 64, 64),
        "epochs": 6,
        "batch": 128,
        "lr": 3e-3,
        "shift": 2,
        "flip": True,
        "target": 0.90,
    },
}


def augment(x: Tensor, shift: int, flip: bool, g: torch.Generator) -> Tensor:
    """Random translation by up to ``shift`` pixels (padding with the background -1) and,
    optionally, random horizontal flips."""
    if flip:
        m = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    if shift:
        h, w = x.shape[-2:]
        xp = F.pad(x, (shift,) * 4, value=-1.0)
        dx, dy = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=g))
        x = xp[..., dy : dy + h, dx : dx + w]  # one shift per batch: cheap, enough variety
    return x


@torch.no_grad()
def accuracy(net: ConvClassifier, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    net.eval()
    correct = sum(int((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    return correct / len(y)


def train(name: str, out: Path, seed: int = 0, epochs: int | None = None) -> dict:
    r = RECIPES[name]
    epochs = epochs or r["epochs"]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = r["load"]("train")
    xte, yte = r["load"]("test")
    c, s = xtr.shape[1], xtr.shape[-1]
    net = ConvClassifier(in_channels=c, image_size=s, num_classes=int(ytr.max()) + 1, widths=r["widths"])
    opt = torch.optim.AdamW(net.parameters(), lr=r["lr"], weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(ytr) / r["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=epochs * steps_per_epoch)
    t0 = time.time()
    print(
        f"[{name}] {len(ytr)} train / {len(yte)} test images of {tuple(xtr.shape[1:])}, {net.num_parameters()} params"
    )
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(ytr), generator=g)
        tot = 0.0
        for i in range(0, len(ytr), r["batch"]):
            idx = perm[i : i + r["batch"]]
            xb = augment(xtr[idx], r["shift"], r["flip"], g)
            loss = F.cross_entropy(net(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        if ep == epochs - 1 or (ep + 1) % max(1, epochs // 6) == 0:
            acc = accuracy(net, xte, yte)
            print(
                f"[{name}] epoch {ep + 1}/{epochs} loss {tot / len(ytr):.4f} test acc {acc:.4f} ({time.time() - t0:.0f} s)"
            )
    acc = accuracy(net, xte, yte)
    seconds = time.time() - t0
    net.eval()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    weights = out / f"{name}_classifier.safetensors"
    save_file(state, str(weights), metadata={"arch": "ConvClassifier"})
    weights.chmod(0o644)  # safetensors writes 0600; the file ships with the package
    meta = {
        "arch": "ConvClassifier",
        "config": net.config,
        "input": "images (B, C, H, W) in [-1, 1]",
        "dataset": name,
        "split": r["split"],
        "train_images": len(ytr),
        "test_images": len(yte),
        "test_accuracy": round(acc, 4),
        "target_accuracy": r["target"],
        "training": {
            "script": "scripts/train_feature_classifiers.py",
            "epochs": epochs,
            "batch": r["batch"],
            "optimizer": f"AdamW lr {r['lr']} (one-cycle), weight decay 1e-4, label smoothing 0.05",
            "augmentation": f"shift <= {r['shift']} px" + (", horizontal flip" if r["flip"] else ""),
            "seed": seed,
            "seconds": round(seconds, 1),
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
    }
    path = out / f"{name}_classifier.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    if "floor" in old:
        meta["floor_stale"] = old["floor"]
    path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"[{name}] test accuracy {acc:.4f} (target {r['target']}) in {seconds:.0f} s -> {path}")
    if acc < r["target"]:
        print(f"[{name}] WARNING: below the target accuracy {r['target']}", file=sys.stderr)
    return meta


def floors(name: str, out: Path, n: int | None = None) -> dict:
    """FID, KID, precision and recall of the held-out test images against the training images
    in the shipped classifier's feature space: the real-data floor of each metric."""
    from difflab import metrics

    net = metrics.feature_net(name, weights_dir=out)
    xtr, _ = RECIPES[name]["load"]("train")
    xte, _ = RECIPES[name]["load"]("test")
    if n is not None:
        xtr, xte = xtr[:n], xte[:n]
    ftr, fte = net.features(xtr), net.features(xte)
    res = metrics.evaluate(xte, metrics=("fid", "kid"), feature_net=net, real_features=ftr)
    # k-NN manifolds of equal size: a random subset of the training set as large as the test set
    sub = torch.randperm(len(ftr), generator=torch.Generator().manual_seed(0))[: len(fte)]
    res["precision"], res["recall"] = metrics.precision_recall(ftr[sub], fte)
    floor = {
        "what": "held-out test images vs training images in this classifier's feature space "
        f"(FID/KID: all {len(xte)} test vs all {len(xtr)} train; precision/recall: vs {len(sub)} random train images)",
        "n_test": len(xte),
        "n_train": len(xtr),
        **{k: round(float(v), 5) for k, v in res.items() if k not in ("n_samples", "n_real")},
    }
    path = out / f"{name}_classifier.json"
    meta = json.loads(path.read_text())
    meta.pop("floor_stale", None)
    meta["floor"] = floor
    path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"[{name}] floor: {floor}")
    return floor


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=[*RECIPES, "all"], default="all")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--floors-only", action="store_true", help="only (re)compute the real-data floors")
    p.add_argument("--no-floors", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = list(RECIPES) if a.dataset == "all" else [a.dataset]
    for name in names:
        if not a.floors_only:
            train(name, a.out, a.seed, a.epochs)
        if not a.no_floors:
            floors(name, a.out)


if __name__ == "__main__":
    main()
