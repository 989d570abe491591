"""Process groups for DistributedDataParallel: from torchrun's environment, or from SLURM's under submitit.

Everything here is a no-op in a single process, so the trainer calls it unconditionally.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from cnnlab import CnnlabError


def setup(strategy: str, timeout_s: float) -> None:
    """Join the process group when `strategy` is 'ddp' (nccl on CUDA, gloo on CPU)."""
    if strategy == "single" or dist.is_initialized():
        return
    if "RANK" not in os.environ and ({"SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"} & set(os.environ)):
        from submitit.helpers import TorchDistributedEnvironment

        # RANK, WORLD_SIZE, MASTER_ADDR/PORT from the variables of SLURM (or of submitit's local executor)
        TorchDistributedEnvironment().export()
    if "RANK" not in os.environ:
        raise CnnlabError("runtime.strategy=ddp needs a launcher that starts the ranks: torchrun --nproc_per_node=N "
                          "-m cnnlab.run ..., or hydra/launcher=slurm with tasks_per_node=N")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if dist.is_initialized() else 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the ranks, in place (a float64 CPU tensor goes through gloo and nccl alike via the device)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _reduced(value: int, op: dist.ReduceOp) -> int:
    t = torch.tensor([value], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=op)
    return int(t.item())


def any_rank(value: int | None) -> int:
    """The largest of the ranks' values (None counts as 0): a flag any rank raised. Every rank must call it."""
    return _reduced(int(value or 0), dist.ReduceOp.MAX) if dist.is_initialized() else int(value or 0)


def share_weight(n: int) -> float:
    """This rank's loss weight for a batch of which it holds `n` samples: `n * world_size / all ranks' samples`.
    DDP averages the ranks' gradients, so a batch split unevenly (the last, partial one) then still gets the
    global batch's mean gradient. Every rank must call it."""
    return n * world_size() / _reduced(n, dist.ReduceOp.SUM) if dist.is_initialized() else 1.0


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
