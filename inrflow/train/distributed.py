"""Process group and device mesh: NCCL on GPUs, gloo on CPUs, one code path for 1..N processes.

Under ``torchrun`` the rank and world size come from its environment; a plain ``python train.py``
is a world of one (an in-memory store, no network), so the FSDP2 code path is the same either way.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

__all__ = ["Dist", "init_distributed"]


@dataclass
class Dist:
    """Where this process runs and who else does."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh
    owns_group: bool  # this module created the process group and must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few host scalars over ranks (one collective)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def reduce_(self, t: torch.Tensor, op: str = "sum") -> None:
        """In place over ranks (``"sum"`` or ``"max"``) on the device: a collective, no host
        sync; nothing in one process."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is visible")
    return device


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """Join (or create) the process group and build the 1-D data-parallel mesh.

    Always passes an explicit device mesh: a gloo group without one on a GPU machine made
    ``fully_shard`` move parameters to CUDA and run gloo on them (pytorch/pytorch#132471).
    """
    kind = _pick_device(device)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "use --nproc-per-node <= the GPU count"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if "MASTER_ADDR" in os.environ and world > 1:
            dist.init_process_group(
                backend, timeout=timeout, device_id=dev if kind == "cuda" else None
            )
        elif world == 1:
            dist.init_process_group(
                backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
            )
        else:
            raise RuntimeError(
                f"WORLD_SIZE={world} without MASTER_ADDR: launch multi-process runs with torchrun"
            )
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(kind, (world,), mesh_dim_names=("dp",))
    return Dist(rank, world, local_rank, dev, mesh, owns)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
