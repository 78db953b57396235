"""The ``difflab`` command line: ``train``, ``sample``, ``edit``, ``eval`` and ``demo``.

difflab train configs/digits.toml --set train.steps=2000
torchrun --nproc_per_node=2 -m difflab train configs/digits.toml    # data-parallel, see train/distributed.py
difflab sample runs/digits --solver dpmpp_2m --steps 20 --n 64 --seed 0 --out samples.png
difflab sample runs/fashion_controlnet_edges --control edges.png --label 7 --guidance 2 --out c.png
difflab sample runs/fashion_ddpm_cond --refiner runs/fashion_refiner --switch 0.2 --out r.png
difflab edit runs/fashion_ddpm_cond --image in.png --strength 0.6 --out out.png     # SDEdit
difflab edit runs/fashion_ddpm_cond --image in.png --mask mask.png --out out.png   # inpainting
difflab eval runs/fm --metrics fid,kid,pr,nll --solver dpmpp_2m --steps 20 --out eval.json
difflab demo --out demo
difflab serve runs/digits runs/fm --port 7860                          # a web page (pip install 'difflab[ui]')
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["DEMO_CONFIG", "UsageError", "main"]


class UsageError(ValueError):
    """A command-line option is invalid; ``main`` prints it and exits with status 2."""


#: The demo's training config (kept identical to configs/digits.toml by a test).
DEMO_CONFIG = """\
# Digits demo: sklearn's 1797 8x8 digits, a small U-Net, eps-prediction DDPM, at most 3.5 minutes of training on 2 CPU cores.
[data]
name = "digits"
split = "all"

[model]
network = "unet"
prediction = "eps"

[model.args]
channels = 32
channel_mults = [1, 2]
num_res_blocks = 1
attention_resolutions = [4]
head_channels = 32
dropout = 0.0

[schedule]
name = "ddpm_linear"

[loss]
kind = "denoising"
weighting = "uniform"

[train]
steps = 4000
batch_size = 64
lr = 2e-3
warmup = 100
grad_clip = 1.0
ema_decay = 0.995
threads = 0
max_minutes = 3.5
log_every = 25
sample_every = 0
ckpt_every = 250
keep = 2
out = "runs/digits"

[sample]
solver = "dpmpp_2m"
steps = 20
n = 64
seed = 0
clip_x0 = true
"""


def _ensure_passive_openmp(argv: list[str] | None) -> None:
    """Re-exec once with OMP_WAIT_POLICY=PASSIVE unless it is set: OpenMP threads that spin
    at barriers slow training by 10x or more when another process holds a core (measured:
    a U-Net step went from 0.35 s to 8.9 s on a busy 2-core machine).  OpenMP reads the
    variable when torch loads it, so it must be in the environment before torch is imported."""
    if argv is not None or "OMP_WAIT_POLICY" in os.environ or os.environ.get("DIFFLAB_NO_REEXEC"):
        return
    if "torch" in sys.modules and sys.argv and sys.argv[0]:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        os.execve(sys.executable, [sys.executable, "-m", "difflab.cli", *sys.argv[1:]], env)


#: ``difflab sample`` options that go to the run's ``Model.generate`` (name -> argparse keywords);
#: a kind of model that does not take one refuses it by name (``Model.check_options``).
SAMPLE_OPTIONS: dict[str, dict] = {
    "solver": {"help": "solver name (default: the run's [sample] solver)"},
    "steps": {"type": int, "help": "solver steps (default: the run's [sample] steps)"},
    "grid": {"help": "time grid name (default: the run's [sample] grid; see difflab.timesteps)"},
    "label": {"type": int, "help": "class label for class-conditional models"},
    "prompt": {"help": 'text prompt for text-conditional models, e.g. "a photo of a sneaker"'},
    "guidance": {
        "type": float,
        "help": "classifier-free guidance weight w (eps = (1+w) eps_c - w eps_u; 0: plain conditional)",
    },
    "refiner": {"help": "a refiner run that denoises below --switch (base + refiner, SDXL / eDiff-I)"},
    "switch": {"type": float, "help": "time t (t = 0 data) below which the refiner takes over (default 0.2)"},
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab", description="Train and sample diffusion models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a model from a TOML/YAML config")
    t.add_argument("config", help="config file (configs/*.toml)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=1000 (repeatable)",
    )
    t.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in train.out and start over")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="cpu",
        help="where to train (auto: CUDA when available); under torchrun rank r uses cuda:LOCAL_RANK with NCCL, "
        "or the CPU with gloo (default: cpu)",
    )

    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("ckpt", help="a run directory (its latest checkpoint) or a checkpoints/step_* directory")
    for name, kw in SAMPLE_OPTIONS.items():
        s.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **kw)
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--out", default="samples.png", help="output .png (grid) or .npz (array 'samples', N x C x H x W in [0, 1])"
    )
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--batch-size", type=int, default=256)
    _control_arguments(s)

    ed = sub.add_parser("edit", help="edit an image with a run: SDEdit (--strength) or inpainting (--mask)")
    ed.add_argument("ckpt", help="a run directory (its latest checkpoint) or a checkpoints/step_* directory")
    ed.add_argument("--image", required=True, help="the image to edit (PNG of the model's size)")
    ed.add_argument("--mask", default=None, help="inpainting mask PNG: white = generated, black = kept (as diffusers)")
    ed.add_argument(
        "--strength", type=float, default=None, help="noise the image to t0 = strength * t_max (default 1 with --mask)"
    )
    ed.add_argument("--resamplings", type=int, default=None, help="RePaint resamplings when inpainting (default 1)")
    for name, kw in SAMPLE_OPTIONS.items():
        ed.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **kw)
    ed.add_argument("--n", type=int, default=1, help="number of edits of the image (different seeds)")
    ed.add_argument("--seed", type=int, default=0)
    ed.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    ed.add_argument("--batch-size", type=int, default=256)
    ed.add_argument("--out", default="edit.png", help="output .png (the edits) or .npz (array 'samples' in [0, 1])")
    _control_arguments(ed)

    e = sub.add_parser("eval", help="measure a checkpoint: FID, KID, precision/recall, accuracy, test-set NLL")
    e.add_argument("ckpt", help="a run directory (its latest checkpoint) or a checkpoints/step_* directory")
    e.add_argument("--metrics", default="fid,kid,pr", help="comma list of fid, kid, pr, accuracy, nll")
    e.add_argument("--solver", default=None, help="solver name (default: the config's)")
    e.add_argument("--steps", type=int, default=None, help="solver steps (default: the config's)")
    e.add_argument("--n", type=int, default=1000, help="number of generated samples")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free (or, with --classifier, classifier) guidance scale",
    )
    e.add_argument("--classifier", default=None, help="noisy-classifier checkpoint for classifier guidance")
    e.add_argument("--label", type=int, default=None, help="generate one class only (class-conditional models)")
    e.add_argument("--unconditional", action="store_true", help="sample a class-conditional model with its null label")
    e.add_argument("--n-real", type=int, default=10000, help="real images for the reference statistics")
    e.add_argument("--nll-n", type=int, default=64, help="test images for the bits/dim estimates")
    e.add_argument("--batch-size", type=int, default=250)
    e.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    e.add_argument("--out", default="eval.json", help="the JSON report")

    v = sub.add_parser("serve", help="a web page (Gradio) to sample runs; pip install 'difflab[ui]'")
    v.add_argument("runs", nargs="+", metavar="RUN", help="run directories to offer (only these are served)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=7860)
    v.add_argument("--max-n", type=int, default=64, help="most images per request")
    v.add_argument("--max-steps", type=int, default=250, help="most solver steps per request")
    v.add_argument("--queue", type=int, default=8, help="most waiting requests; one more is answered 'Queue is full'")
    v.add_argument("--concurrency", type=int, default=1, help="requests sampled at the same time")
    v.add_argument("--max-upload-mb", type=float, default=8.0, help="largest uploaded image")
    v.add_argument("--no-ema", action="store_true", help="serve the raw weights instead of the EMA")

    d = sub.add_parser(
        "demo", help="train on the embedded digits and write samples, a denoising strip and a loss curve"
    )
    d.add_argument("--out", default="demo", help="output directory")
    d.add_argument("--minutes", type=float, default=None, help="training time limit (default 3.5)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--no-progress", action="store_true")
    return p


def _control_arguments(p: argparse.ArgumentParser) -> None:
    """The control options of ``sample`` and ``edit``."""
    p.add_argument("--control", default=None, help="control hint PNG for a ControlNet run (e.g. an edge map)")
    p.add_argument("--crop", default=None, help="crop micro-conditioning TOP,LEFT (0,0: an uncropped object)")
    p.add_argument(
        "--orig-size", default=None, help="original-size micro-conditioning H,W or S (the native size: sharp)"
    )
    p.add_argument("--database", default=None, help="retrieval database directory for a retrieval-conditioned run")


def _pair(text: str | None, what: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what} must be integers like 0,0, got {text!r}") from None
    if len(vals) == 1 and what == "--orig-size":
        vals = vals * 2
    if len(vals) != 2:
        raise UsageError(f"{what} needs two integers A,B, got {text!r}")
    return vals[0], vals[1]


def read_png(path: str, shape: tuple[int, ...], what: str, binary: bool = False):
    """A PNG as a (1, C, H, W) tensor in [0, 1] for a model of item ``shape`` (C, H, W): the size
    and channels must match (no silent resizing); ``binary``: only black and white pixels."""
    import numpy as np
    import torch
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path}: no such file")
    try:
        img = Image.open(p)
        img.load()
    except OSError as e:
        raise UsageError(f"{what} {path} is not an image: {e}") from None
    c, h, w = shape
    if img.size != (w, h):
        raise UsageError(f"{what} {path} is {img.size[0]}x{img.size[1]}, the model takes {w}x{h}")
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise UsageError(f"{what}: the model takes {c}-channel images, which PNG files do not hold")
    bands = [b for b in img.getbands() if b != "A"]
    if img.mode != "P" and len(bands) != c:
        raise UsageError(f"{what} {path} has {len(bands)} channel(s) (mode {img.mode}), the model takes {c}")
    arr = np.asarray(img.convert(mode), dtype=np.float32)
    if binary and not np.isin(arr, (0.0, 255.0)).all():
        bad = int((~np.isin(arr, (0.0, 255.0))).sum())
        raise UsageError(f"{what} {path} must be black and white only; {bad} pixels are grey (threshold it first)")
    x = torch.from_numpy(arr / 255.0)
    x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]
    return x.float()


def _save_samples(x, out: Path, model=None) -> None:
    """``.npz``: the array ``samples`` (images N x C x H x W in [0, 1]; other data as it is);
    ``.png``: the model's picture of them (a grid of images, a scatter plot of points)."""
    import numpy as np

    from difflab import images
    from difflab.train.models import Model

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        arr = images.to_unit(x).numpy() if x.dim() == 4 else x.float().cpu().numpy()
        tmp = out.with_name(f".{out.name}.tmp.npz")
        np.savez_compressed(tmp, samples=arr)
        os.replace(tmp, out)
    elif out.suffix == ".png":
        (model or Model()).save_png(x, out)
    else:
        raise UsageError(f"--out must end in .png or .npz, got {out}")


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from difflab.train import Trainer, distributed, load_config

    cfg = load_config(args.config, args.overrides)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device")
    try:
        tr = Trainer(cfg, progress=not args.no_progress, device=device)
        ckpt = tr.fit(resume=not args.fresh)
    finally:
        distributed.shutdown()
    if tr.world.main:
        ranks = f" in {tr.world.size} processes" if tr.world.active else ""
        print(f"trained {tr.step} steps{ranks} in {tr.train_seconds:.0f} s; checkpoint: {ckpt}")
    return 0


def sample_options(args: argparse.Namespace, model) -> dict:
    """The generate() options the user set on the command line (None = not given), checked
    against what the run's model takes."""
    opts = {k: getattr(args, k, None) for k in (*SAMPLE_OPTIONS, "strength", "resamplings")}
    opts = {k: v for k, v in opts.items() if v is not None}
    shape = getattr(model, "shape", None)
    if getattr(args, "control", None) is not None:
        opts["hint"] = read_png(args.control, _hint_shape(model), "--control")
    if getattr(args, "crop", None) is not None:
        opts["crop"] = _pair(args.crop, "--crop")
    if getattr(args, "orig_size", None) is not None:
        opts["orig_size"] = _pair(args.orig_size, "--orig-size")
    if getattr(args, "database", None) is not None:
        opts["database"] = args.database
    if getattr(args, "image", None) is not None:
        opts["image"] = read_png(args.image, shape, "--image") * 2 - 1
    if getattr(args, "mask", None) is not None:
        opts["mask"] = read_png(args.mask, (1, *shape[1:]), "--mask", binary=True)
    try:
        model.check_options(opts)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return opts


def cmd_sample(args: argparse.Namespace) -> int:
    from difflab.train import CheckpointError, ConfigError, load_run

    if args.n < 1:
        raise UsageError("--n must be positive")
    model = load_run(args.ckpt, use_ema=not args.no_ema)
    opts = sample_options(args, model)
    t0 = time.perf_counter()
    try:
        x = model.generate(args.n, args.seed, batch_size=args.batch_size, progress=True, **opts)
    except ValueError as e:
        if isinstance(e, UsageError | ConfigError | CheckpointError):
            raise
        raise UsageError(str(e)) from None
    _save_samples(x, Path(args.out), model)
    state = model.state
    print(
        f"{args.n} samples from {state['path']} (step {state['step']}) in {time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


def _hint_shape(model) -> tuple[int, ...]:
    controls = getattr(getattr(model, "net", None), "controls", None)
    if not controls:
        raise UsageError("--control needs a ControlNet run (objective 'controlnet')")
    cn = controls[0]
    return (cn.hint_channels, cn.hint_size, cn.hint_size)


def cmd_edit(args: argparse.Namespace) -> int:
    from difflab.train import CheckpointError, ConfigError, load_run

    if args.n < 1:
        raise UsageError("--n must be positive")
    if args.mask is None and args.strength is None:
        raise UsageError("difflab edit needs --strength (SDEdit) or --mask (inpainting)")
    if args.mask is None and args.resamplings is not None:
        raise UsageError("--resamplings is for inpainting (give --mask)")
    model = load_run(args.ckpt, use_ema=not args.no_ema)
    if getattr(model, "shape", None) is None or len(model.shape) != 3:
        raise UsageError(f"difflab edit needs an image model, {args.ckpt} is a {model.kind} model")
    opts = sample_options(args, model)
    t0 = time.perf_counter()
    try:
        x = model.generate(args.n, args.seed, batch_size=args.batch_size, progress=True, **opts)
    except ValueError as e:
        if isinstance(e, UsageError | ConfigError | CheckpointError):
            raise
        raise UsageError(str(e)) from None
    _save_samples(x, Path(args.out), model)
    what = "inpainted" if args.mask else f"SDEdit at strength {args.strength}"
    print(
        f"{args.n} edit(s) ({what}) of {args.image} with {model.state['path']} in {time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from difflab.evaluation import evaluate_checkpoint
    from difflab.train import CheckpointError, ConfigError

    if args.n < 2:
        raise UsageError(f"--n must be at least 2 for the metrics' statistics, got {args.n}")
    try:
        report = evaluate_checkpoint(
            args.ckpt,
            args.metrics,
            solver=args.solver,
            steps=args.steps,
            n=args.n,
            seed=args.seed,
            guidance=args.guidance,
            classifier=args.classifier,
            label=args.label,
            unconditional=args.unconditional,
            n_real=args.n_real,
            nll_n=args.nll_n,
            batch_size=args.batch_size,
            use_ema=not args.no_ema,
            out=args.out,
            progress=True,
        )
    except ValueError as e:
        if isinstance(e, ConfigError | CheckpointError):
            raise
        raise UsageError(str(e)) from None
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict | list)}, indent=1))
    print(f"report -> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from difflab import images
    from difflab.train import Trainer
    from difflab.train.config import _toml, apply_overrides, from_dict

    out = Path(args.out)
    d = _toml().loads(DEMO_CONFIG)
    d["train"]["out"] = str(out)
    if args.minutes is not None:
        d["train"]["max_minutes"] = args.minutes
    from difflab import solvers

    if d["sample"]["solver"] not in solvers.names():  # the fast solvers may be absent in a partial install
        d["sample"]["solver"] = "ddim"
    cfg = from_dict(apply_overrides(d, args.overrides), "demo config")
    tr = Trainer(cfg, progress=not args.no_progress)
    print(
        f"difflab demo: training a {sum(p.numel() for p in tr.net.parameters()) / 1e6:.2f}M-parameter U-Net on "
        f"{len(tr.data)} 8x8 digits for up to {cfg.train.steps} steps / {cfg.train.max_minutes} min ..."
    )
    tr.fit()
    print(
        f"  {tr.step} steps in {tr.train_seconds:.0f} s of training ({tr.step / max(tr.train_seconds, 1e-9):.1f} it/s this run)"
    )

    t0 = time.perf_counter()
    n = 256
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = tr.model()
    x = model.generate(n, seed=0, batch_size=n)
    _save_samples(x, out / "samples.npz")
    images.save_grid(x, out / "samples.png", nrow=16, scale=4)

    frames: list = []
    k = 8
    x_strip = model.generate(k, seed=1, callback=lambda info: frames.append(info.x.clone()))
    images.save_strip(images.strip_frames(frames, x_strip), out / "denoising.png", scale=4)
    print(
        f"  sampled {n} + {k} images with {cfg.sample.solver} ({cfg.sample.steps} steps) in {time.perf_counter() - t0:.1f} s"
    )
    for name in ("samples.png", "samples.npz", "denoising.png", "loss.png"):
        print(f"  wrote {out / name}")
    return 0


#: subcommand -> its function (each takes the parsed arguments, returns the exit status)
def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (another server listens there)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r}: {e}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            s.bind(addr)
        except OSError:
            return True
    return False


def cmd_serve(args: argparse.Namespace) -> int:
    from difflab.serve import Limits, ServeError, check_paths, load_runs

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    try:
        limits = Limits(
            max_n=args.max_n,
            max_steps=args.max_steps,
            queue=args.queue,
            concurrency=args.concurrency,
            max_upload_mb=args.max_upload_mb,
        )
    except ServeError as e:
        raise UsageError(str(e).replace("max_", "--max-").replace("_", "-")) from None
    try:
        check_paths(args.runs)
    except ServeError as e:
        raise UsageError(str(e)) from None
    if port_in_use(args.host, args.port):
        raise UsageError(f"port {args.port} on {args.host} is in use (another server?); choose another with --port")
    try:
        from difflab.serve.app import launch
    except ImportError as e:
        raise UsageError(f"the web UI needs gradio ({e}); install it with: pip install 'difflab[ui]'") from None
    t0 = time.perf_counter()
    try:
        runs = load_runs(args.runs, use_ema=not args.no_ema)
    except ServeError as e:
        raise UsageError(str(e)) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"difflab serve: listening on {args.host}: reachable from other machines", file=sys.stderr)
    print(
        f"difflab serve: {len(runs)} run(s) loaded in {time.perf_counter() - t0:.1f} s: {', '.join(runs)}", flush=True
    )
    launch(runs, limits, host=args.host, port=args.port)
    return 0


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "edit": cmd_edit,
    "eval": cmd_eval,
    "demo": cmd_demo,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``difflab`` console script."""
    _ensure_passive_openmp(argv)
    args = _parser().parse_args(argv)
    from difflab.train import CheckpointError, ConfigError, TrainingError

    try:
        return COMMANDS[args.cmd](args)
    except (UsageError, ConfigError, CheckpointError, TrainingError, FileNotFoundError) as e:
        print(f"difflab {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"difflab {args.cmd}: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
