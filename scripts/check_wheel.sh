#!/usr/bin/env bash
# The wheel stands alone: build it with `python -m build` (sdist, then the wheel from the sdist),
# install it into a fresh virtual environment (no --system-site-packages, torch first, then the
# wheel) and, from a folder without the checkout, run `difflab demo` (shortened), `difflab sample`
# on the run the demo wrote, and the shipped feature networks (package data).
#
#   scripts/check_wheel.sh [BUILD_PYTHON]     # BUILD_PYTHON has `build` (the dev extra); default .venv/bin/python
#   TORCH=2.13.0 PYTHON=python3 KEEP=1 scripts/check_wheel.sh
#
# Called by .ci/run after the test suite (`make check-wheel`).  ~1-2 minutes on 2 cores, most of it
# installing torch into the fresh environment.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build_py=${1:-$repo/.venv/bin/python}
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-2.13.0}
work=$(mktemp -d "${TMPDIR:-/tmp}/difflab-wheel.XXXXXX")
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
t0=$SECONDS
say() { printf 'check_wheel [%3ds]: %s\n' $((SECONDS - t0)) "$*"; }

say "building sdist and wheel from $repo"
"$build_py" -m build --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/difflab-*.whl)
say "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"
unzip -l "$wheel" | grep -q "difflab/weights/digits_classifier.safetensors" || { echo "the wheel lacks the shipped weights"; exit 1; }

"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" "torch==$TORCH"
say "fresh venv with torch $TORCH"
"${pip[@]}" "$wheel" "torch==$TORCH"
say "installed the wheel"

cd "$work"  # no checkout here: the imports must come from the installed wheel
export PYTHONPATH="" DIFFLAB_NO_REEXEC=1 OMP_WAIT_POLICY=PASSIVE
py=$work/venv/bin/python
"$py" - <<'EOF'
import difflab, pathlib, sys
where = pathlib.Path(difflab.__file__).resolve()
assert "site-packages" in where.parts, f"difflab imported from {where}, not from the installed wheel"
print(f"difflab {difflab.__version__} from {where.parent}")
EOF
"$work/venv/bin/difflab" demo --out demo --minutes "${DEMO_MINUTES:-0.15}" --no-progress
say "difflab demo"
for f in samples.png samples.npz denoising.png loss.png; do [ -s "demo/$f" ] || { echo "demo/$f missing"; exit 1; }; done
"$work/venv/bin/difflab" sample demo --solver unipc --steps 10 --n 16 --seed 3 --out sample.png
[ -s sample.png ] || { echo "difflab sample wrote nothing"; exit 1; }
say "difflab sample"
"$py" - <<'EOF'
import torch
from sklearn.datasets import load_digits

from difflab.metrics import features

for name in features.SHIPPED:
    info = features.shipped_info(name)
    net = features.load_classifier(name)
    print(f"shipped feature network {name}: {sum(p.numel() for p in net.parameters())} parameters, "
          f"test accuracy {info.get('test_accuracy')}")
# the digits classifier works, not just loads: accuracy on all 1797 scikit-learn digits
d = load_digits()
x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8 - 1
acc = float((features.load_classifier("digits")(x).argmax(1) == torch.tensor(d.target)).float().mean())
print(f"digits classifier accuracy on the 1797 digits: {acc:.3f}")
assert acc > 0.95, acc
EOF
say "shipped feature networks: ok"
