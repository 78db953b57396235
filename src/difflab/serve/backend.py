"""What the web UI does, without the UI: the runs it serves, the limits it enforces, and one request
turned into a call of the library's own :meth:`Model.generate <difflab.train.models.Model.generate>`.

Nothing here imports gradio (:mod:`difflab.serve.app` does), so the checks are usable and testable on
their own.  Every value of a request is checked here and refused with a message that names it:
the UI shows the message in the page, an API client gets it as the error.  No value of a request
reaches the file system: runs are chosen among those given when the server started, by name.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from difflab import images, solvers, timesteps

__all__ = [
    "Limits",
    "Result",
    "ServeError",
    "Served",
    "check_paths",
    "find_runs",
    "generate",
    "load_runs",
    "parse_seed",
]


class ServeError(ValueError):
    """A request or a served path is not acceptable; the message says why and what would be."""


@dataclass(frozen=True)
class Limits:
    """Caps of one server (``difflab serve --max-n ... --max-steps ... --queue ... --concurrency ...``).

    ``queue`` requests wait at most (Gradio's queue; one more is answered "Queue is full" at once),
    ``concurrency`` of them sample at the same time; ``max_upload_mb`` bounds uploaded images."""

    max_n: int = 64
    max_steps: int = 250
    queue: int = 8
    concurrency: int = 1
    max_upload_mb: float = 8.0
    strip_rows: int = 4
    strip_cols: int = 10

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "queue", "concurrency", "strip_rows", "strip_cols"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ServeError(f"{name} must be a positive integer, got {v!r}")
        if not self.max_upload_mb > 0:
            raise ServeError(f"max_upload_mb must be positive, got {self.max_upload_mb!r}")


# --- the runs -------------------------------------------------------------------------------
def _is_run(p: Path) -> bool:
    ck = p / "checkpoints"
    return (p / "state.json").is_file() or (ck.is_dir() and any((c / "state.json").is_file() for c in ck.iterdir()))


def find_runs(path: Path, depth: int = 2) -> list[Path]:
    """Run directories at or below ``path`` (``depth`` levels), for the message about a path that is
    not one."""
    found: list[Path] = []
    if not path.is_dir():
        return found
    if _is_run(path):
        return [path]
    if depth > 0:
        try:
            children = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return found
        for c in children:
            found += find_runs(c, depth - 1)
    return found


def _not_a_run(path: Path) -> ServeError:
    if not path.exists():
        return ServeError(f"{path}: no such run directory")
    runs = find_runs(path)
    if runs:
        listed = ", ".join(str(r) for r in runs[:12]) + (" ..." if len(runs) > 12 else "")
        return ServeError(f"{path} is not a run (no checkpoints/step_*/state.json), but holds runs: {listed}")
    try:
        held = sorted(c.name + ("/" if c.is_dir() else "") for c in path.iterdir()) if path.is_dir() else []
    except OSError:
        held = []
    what = ", ".join(held[:15]) + (" ..." if len(held) > 15 else "") if held else "nothing"
    return ServeError(
        f"{path} is not a difflab run (a directory with checkpoints/step_*/state.json, written by difflab train); "
        f"it holds {what}"
    )


@dataclass
class Served:
    """One run the server offers: its name in the form, the generating model, where it came from."""

    name: str
    model: Any
    path: Path | None = None
    class_names: tuple[str, ...] = ()

    @property
    def options(self) -> dict[str, str]:
        """The model's ``generate`` options that apply to this run: no label without classes, no
        prompt without text conditioning, no guidance without either."""
        opts = dict(getattr(self.model, "options", {}))
        if "label" in opts and not self.num_classes:
            del opts["label"]
        if "prompt" in opts and not getattr(self.model, "takes_text", True):
            del opts["prompt"]
        if "guidance" in opts and "label" not in opts and "prompt" not in opts:
            del opts["guidance"]
        return opts

    @property
    def num_classes(self) -> int | None:
        k = getattr(self.model, "num_classes", None)
        return int(k) if k else None

    def label_choices(self) -> list[str]:
        """``none`` and one entry per class, ``"3: Dress"`` (the leading integer is what counts)."""
        k = self.num_classes or 0
        names = self.class_names if len(self.class_names) == k else tuple(str(i) for i in range(k))
        return ["none", *(f"{i}: {names[i]}" if names[i] != str(i) else str(i) for i in range(k))]

    def defaults(self) -> dict[str, Any]:
        """The run's [sample] solver and steps (what an empty field means)."""
        cfg = getattr(self.model, "cfg", None)
        sc = getattr(cfg, "sample", None)
        return {"solver": getattr(sc, "solver", None), "steps": getattr(sc, "steps", None)}

    def describe(self) -> dict[str, Any]:
        """What the page shows of the run: kind, checkpoint, parameters, its config."""
        from difflab.train.config import to_dict

        m = self.model
        cfg = getattr(m, "cfg", None)
        state = getattr(m, "state", {}) or {}
        net = getattr(m, "net", None)
        out: dict[str, Any] = {"name": self.name, "kind": getattr(m, "kind", type(m).__name__)}
        if state:
            out["checkpoint"] = {"path": str(state.get("path", "")), "step": state.get("step")}
        if isinstance(net, torch.nn.Module):
            out["parameters"] = sum(p.numel() for p in net.parameters())
        out["options"] = self.options
        if cfg is not None:
            try:
                out["config"] = to_dict(cfg)
            except (TypeError, AttributeError):
                out["config"] = str(cfg)
        return out


def _class_names(model: Any) -> tuple[str, ...]:
    from difflab.data import FASHION_MNIST_CLASSES

    name = getattr(getattr(getattr(model, "cfg", None), "data", None), "name", "")
    return tuple(FASHION_MNIST_CLASSES) if name == "fashion_mnist" else ()


def check_paths(paths: Sequence[str | Path | tuple[str, Any]]) -> None:
    """Refuse, before anything is loaded, a path that is not a run (the message lists what is there)."""
    if not paths:
        raise ServeError("no runs to serve: give at least one run directory")
    for item in paths:
        if not isinstance(item, tuple) and not _is_run(Path(item)):
            raise _not_a_run(Path(item))


def load_runs(paths: Sequence[str | Path | tuple[str, Any]], use_ema: bool = True) -> dict[str, Served]:
    """The runs a server offers, by name: run directories (each loaded with
    :func:`difflab.train.load_run`) or ``(name, model)`` pairs of ready models.  A path that is not a
    run is a :class:`ServeError` that lists the runs (or the files) it found there."""
    from difflab.train import CheckpointError, ConfigError, load_run

    check_paths(paths)
    out: dict[str, Served] = {}
    for item in paths:
        if isinstance(item, tuple):
            name, model = item
            served = Served(str(name), model, None, _class_names(model))
        else:
            p = Path(item)
            try:
                model = load_run(p, use_ema=use_ema)
            except (CheckpointError, ConfigError, FileNotFoundError) as e:
                raise ServeError(f"{p}: {e}") from None
            served = Served(str(item), model, p, _class_names(model))
        if served.name in out:
            raise ServeError(f"run {served.name!r} is given twice")
        out[served.name] = served
    return out


# --- one request ------------------------------------------------------------------------------
def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _integer(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise ServeError(f"{what} must be an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not v.is_integer():
            raise ServeError(f"{what} must be an integer, got {v!r}")
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*[+-]?\d+\s*", v):
        return int(v)
    raise ServeError(f"{what} must be an integer, got {v!r}")


def _bounded(v: Any, what: str, lo: int, hi: int, limit_name: str = "") -> int:
    i = _integer(v, what)
    if not lo <= i <= hi:
        cap = f" (the server's {limit_name})" if limit_name else ""
        raise ServeError(f"{what} must be between {lo} and {hi}{cap}, got {i}")
    return i


def parse_seed(v: Any) -> int:
    """A seed: an integer in [0, 2^63)."""
    if _blank(v):
        return 0
    return _bounded(v, "seed", 0, 2**63 - 1)


def _number(v: Any, what: str) -> float:
    try:
        x = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        raise ServeError(f"{what} must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ServeError(f"{what} must be a finite number, got {v!r}")
    return x


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_literal(v: Any, what: str) -> Any:
    """A generic option typed in a text field: a number, a boolean, a tuple of numbers, or a bare word
    (``linear``).  Nothing else -- in particular no path: no value of a request reaches the file system."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    if _IDENT.fullmatch(s):
        return {"True": True, "False": False, "true": True, "false": False}.get(s, s)
    try:
        x = ast.literal_eval(s)
    except (ValueError, SyntaxError):
        raise ServeError(f"{what}: {v!r} is not a number, a tuple of numbers, true/false or a word") from None
    flat = x if isinstance(x, tuple | list) else (x,)
    if not all(isinstance(e, int | float | bool) for e in flat):
        raise ServeError(f"{what}: {v!r} is not a number, a tuple of numbers, true/false or a word")
    return tuple(x) if isinstance(x, list) else x


def image_tensor(arr: Any, shape: Sequence[int], what: str, binary: bool = False) -> Tensor:
    """An uploaded image (H, W[, C] uint8 array or PIL image) as a (1, C, H, W) tensor in [-1, 1] of
    the model's item ``shape`` (resized; a mask: one channel in {0, 1})."""
    c, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(np.asarray(arr).astype(np.uint8))
    img = img.convert("L" if binary or c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if binary:
        return (x > 0.5).float()[None]
    if x.shape[0] != c:
        raise ServeError(f"{what}: the model takes {c} channels, the image has {x.shape[0]}")
    return (x * 2 - 1)[None]


IMAGE_OPTIONS = ("image", "hint", "control")
MASK_OPTIONS = ("mask",)
RUN_OPTIONS = ("refiner",)  # options naming another model: chosen among the served runs, never a path
FLOAT_OPTIONS = ("guidance", "strength", "switch", "temperature")
INT_OPTIONS = ("resamplings", "num_iter")


def _option_value(
    served: Served, runs: dict[str, Served], name: str, raw: Any, shape: Sequence[int], limits: Limits
) -> Any:
    if _blank(raw) or (isinstance(raw, str) and raw in ("none", "default")):
        return None
    if name == "solver":
        if raw not in solvers.names():
            raise ServeError(f"solver {raw!r} is not one of {', '.join(solvers.names())}")
        return raw
    if name == "grid":
        if raw not in timesteps.names():
            raise ServeError(f"grid {raw!r} is not one of {', '.join(timesteps.names())}")
        return raw
    if name == "steps":
        return _bounded(raw, "steps", 1, limits.max_steps, "--max-steps")
    if name == "label":
        k = served.num_classes
        if not k:
            raise ServeError(f"run {served.name!r} is not class-conditional; it takes no label")
        head = raw.split(":", 1)[0] if isinstance(raw, str) else raw
        return _bounded(head, "label", 0, k - 1)
    if name == "prompt":
        if not isinstance(raw, str):
            raise ServeError(f"prompt must be text, got {raw!r}")
        if len(raw) > 500:
            raise ServeError(f"prompt is {len(raw)} characters long; at most 500")
        return raw
    if name in FLOAT_OPTIONS:
        x = _number(raw, name)
        if name == "guidance" and x == 0:
            return None
        return x
    if name in INT_OPTIONS:
        return _bounded(raw, name, 1, 1000)
    if name in IMAGE_OPTIONS or name in MASK_OPTIONS:
        return image_tensor(raw, shape, name, binary=name in MASK_OPTIONS)
    if name in RUN_OPTIONS:
        if raw not in runs:
            raise ServeError(f"{name} {raw!r} is not one of the served runs: {', '.join(runs)}")
        return runs[raw].model
    return parse_literal(raw, name)


@dataclass
class Result:
    """What one Generate returns: the grid, the denoising strip, NFE and time."""

    grid: Image.Image
    strip: Image.Image | None
    nfe: int | None
    seconds: float
    n: int
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        nfe = f"NFE {self.nfe}" if self.nfe is not None else "NFE n/a"
        per = f", {self.seconds / self.n * 1000:.0f} ms per image" if self.n else ""
        shown = ", ".join(f"{k} {v}" for k, v in self.settings.items() if v is not None)
        return f"{self.n} images in {self.seconds:.2f} s ({nfe}{per}); {shown}"


def generate(
    runs: dict[str, Served],
    limits: Limits,
    run: str,
    n: Any,
    seed: Any,
    options: dict[str, Any],
    progress: Callable[[float], None] | None = None,
) -> Result:
    """Check one request and answer it with the run's own ``Model.generate`` (seeded per sample:
    the same seed gives the same images whatever ``n``)."""
    if run not in runs:
        raise ServeError(f"run {run!r} is not served here; served runs: {', '.join(runs)}")
    served = runs[run]
    model = served.model
    n_ = _bounded(1 if _blank(n) else n, "n (number of images)", 1, limits.max_n, "--max-n")
    seed_ = parse_seed(seed)
    shape = tuple(getattr(model, "shape", ()) or ())
    takes = served.options
    opts: dict[str, Any] = {}
    for name, raw in options.items():
        if name not in takes:
            if not (_blank(raw) or (isinstance(raw, str) and raw in ("none", "default")) or raw == 0):
                raise ServeError(
                    f"run {run!r} ({getattr(model, 'kind', '?')} model) takes no {name}; its options: "
                    f"{', '.join(sorted(takes)) or 'none'}"
                )
            continue
        value = _option_value(served, runs, name, raw, shape, limits)
        if value is not None:
            opts[name] = value
    if "mask" in opts and "image" not in opts:
        raise ServeError("a mask needs an image to inpaint")
    k = min(n_, limits.strip_rows)
    frames: list[Tensor] = []

    def callback(info: Any) -> None:
        if isinstance(info.x, Tensor) and info.x.dim() == 4:
            frames.append(info.x[:k].detach().clone())
        if progress is not None:  # t runs from about 1 (noise) to 0 (data) whatever the grid
            progress(min(1.0, max(0.0, 1.0 - float(info.t))))

    kw: dict[str, Any] = {"batch_size": n_, "callback": callback}
    if "return_nfe" in inspect.signature(model.generate).parameters:
        kw["return_nfe"] = True
    t0 = time.perf_counter()
    try:
        out = model.generate(n_, seed_, **kw, **opts)
    except (ValueError, TypeError) as e:  # bad option combinations the model refuses, by name
        raise ServeError(str(e)) from None
    seconds = time.perf_counter() - t0
    x, nfe = out if isinstance(out, tuple) else (out, None)
    settings = {k2: v for k2, v in {**served.defaults(), **opts}.items() if isinstance(v, int | float | str)}
    settings["seed"] = seed_
    if x.dim() == 2:
        grid, strip = images.points_image(x), None
    else:
        scale = max(1, 96 // x.shape[-1])  # about 96 px per image
        grid = images.grid_image(x, scale=scale)
        strip = None
        if frames and frames[-1].shape[1:] == x.shape[1:]:  # pixel-space frames (a latent model's are not)
            strip = images.strip_image(images.strip_frames(frames, x[:k], limits.strip_cols), scale=scale)
    return Result(grid, strip, nfe, seconds, n_, settings)


def solver_info(name: str) -> dict[str, Any]:
    """What the page shows of a solver: order, stochastic, its options and their defaults, its doc."""
    if name not in solvers.names():
        return {"error": f"unknown solver {name!r}"}
    s = solvers.get(name)
    doc = (type(s).__doc__ or "").strip().split("\n\n")[0]
    return {
        "name": name,
        "order": getattr(s, "order", None),
        "stochastic": bool(getattr(s, "stochastic", False)),
        "adaptive": bool(getattr(s, "adaptive", False)),
        "options (defaults)": s.hyper(),
        "about": " ".join(doc.split()),
    }
