"""DDP plumbing for ``torchrun``: one process per GPU (nccl) or per CPU worker (gloo); rank 0 logs and saves."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank and world size as torchrun sets them (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (nccl on GPU, gloo on CPU) when launched by torchrun; a no-op otherwise."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def local_device(requested: str, info: DistInfo) -> torch.device:
    """'auto' picks CUDA when present; under DDP each process takes the GPU of its local rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but no CUDA GPU is available")
        return torch.device("cuda", info.local_rank if info.world_size > 1 else torch.cuda.current_device())
    if requested != "cpu":
        raise ValueError(f"unknown device {requested!r} (auto, cpu or cuda)")
    return torch.device("cpu")


def leave_together(info: DistInfo) -> None:
    """A barrier before a successful run's ranks leave: a rank that tears its gloo pairs down while a peer still
    finishes (rank 0 writes the artifacts) can abort that peer ("terminate called without an active exception",
    seen on CI). Not on the error path, where the other ranks may never arrive."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
