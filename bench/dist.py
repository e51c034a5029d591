"""Several processes under ``torchrun`` / ``accelerate launch`` (read from their environment variables).

    torchrun --nproc_per_node 2 -m bench run suite default            # or: accelerate launch -m bench …

Only the train stage uses every process: TRL's trainer runs data-parallel through accelerate, each
process taking ``batch_size / world_size`` pairs of every optimiser step (the global batch, and so the
stage's meaning and key, stay those of a one-process run). Rank 0 decides which stages are missing,
computes every other stage and writes every file; the other ranks wait for its decisions.
Without these variables everything here is a no-op and the run is a plain one-process run.
"""

from __future__ import annotations

import os
from datetime import timedelta


def rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs, one GPU per local rank) before TRL does.

    The timeout is long because ranks > 0 wait while rank 0 computes a whole job's eval and SAE stages.
    """
    if world_size() == 1:
        return
    import torch
    from accelerate import PartialState

    use_cpu = device == "cpu" or not torch.cuda.is_available()
    if not use_cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    PartialState(cpu=use_cpu, timeout=timedelta(hours=12))


def main_decides(value: bool) -> bool:
    """Rank 0's ``value`` on every rank (each rank passes its own; only rank 0's counts)."""
    if world_size() == 1:
        return value
    import torch.distributed as td

    box = [value]
    td.broadcast_object_list(box, src=0)
    return bool(box[0])
