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
