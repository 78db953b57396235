"""Data-parallel training in several processes, launched by torchrun (no launcher of difflab's own).

    torchrun --nproc_per_node=4 -m difflab train configs/fashion_ddpm.toml          # one machine
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \\
             --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m difflab train CONFIG   # each machine

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and the rendezvous; the
Trainer (:mod:`difflab.train.trainer`) reads them through :func:`world` and joins the process group:
NCCL when it trains on CUDA devices (rank r on ``cuda:LOCAL_RANK``), gloo on CPUs.

What each rank does, so that N processes give the result of one process with the same global batch
(``train.batch_size``) split into N micro-batches (``train.grad_accum = N``), to float round-off:

- every rank draws the same global batch (the data order is a pure function of (seed, step)) and
  takes its slice: rank r, micro-batch j of ``a = train.grad_accum`` is shard m = r a + j of the
  W a equal shards (``batch_size`` must be divisible by W a: an error says so);
- shard m draws its times, noise and label dropout from its own generator, seeded from one number
  the Trainer's generator draws per step and m, and torch's global RNG (dropout) from its own
  state: which process runs a shard does not change what it draws;
- after the backward passes of a parameter group the gradients are averaged over the ranks
  (:func:`average_gradients`, one all-reduce of the flattened gradients).  This sits in the one
  training loop, after ``Objective.loss``, so every objective -- several modules and optimizers,
  owned and frozen modules, a GAN's two groups stepped in turn -- is averaged the same way: one
  reason difflab reduces gradients itself instead of wrapping modules in DistributedDataParallel,
  whose reducer assumes one module with one forward and backward per step;
- clipping, the optimizer steps and the EMA then run identically on every rank; logged values are
  averaged over the ranks;
- rank 0 alone writes into the run directory (checkpoints, ``log.csv``, sample grids, the loss
  curve) and shows the progress bar; every rank resumes from the run directory's newest complete
  checkpoint (on several machines it must be on a file system they share), and the ranks check that
  they resumed from the same step.  A killed job restarted with the same command resumes there.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "World",
    "all_max",
    "average_gradients",
    "average_values",
    "broadcast_int",
    "shard_rng",
    "shutdown",
    "world",
]


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` of
    ``local_size`` on this machine.  ``size == 1`` is plain single-process training."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and pictures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer (set by torchrun)") from None


def world() -> World:
    """The world torchrun describes in the environment (size 1 without torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    local_rank = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process of a job")
    return World(rank, size, local_rank, local_size)


def init(w: World, device: torch.device) -> torch.device:
    """Join the process group of ``w`` (once per process) and return the device this rank trains
    on: ``cuda:LOCAL_RANK`` with NCCL when ``device`` is CUDA, else the CPU with gloo."""
    if not w.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # a rank that dies is noticed by torchrun, which stops the others; the timeout only bounds
        # waits on a rank that is slow (rank 0 writing a sample grid), so it is generous
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return device


def shutdown() -> None:
    """Leave the process group (the end of ``difflab train``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device(tensors: Sequence[Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def average_gradients(params: Sequence[nn.Parameter], w: World) -> None:
    """Replace each parameter's gradient by its mean over the ranks, in one all-reduce.

    A parameter without a gradient on some ranks (unused by their shards) counts as a zero gradient
    there; one without a gradient on every rank keeps ``grad = None`` (AdamW then skips it, as it
    would in one process)."""
    if not w.active or not params:
        return
    dev = _device(params)
    flat = []
    has = torch.zeros(len(params), device=dev)
    for i, p in enumerate(params):
        if p.grad is not None:
            has[i] = 1
            flat.append(p.grad.reshape(-1).to(torch.float32))
        else:
            flat.append(torch.zeros(p.numel(), device=dev))
    buf = torch.cat([*flat, has])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    counts = buf[-len(params) :]
    off = 0
    for i, p in enumerate(params):
        n = p.numel()
        if counts[i] > 0:
            g = (buf[off : off + n] / w.size).reshape(p.shape).to(p.dtype)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)
        off += n


def average_values(values: dict[str, float], w: World, device: torch.device) -> dict[str, float]:
    """Logged values averaged over the ranks (the same keys on every rank)."""
    if not w.active or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (t / w.size).tolist()))


def all_max(flag: bool, w: World, device: torch.device) -> bool:
    """True on every rank if it is true on any (a decision all ranks must take together)."""
    if not w.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_int(value: int, w: World, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not w.active:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier(w: World) -> None:
    if w.active:
        dist.barrier()


@contextlib.contextmanager
def shard_rng(state: dict[str, Tensor], device: torch.device) -> Iterator[None]:
    """Run a shard's loss with torch's global RNG (dropout) at the shard's own state, and keep the
    state it leaves for the shard's next parameter group; the process's global RNG is untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state["cpu"])
        if devices:
            torch.cuda.set_rng_state(state["cuda"], device)
        yield
        state["cpu"] = torch.get_rng_state()
        if devices:
            state["cuda"] = torch.cuda.get_rng_state(device)


def new_shard_rng(seed: int, device: torch.device) -> dict[str, Tensor]:
    """The global-RNG state of a shard seeded with ``seed``."""
    state = {"cpu": torch.Generator().manual_seed(seed).get_state()}
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device]):
            torch.cuda.manual_seed(seed)
            state["cuda"] = torch.cuda.get_rng_state(device)
    return state
