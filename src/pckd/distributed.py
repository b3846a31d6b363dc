"""torch.distributed helpers that are no-ops in a single process.

Methods use these to make batch statistics global (PCKD's mean CE, contrastive negatives) when the paper's
batch is the global one.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


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


def all_gather_rows(x: Tensor) -> tuple[Tensor, slice]:
    """Concatenate ``x`` from all ranks along dim 0 (rank order) and say which rows are this rank's.

    Differentiable: the gradient of every gathered row flows back to the rank that owns it. Ranks may hold
    different numbers of rows (the last, partial global batch can split unevenly): the sizes are exchanged
    first (one tiny collective and a host read), the rows padded to the longest, gathered, then trimmed.
    """
    if not is_distributed():
        return x, slice(0, x.shape[0])
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in torch.cat(sizes).tolist()]
    longest = max(counts)
    padded = x if x.shape[0] == longest else torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    with _autograd_collectives() as dist_fn:
        parts = dist_fn.all_gather(padded)
    start = sum(counts[: rank()])
    return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0), slice(start, start + x.shape[0])


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order), keeping the gradient of the local slice;
    shards may differ in size (see :func:`all_gather_rows`)."""
    return all_gather_rows(x)[0]


def local_slice(global_size: int, device: torch.device | None = None) -> slice:
    """Rows of a rank-ordered gathered tensor that belong to this rank, for equal shards (see
    :func:`all_gather_rows` for shards of any size)."""
    n = global_size // world_size()
    return slice(rank() * n, (rank() + 1) * n)


def max_over_ranks(flags: list[int], device: torch.device) -> list[int]:
    """Element-wise maximum of small integer flags over all ranks (the flags themselves in one process).

    A collective and a host synchronisation: every rank must call it at the same point, which is how the
    trainer makes all ranks agree on stopping (signals, non-finite losses).
    """
    if not is_distributed():
        return list(flags)
    t = torch.tensor(flags, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it, on every rank (pickled; for small objects such as paths)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _GlobalBatchNormFunction(torch.autograd.Function):
    """Batch normalisation with statistics over every rank's shard; closed-form backward.

    Per-channel sums are accumulated in float64 (as the native CPU kernels do) and all-reduced: sum(x), then
    sum((x - mean)^2), so the variance is the two-pass one. The backward all-reduces sum(dy) and
    sum(dy * xhat), the terms that couple the samples, which is what torch.nn.SyncBatchNorm does on CUDA.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the normalised ``x`` and the global mean and unbiased variance (for the running stats)."""
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # bf16/fp16 under autocast
        local = torch.cat([xf.sum(dims, dtype=torch.float64),
                           torch.full((1,), float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)])
        dist.all_reduce(local)
        count = local[-1]
        mean = local[:-1] / count
        centred = xf - mean.to(xf.dtype).view(shape)
        squares = centred.square().sum(dims, dtype=torch.float64)
        dist.all_reduce(squares)
        var = squares / count  # biased: what normalisation uses
        invstd = torch.rsqrt(var + eps)
        y = centred.mul_(invstd.to(xf.dtype).view(shape))  # centred is ours: normalise in place
        if weight is not None and bias is not None:
            y = y * weight.to(xf.dtype).view(shape) + bias.to(xf.dtype).view(shape)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count = count
        unbiased = var * (count / (count - 1).clamp_min(1.0))  # what the running variance tracks
        ctx.mark_non_differentiable(mean, unbiased)
        return y.to(x.dtype), mean, unbiased

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, _mean: Tensor, _var: Tensor) -> tuple[Any, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        dy = grad_y.to(xf.dtype)
        xhat = (xf - mean.to(xf.dtype).view(shape)) * invstd.to(xf.dtype).view(shape)
        sum_dy = dy.sum(dims, dtype=torch.float64)
        sum_dy_xhat = (dy * xhat).sum(dims, dtype=torch.float64)
        # Local sums for the affine parameters: DDP averages them over ranks like every other gradient.
        grad_w = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_b = sum_dy.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            coupled = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(coupled)
            c = x.shape[1]
            mean_dy = (coupled[:c] / ctx.count).to(xf.dtype).view(shape)
            mean_dy_xhat = (coupled[c:] / ctx.count).to(xf.dtype).view(shape)
            scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
            grad_x = ((dy - mean_dy - xhat * mean_dy_xhat) * scale.to(xf.dtype).view(shape)).to(x.dtype)
        return grad_x, grad_w, grad_b, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (every rank's shard together).

    ``torch.nn.SyncBatchNorm`` refuses non-CUDA tensors (its kernels are CUDA-only), so on CPU/gloo the
    trainer uses this instead (:class:`_GlobalBatchNormFunction`). Outside training, or in one process, it is
    plain BatchNorm; parameter and buffer names are BatchNorm's, so checkpoints load into ordinary models.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in _BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        y, mean, unbiased = _GlobalBatchNormFunction.apply(input, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm under ``module`` normalise with global-batch statistics under DDP.

    CUDA: ``torch.nn.SyncBatchNorm`` (fused kernels). Other devices: :class:`GlobalBatchNorm`. The new layers
    take over the old ones' parameters and buffers (same objects, so an optimizer built before still holds
    them). Only the module tree is visited, so a Distiller's teacher (kept outside it) stays as it is.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_batchnorm(child, device)
        if converted is not child:
            setattr(module, name, converted)
    return module
