"""Processes and devices for the trainers: the same command runs on CPU, one GPU, or several
through ``torchrun``, which sets WORLD_SIZE, RANK and LOCAL_RANK for each process. With one
process nothing here touches ``torch.distributed``, so a plain run needs no process group."""
from __future__ import annotations

import os

import torch


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device): joins the torchrun process group when WORLD_SIZE > 1 (NCCL on
    GPUs, gloo on CPUs); one GPU per process, picked by LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    return rank, world, device


def wrap_ddp(model: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """``model`` itself in a one-process run, else wrapped in DistributedDataParallel (on a GPU
    pinned to ``device``; on CPUs, gloo, without device ids). Checkpoints save the unwrapped model."""
    if world > 1:
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def wait_for_all(world: int) -> None:
    """At a run's end: every rank waits for the others (rank 0 may still be writing the last
    checkpoint); a no-op in a one-process run."""
    if world > 1:
        torch.distributed.barrier()


# -- collectives for state that every rank must hold alike (the VQ-VAE's EMA codebooks) ------------
# Each is a no-op in one process (no process group, or a group of one), so the same model code runs
# in a plain run and under torchrun; all act on the default group and on tensors on the process's
# own device (CPU tensors for gloo, CUDA ones for NCCL).


def active_world() -> int:
    """The number of processes in the default ``torch.distributed`` group; 1 when there is none
    (a plain run, or torch built without distributed support)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """In place: ``t`` ← the element-wise sum of every rank's ``t`` (``all_reduce`` SUM); returns
    ``t``. Every rank must call it, in the same order, with a tensor of the same shape and dtype."""
    if active_world() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    """In place: ``t`` ← rank 0's ``t`` on every rank; returns ``t``."""
    if active_world() > 1:
        torch.distributed.broadcast(t, 0)
    return t


def global_rows(n_local: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where this rank's ``n_local`` rows sit in the global batch, the concatenation of every
    rank's rows in rank order: (offset, total), 0-dim int64 tensors on ``device`` (one
    ``all_reduce`` of a (world,) vector; nothing is read back to the host). One process: (0, n_local)."""
    world = active_world()
    sizes = torch.zeros(world, dtype=torch.long, device=device)
    rank = torch.distributed.get_rank() if world > 1 else 0
    sizes[rank] = n_local
    sum_across_ranks(sizes)
    return sizes[:rank].sum(), sizes.sum()
