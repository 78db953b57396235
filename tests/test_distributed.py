"""torchrun data parallelism (difflab.train.distributed): 2 CPU processes (gloo) train what one process
trains with the same global batch in 2 micro-batches, to float round-off, for the denoising objective
(dropout, label dropout, noise and times drawn per shard) and for an objective with two parameter
groups and two optimizers; a job killed after a checkpoint resumes from it; rank 0 alone writes; a
batch size the world size does not divide is a clear error."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import test_objectives  # noqa: F401 -- registers the objective 'test_two_groups'
from difflab.train import ConfigError, Trainer, load_config
from difflab.train.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, log=lambda s: None)
DENOISING = [
    "data.name='digits'",
    "data.limit=64",
    "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[4], head_channels=8, "
    "groups=4, dropout=0.1, num_classes=true}",
    "train.batch_size=8",
    "train.label_dropout=0.25",
    "train.lr=0.003",
    "train.warmup=2",
    "train.log_every=1",
    "train.sample_every=0",
    "train.ckpt_every=2",
    "train.keep=10",
    "train.threads=1",
    "train.steps=6",
    "sample.steps=3",
    "sample.n=4",
    "sample.solver='ddim'",
]
TWO_GROUPS = [
    "data.name='toy2d'",
    "data.n=64",
    "model.network='mlp'",
    "train.batch_size=16",
    "train.warmup=1",
    "train.log_every=1",
    "train.sample_every=0",
    "train.ckpt_every=0",
    "train.threads=1",
    "train.steps=5",
    "sample.solver='ddim'",
    "sample.steps=3",
    "sample.n=4",
    "objective.name='test_two_groups'",
]


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    pp = os.environ.get("PYTHONPATH", "")
    return dict(
        os.environ,
        PYTHONPATH=f"{src}:{pp}" if pp else src,
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
    )


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def weights(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    path = run / "checkpoints" / f"step_{step:07d}" if step else run
    _, t = load_checkpoint(path, parts=("model", "ema"))
    return {f"{part}.{k}": v for part in ("model", "ema") for k, v in t[part].items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_batch_size_not_divisible_by_the_world_size(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = load_config(None, [*DENOISING, "train.batch_size=7", f"train.out='{tmp_path}'"])
    with pytest.raises(
        ConfigError, match=r"train.batch_size = 7 is not divisible by the world size 2 x train.grad_accum = 1"
    ):
        Trainer(cfg, **QUIET)  # before any process group is joined


def test_two_processes_equal_one_and_resume_after_a_kill(tmp_path):
    ref = tmp_path / "one_process"
    Trainer(load_config(None, [*DENOISING, "train.grad_accum=2", f"train.out='{ref}'"]), **QUIET).fit()
    cfg_file = tmp_path / "ddp.toml"
    run = tmp_path / "ddp"
    overrides = [*DENOISING, f"train.out='{run}'"]

    # the CLI under torchrun, killed once its step-4 checkpoint is complete (or, if it finished before
    # the kill landed, cut back to that checkpoint: what a kill right after it leaves)
    cfg_file.write_text("")
    cmd = torchrun("-m", "difflab", "train", str(cfg_file), "--no-progress", *[f"--set={o}" for o in overrides])
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (run / "checkpoints" / "step_0000004").is_dir():
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate(timeout=60)[0].decode()
    assert (run / "checkpoints" / "step_0000004" / "state.json").is_file(), out[-3000:]
    for step, path in list_checkpoints(run / "checkpoints"):
        if step > 4:
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
    # rank 0 alone writes: every logged step once (two writers would log each step twice)
    with open(run / "log.csv") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    assert logged[:4] == [1, 2, 3, 4], logged
    cut = weights(run, 4)
    assert max_diff(cut, weights(ref, 4)) < 1e-5

    # resume: the same job again (the two-group objective's run rides along in the same launch)
    two_ref = tmp_path / "two_one_process"
    Trainer(load_config(None, [*TWO_GROUPS, "train.grad_accum=2", f"train.out='{two_ref}'"]), **QUIET).fit()
    jobs = [overrides, [*TWO_GROUPS, f"train.out='{tmp_path / 'two_ddp'}'"]]
    worker = ROOT / "tests" / "distributed_worker.py"
    res = subprocess.run(
        torchrun(str(worker), json.dumps(jobs)), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "resumed from" in res.stdout and "step 4" in res.stdout, res.stdout[-2000:]
    d = max_diff(weights(run), weights(ref))
    assert d < 1e-5, d
    assert max_diff(weights(tmp_path / "two_ddp"), weights(two_ref)) < 1e-6
    # and the checkpoints record the whole job's state (the second group's optimizer, the objective's extra state)
    state, t = load_checkpoint(tmp_path / "two_ddp")
    assert state["step"] == 5 and "optimizer_aux" in t and float(t["extra"]["counter"]) == 5
