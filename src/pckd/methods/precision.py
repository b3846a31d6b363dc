"""Numerics shared by the methods' losses: losses run in float32 (or float64) even under bf16 autocast."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor


def as_float(t: Tensor) -> Tensor:
    """At least float32 (half/bf16 -> float32; float64 stays float64) so a loss is never low-precision."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def no_autocast(t: Tensor) -> AbstractContextManager:
    """Disable autocast around a loss so its matmuls run in the inputs' (float32+) precision."""
    if t.device.type in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(t.device.type):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return nullcontext()
