"""Multi-process training with PyTorch DDP under `torchrun` (the paper trained on two GPUs).

    torchrun --nproc_per_node=2 -m c2gr_core run --stream ... --method c2gr --preset paper --out runs/x

Nothing here is a home-made distribution scheme: torchrun starts the processes and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; `init_from_env` opens the process group (NCCL on CUDA,
gloo on CPU); `wrap` hands the training step to DistributedDataParallel, which broadcasts rank 0's
parameters at construction and averages gradients during backward. Without torchrun (WORLD_SIZE
unset or 1) every function here is a no-op and training is exactly the single-process code path.

How a run divides the work (decisions, so that every rank stays in step and one process writes):
- Training data: each rank takes its 1/world share of the current task's shuffled indices every
  epoch (`shard`, used by `methods.base.epoch_batches`); the permutation is padded by wrapping
  around, so all ranks run the same number of steps (as torch's DistributedSampler does) and the
  shares are disjoint whenever world divides the task's size. The Trainer stops a rank whose batch
  count differs with an error instead of letting the group hang in an all-reduce.
- Randomness: the round's seeds are the same on every rank (so hooks such as replay synthesis agree);
  inside training, replay draws (`rank_generator`) and torch's noise draws (`rank_torch_rng`) are
  rank-specific, so two ranks never train on the same replayed pairs, timesteps or noise.
- Replay synthesis: every rank samples the same pairs with the same seeded generator into its own
  scratch folder (`work/rank<r>`); no rank waits for another and no file has two writers.
- Evaluation: the tasks of a round are split over the ranks and the per-class DSCs gathered, so
  every rank returns the same matrix; only rank 0 writes the run directory (`is_main`).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

_generation = 0  # process groups opened by init_from_env in this process


def _env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if is_distributed() else 0


def is_main() -> bool:
    """The one process that writes the run directory and shows progress bars."""
    return rank() == 0


def init_from_env(device: str | torch.device | None = None, backend: str | None = None) -> bool:
    """Open the process group torchrun describes in the environment; True if this call opened it.

    A no-op (False) when WORLD_SIZE is unset or 1, or when a group is already open (its owner
    closes it). backend defaults to "nccl" when `device` (default: CUDA if available) is CUDA,
    else "gloo".
    """
    if _env_world() <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: "
                           "start multi-process runs with torchrun")
    dev_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if backend is None:
        backend = "nccl" if dev_type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"distributed backend must be 'nccl' or 'gloo', got {backend!r}")
    # torchrun's env:// rendezvous, under a key prefix new for every group this process opens: a
    # second run_stream in the same process would otherwise meet the first group's stale gloo/NCCL
    # addresses in the store ("connectFullMesh ... Connection refused", intermittently).
    global _generation
    _generation += 1
    store, rank_, world = next(dist.rendezvous("env://"))
    kwargs: dict = dict(backend=backend, store=dist.PrefixStore(f"c2gr_pg{_generation}", store),
                        rank=rank_, world_size=world)
    if backend == "nccl":
        # Bind this process to its GPU before NCCL creates communicators on it.
        kwargs["device_id"] = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(kwargs["device_id"])
    dist.init_process_group(**kwargs)
    return True


def shutdown(created: bool = True) -> None:
    """Close the process group if `created` (what init_from_env returned) says this code opened it."""
    if created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_device(device: str | torch.device) -> torch.device:
    """The device of this rank: an unindexed "cuda" becomes cuda:LOCAL_RANK under torchrun."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


# ------------------------------------------------------------------------------ training step
class LossStep(nn.Module):
    """One training step as an nn.Module, so DistributedDataParallel can own it.

    forward(batch) = fn(batch). The module registers the very Parameter objects the step trains
    (no copies), so DDP's construction-time broadcast lands in the method's own networks and its
    gradient hooks fire whichever submodule uses a parameter, however often in one step. Module
    buffers are not synchronised: the workbench's networks have none (GroupNorm, no BatchNorm).
    """

    def __init__(self, fn: Callable[[Any], Any], params: Iterable[nn.Parameter]):
        super().__init__()
        self.fn = fn
        self.params = nn.ParameterList(list(params))

    def forward(self, batch):
        return self.fn(batch)


def wrap(module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel(module) inside a process group, else `module` itself.

    find_unused_parameters: set it when some trained parameters get no gradient in a step (e.g. a
    phase that trains the segmentor while the denoiser's parameters sit in the same optimiser);
    otherwise DDP stops with "Expected to have finished reduction in the prior iteration".
    """
    if not is_distributed():
        return module
    p = next(module.parameters(), None)
    device_ids = [p.device.index] if p is not None and p.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


# ------------------------------------------------------------------------------ data and rngs
def shard(items: Sequence | np.ndarray, rank: int | None = None, world: int | None = None) -> np.ndarray:
    """This rank's share of `items`: items[rank::world] after padding by wrap-around to a multiple of
    world, so every rank gets ceil(n / world) items (disjoint when world divides n; otherwise at most
    world - 1 items appear twice in the epoch, as with torch's DistributedSampler)."""
    # rank/world default to this process's place in the group (the names shadow the functions here).
    r = (dist.get_rank() if is_distributed() else 0) if rank is None else rank
    w = world_size() if world is None else world
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"shard: need 0 <= rank < world, got rank={r}, world={w}")
    items = np.asarray(items)
    n = len(items)
    if w == 1 or n == 0:
        return items
    per_rank = -(-n // w)
    padded = np.resize(items, per_rank * w)   # np.resize repeats from the start
    return padded[r::w]


def rank_generator(rng: np.random.Generator) -> np.random.Generator:
    """`rng` itself in one process; on rank r of a group, an independent child stream of it.

    Every rank spawns the same children from the same (shared-seed) parent and keeps child r, so the
    draws differ between ranks yet are reproducible; the parent's own stream is not consumed.
    """
    if world_size() == 1:
        return rng
    return rng.spawn(world_size())[rank()]


@contextlib.contextmanager
def rank_torch_rng():
    """Inside: torch's global generator (CPU and this rank's GPU) seeded per rank; restored on exit.

    The seed is drawn from the shared stream before forking, so it is the same draw on every rank
    (offset by the rank) and the shared stream advances identically everywhere.
    """
    if world_size() == 1:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,)))
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed + 1_000_003 * rank()) % 2**63)
        yield


# ------------------------------------------------------------------------------ collectives
def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src`, on every rank (any picklable object; tensors keep the device they had)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_dict(local: dict) -> dict:
    """The union of every rank's `local` dict, on every rank (keys must not collide)."""
    if not is_distributed():
        return dict(local)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, local)
    out: dict = {}
    for part in parts:
        out.update(part)
    return out
