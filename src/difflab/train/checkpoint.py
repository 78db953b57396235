"""Checkpoints: a directory ``step_NNNNNNN/`` of safetensors files plus ``state.json``, written atomically.

A checkpoint is written into a hidden temporary directory, every file is fsync'ed, the
directory is renamed into place (atomic on POSIX) and the parent fsync'ed; ``state.json``
lists every file with its size and SHA-256.  So a killed process leaves either the previous
checkpoints or a ``.tmp-*`` directory that is never picked up, and a corrupt or foreign
directory is recognised and skipped with a warning.

Contents: ``model.safetensors`` (network), ``ema.safetensors`` (EMA weights),
``optimizer.safetensors`` (AdamW moments; the param groups go into state.json), ``rng.safetensors``
(torch's global RNG and the trainer's generator) and ``extra.safetensors`` (e.g. importance-sampling history).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = [
    "FORMAT",
    "CheckpointError",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "save_checkpoint",
]

FORMAT = "difflab-checkpoint"
VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or not a difflab checkpoint."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """An optimizer state as flat tensors ``state.{param}.{key}`` plus JSON-able param groups."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"state.{pid}.{k}"] = (v if isinstance(v, Tensor) else torch.tensor(v)).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def optimizer_from_tensors(tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors`: an optimizer ``state_dict``."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, v in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = v
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    ckpt_dir: str | os.PathLike,
    step: int,
    tensors: dict[str, dict[str, Tensor]],
    meta: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write ``ckpt_dir/step_{step:07d}`` atomically.

    Args:
        tensors: file stem -> flat dict of tensors (``model``, ``ema``, ``optimizer``, ...).
        meta: JSON-able metadata stored in state.json (config, step, ...).
        keep: delete all but the newest ``keep`` complete checkpoints afterwards.
    """
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for stem, tdict in tensors.items():
        p = tmp / f"{stem}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tdict.items()}, str(p))
        _fsync_file(p)
        files[p.name] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    state = {"format": FORMAT, "version": VERSION, "step": step, "files": files, **meta}
    sp = tmp / "state.json"
    with open(sp, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # an older checkpoint of the same step (e.g. a re-run): replace it
        old = root / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(root)
    if keep is not None and keep > 0:
        for _old_step, path in list_checkpoints(root)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint directory (by name; not yet verified), oldest first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _read_state(path: Path, verify: bool) -> dict[str, Any]:
    sp = path / "state.json"
    if not sp.is_file():
        raise CheckpointError(f"{path} is not a difflab checkpoint (no state.json)")
    try:
        state = json.loads(sp.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{sp} is corrupt: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a difflab checkpoint (state.json has no format {FORMAT!r})")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer difflab (checkpoint version {state['version']})")
    for name, info in state.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path} is incomplete: {name} is missing")
        if f.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{f} is corrupt: {f.stat().st_size} bytes, expected {info['bytes']}")
        if verify and _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{f} is corrupt: SHA-256 mismatch")
    return state


def load_checkpoint(
    path: str | os.PathLike, parts: tuple[str, ...] | None = None, verify: bool = True
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """Read a checkpoint directory (or a run directory: its latest checkpoint).

    Returns (state.json contents, {file stem: tensors}) for the requested ``parts`` (all by default).
    Raises :class:`CheckpointError` for anything missing, corrupt or foreign.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir() and not (path / "state.json").exists():
        latest = latest_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
        if latest is None:
            raise CheckpointError(
                f"{path} holds no complete difflab checkpoint (expected state.json or checkpoints/step_*)"
            )
        path = latest
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a difflab checkpoint directory (expected a step_* directory with state.json)"
        )
    state = _read_state(path, verify)
    out = {}
    for name in state["files"]:
        stem = name.removesuffix(".safetensors")
        if parts is None or stem in parts:
            try:
                out[stem] = load_file(str(path / name))
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{path / name} is corrupt: {e}") from None
    state["path"] = str(path)
    return state, out


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``ckpt_dir`` that verifies; broken ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            _read_state(path, verify=True)
            return path
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint of step {step}: {e}", stacklevel=2)
    return None
