"""Numerics shared by the methods' losses: losses run in float32 (or float64) even under bf16 autocast."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor


def no_autocast(t: Tensor) -> AbstractContextManager:
    """Disable autocast around a loss so its matmuls run in the inputs' (float32+) precision."""
    if t.device.type in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(t.device.type):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return nullcontext()
