"""torch.distributed helpers that are no-ops in a single process.

Methods use these to make batch statistics global (PCKD's mean CE, contrastive negatives) when the paper's
batch is the global one.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


@contextmanager
def _autograd_collectives():
    """torch.distributed.nn.functional: the public differentiable collectives (deprecated in favour of a
    private module in recent torch; kept because they work across the whole supported torch range)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import torch.distributed.nn.functional as dist_fn

        yield dist_fn


def global_sum(x: Tensor) -> Tensor:
    """Sum over ranks, differentiable (gradient flows back to each rank's contribution)."""
    if not is_distributed():
        return x
    with _autograd_collectives() as dist_fn:
        return dist_fn.all_reduce(x, op=dist.ReduceOp.SUM)


def global_mean(x: Tensor) -> Tensor:
    """Mean of all elements of ``x`` across every rank's copy (equal to the mean over the global batch)."""
    local = torch.stack([x.sum(), torch.tensor(float(x.numel()), device=x.device, dtype=x.dtype)])
    total = global_sum(local)
    return total[0] / total[1]


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order), keeping the gradient of the local slice."""
    if not is_distributed():
        return x
    with _autograd_collectives() as dist_fn:
        return torch.cat(dist_fn.all_gather(x), dim=0)


def local_slice(global_size: int, device: torch.device | None = None) -> slice:
    """Rows of a rank-ordered gathered tensor that belong to this rank (equal shards)."""
    n = global_size // world_size()
    return slice(rank() * n, (rank() + 1) * n)
