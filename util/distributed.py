"""torch.distributed state, read from the environment that torchrun / srun set.

Rank and world size come from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
never from configs. torch is imported only when a process group is actually needed, so
single-process commands such as ``--cfg`` start fast.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(timeout_s: float = 1800.0) -> bool:
    """Join the default process group when launched with WORLD_SIZE > 1; True if joined.

    CUDA ranks use NCCL for tensors plus Gloo for CPU objects (config broadcast); CPU ranks use Gloo."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity when not distributed)."""
    if world_size() <= 1:
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if world_size() <= 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
