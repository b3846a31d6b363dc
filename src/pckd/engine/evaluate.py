"""Test-set evaluation (top-1 / top-5 / CE), gathered across ranks under torchrun."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import pckd.distributed as dist
from pckd.engine.metrics import topk_correct


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, augment: Any, autocast: Callable[[], Any] | None = None,
             channels_last: bool = False) -> dict[str, float]:
    """Evaluate ``model`` (plain logits) on ``loader``; returns top1, top5 (percent), loss and n."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # top1, top5, loss sum, count
    for batch in loader:
        x = augment.evaluate(batch.images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if autocast is not None:
            with autocast():
                logits = model(x)
        else:
            logits = model(x)
        logits = logits.float()
        totals[:2] += topk_correct(logits, batch.labels)
        totals[2] += F.cross_entropy(logits, batch.labels, reduction="sum")
        totals[3] += batch.labels.shape[0]
    if dist.is_distributed():
        torch.distributed.all_reduce(totals)
    top1, top5, loss, n = totals.cpu().tolist()
    model.train(was_training)
    n = max(n, 1.0)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}
