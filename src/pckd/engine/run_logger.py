"""Everything a run writes besides checkpoints: metrics.jsonl, TensorBoard events, summary.json.

Only rank 0 writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _clean(value: Any) -> Any:
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Append-only metrics log plus TensorBoard scalars/histograms (the methods' EpochWriter too)."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
                except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                    self._tb = None

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        """One JSON line; numeric entries also go to TensorBoard at ``step``."""
        if not self.enabled:
            return
        clean = {k: _clean(v) for k, v in record.items()}
        clean.setdefault("time", round(time.time(), 3))
        self._metrics.write(json.dumps(clean) + "\n")
        if self._tb is not None and step is not None:
            for key, value in clean.items():
                if key in ("epoch", "step", "time", "kind") or not isinstance(value, (int, float)):
                    continue
                self._tb.add_scalar(key, value, step)

    # EpochWriter interface used by methods
    def scalar(self, name: str, value: float, epoch: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_scalar(name, float(value), epoch)

    def histogram(self, name: str, values: Tensor, epoch: int) -> None:
        if self.enabled and self._tb is not None and values.numel() > 0:
            self._tb.add_histogram(name, values.detach().float().cpu(), epoch)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        if self.enabled:
            tmp = self.run_dir / f".{name}.tmp"
            tmp.write_text(json.dumps({k: _clean(v) for k, v in payload.items()}, indent=2) + "\n")
            tmp.replace(self.run_dir / name)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._metrics.close()
            if self._tb is not None:
                self._tb.close()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
